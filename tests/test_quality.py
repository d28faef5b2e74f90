"""Quality measures on synthetic data with known answers, the quality run on a tiny trained run,
and the model-card generator (it renders every section and never invents a missing figure)."""

import json

import numpy as np
import pytest

from benchmarks import cards, quality
from zoo import metrics, train
from tests.helpers import write_idx_dir


def test_precision_at_k_on_separable_clusters():
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 10, size=(5, 3))
    labels = np.repeat(np.arange(5), 40)
    points = centers[labels] + rng.normal(0, 0.1, size=(200, 3))
    assert quality.precision_at_k(points, labels, points[::7], labels[::7], k=10) == 1.0
    shuffled = rng.permutation(labels)
    assert quality.precision_at_k(points, shuffled, points[::3], labels[::3], k=10) < 0.45


def test_psnr_of_a_known_corruption():
    x = np.full((4, 8, 8, 1), 0.5, np.float32)
    assert metrics.psnr_db(x, x + 0.1) == pytest.approx(20.0, abs=1e-4)  # MSE 0.01 -> 20 dB
    assert metrics.sq_error_per_image(x, x + 0.1) == pytest.approx(64 * 0.01, rel=1e-5)


def test_pca_baseline_is_exact_on_a_subspace_and_matches_a_linear_projection():
    rng = np.random.default_rng(1)
    basis = np.linalg.qr(rng.normal(size=(64, 3)))[0]
    data = (rng.normal(size=(300, 3)) @ basis.T + 0.5).reshape(300, 8, 8, 1)
    pca, err = quality.pca_baseline(data[:200], data[200:], 3)
    assert err == pytest.approx(0.0, abs=1e-8)
    noisy = data + rng.normal(0, 0.05, size=data.shape)
    pca, err = quality.pca_baseline(noisy[:200], noisy[200:], 3)
    # The best linear code of size 3 (what linear_ae converges to) is PCA's projection.
    flat = noisy[200:].reshape(100, -1)
    projected = (flat - pca.mean_) @ pca.components_.T @ pca.components_ + pca.mean_
    assert err == pytest.approx(metrics.sq_error_per_image(flat, projected), rel=1e-5)


@pytest.fixture
def trained_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.delenv("ZOO_DATA_DIR", raising=False)
    idx_dir = write_idx_dir(tmp_path / "idx", n_train=300, n_test=60)
    runs = tmp_path / "runs"
    for preset in ("dae_mnist", "vae_mnist"):
        train.train(preset, out=runs / preset, epochs=1, limit=200, data_dir=idx_dir, verbose=0)
    return runs, idx_dir


def test_quality_run_writes_tables_and_figures(trained_runs, tmp_path):
    runs, idx_dir = trained_runs
    out = tmp_path / "results"
    results = quality.run(None, runs_dir=runs, out_dir=out, data_dir=idx_dir)
    assert [r["preset"] for r in results] == ["dae_mnist", "vae_mnist"]
    for r in results:
        assert r["reduction"]["pca_sq_error_per_image"] > 0
        assert 0 <= r["retrieval"]["precision_at_10"] <= 1
        assert [d["label"] for d in r["denoising"]] == [c[2] for c in quality.DENOISING_CONDITIONS]
        assert (out / "latent_{}.png".format(r["preset"])).stat().st_size > 1000
    assert (out / "samples_vae_mnist.png").exists() and (out / "interpolation_vae_mnist.png").exists()
    assert not (out / "samples_dae_mnist.png").exists()
    assert "| dae_mnist |" in (out / "quality.md").read_text()
    assert json.loads((out / "quality.json").read_text())["results"][0]["preset"] == "dae_mnist"
    assert (out / "quality.csv").read_text().count("\n") == 3
    # The cards describe each run by what it recorded (1 epoch, 200 images), not by its preset (40 epochs).
    text = cards.render(out, tmp_path / "no-release")
    section = text[text.index("## dae_mnist"):text.index("## deep_ae_fashion_mnist")]
    assert "Recipe as trained: 1 epoch, batch 128" in section and "first 200 training images only" in section
    assert "trained 1 epoch" in section and "40 epochs" not in section


def test_quality_table_says_when_a_control_was_trained_differently():
    def result(preset, model, epochs):
        return {"preset": preset, "model": model, "dataset": "mnist", "latent_dim": 30,
                "training": {"epochs": epochs, "batch_size": 128, "learning_rate": 1e-3, "seed": 1},
                "reduction": {"sq_error_per_image": 1.0, "pca_sq_error_per_image": 2.0, "ratio_to_pca": 0.5},
                "retrieval": {"precision_at_10": 0.5, "pixels_precision_at_10": 0.5, "pca_precision_at_10": 0.5},
                "denoising": []}

    same = [result("conv_ae_mnist", "conv_ae", 25), result("conv_dae_mnist", "conv_dae", 25)]
    assert quality.control_recipe_differences(same) == []
    differ = [result("conv_ae_mnist", "conv_ae", 40), result("conv_dae_mnist", "conv_dae", 25),
              result("dae_mnist", "dae", 40)]  # no deep_ae_mnist result: nothing to compare with
    assert quality.control_recipe_differences(differ) == [
        "conv_dae_mnist and its control conv_ae_mnist were trained with different recipes (epochs 25 vs 40, "
        "in that order)."]
    assert "conv_dae_mnist and its control conv_ae_mnist" in quality.markdown(differ)


def test_quality_names_missing_runs(tmp_path, capsys):
    assert quality.main(["deep_ae_mnist", "--runs-dir", str(tmp_path)]) == 2
    assert "python -m zoo.train deep_ae_mnist" in capsys.readouterr().err


def _fake_results(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    q = {"preset": "deep_ae_fashion_mnist", "model": "deep_ae", "dataset": "fashion_mnist", "latent_dim": 30,
         "training": {"epochs": 7},
         "timing": {"seconds_per_epoch": 12.5, "train_images_per_second": 4321.0, "load_average": 0.4},
         "run_metrics": {"sq_error_per_image": 5.4321, "mse_per_pixel": 0.00693, "bce_per_pixel": 0.25,
                         "psnr_db": 22.22},
         "reduction": {"sq_error_per_image": 5.4321, "pca_sq_error_per_image": 12.3456, "ratio_to_pca": 0.44},
         "retrieval": {"precision_at_10": 0.8123, "pixels_precision_at_10": 0.7901, "pca_precision_at_10": 0.7999},
         "denoising": [{"label": c[2], "noisy_psnr_db": 10.0 + i, "output_psnr_db": 20.0 + i}
                       for i, c in enumerate(quality.DENOISING_CONDITIONS)]}
    (results / "quality.json").write_text(json.dumps({"results": [q]}))
    rows = [{"model": "deep_ae_fashion_mnist", "part": part, "batch_size": b, "images_per_s": 98765.0 + b,
             "latency_us_p50": 77.0, "ort_tf_ratio": 3.21} for part in ("encoder", "decoder", "autoencoder")
            for b in (1, 64, 1024)]
    (results / "throughput.json").write_text(json.dumps({
        "device": "cpu", "machine": {"cpu_model": "Test CPU"}, "settings": {"threads": 2}, "rows": rows,
        "models": [{"name": "deep_ae_fashion_mnist", "flops": {"encoder": {"flops": 3_000_000},
                                                                "decoder": {"flops": 3_100_000}}}]}))
    dist = tmp_path / "dist" / "deep_ae_fashion_mnist"
    dist.mkdir(parents=True)
    (dist / "manifest.json").write_text(json.dumps({"files": [{"file": "encoder.onnx", "size": 1234,
                                                               "sha256": "ab" * 32}], "release": "v9.9"}))
    return results, tmp_path / "dist"


def test_cards_render_every_section_from_measured_figures(tmp_path):
    results, dist = _fake_results(tmp_path)
    text = cards.render(results, dist)
    section = text[text.index("## deep_ae_fashion_mnist"):text.index("## deep_ae_mnist")]
    for expected in ("Parameters: 2,837,314", "encoder 3.00 MFLOP", "Architecture", "Dense 1000 relu",
                     "5.432", "12.35", "0.812", "0.790", "gaussian 0.5 12.0 → 22.0 dB", "98,829", "3.21x TF",
                     "encoder.onnx | 1,234 B | `" + "ab" * 32, "Intended use", "Known limits",
                     "python -m zoo.weights fetch deep_ae_fashion_mnist", "Test CPU", "12 s/epoch", "load average 0.4",
                     "Released files (v9.9", 'zoo.from_preset("deep_ae_fashion_mnist")',
                     "Recipe as trained: 7 epochs"):
        assert expected in section, expected


def test_cards_refuse_to_invent_missing_figures(tmp_path):
    results, dist = _fake_results(tmp_path)
    text = cards.render(results, dist)
    section = text[text.index("## conv_ae_fashion_mnist"):text.index("## conv_ae_mnist")]
    assert "No measured results" in section
    assert "not measured" in section
    assert "sq_error_per_image |" not in section and "PCA-30" not in section
    assert "Released files: none in this release" in section
    assert "Preset recipe (not trained here): 40 epochs" in section
    empty = cards.render(tmp_path / "nothing", tmp_path / "nodist")
    assert "Measured presets: none" in empty and "images/s (p50" not in empty
