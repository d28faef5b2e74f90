"""Quality measures on synthetic data with known answers, the quality run on a tiny trained run,
and the model-card generator (it renders every section and never invents a missing figure)."""

import json
import math
import shutil

import numpy as np
import pytest

from benchmarks import cards, quality, quality_measures
from zoo import metrics, train
from zoo.errors import ZooError
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


def test_bce_sq_error_and_psnr_per_image_against_hand_computed_values():
    x = np.array([[0.0, 1.0, 0.5, 0.25], [1.0, 1.0, 0.0, 0.0]], np.float32).reshape(2, 2, 2, 1)
    # A PCA-like reconstruction outside [0, 1]: BCE clips it to [1e-7, 1 - 1e-7].
    x_hat = np.array([[0.1, 0.8, 0.5, 0.0], [1.3, 0.5, -0.2, 0.2]], np.float32).reshape(2, 2, 2, 1)
    eps = 1e-7
    image_1 = -math.log(0.9) - math.log(0.8) - math.log(0.5) - (0.25 * math.log(eps) + 0.75 * math.log(1 - eps))
    image_2 = -math.log(1 - eps) - math.log(0.5) - math.log(1 - eps) - math.log(0.8)
    got = quality_measures.reconstruction_measures(x, x_hat)
    assert got["bce_per_image"] == pytest.approx((image_1 + image_2) / 2, rel=1e-5)
    # The same clip as zoo's per-pixel BCE: the per-image sum is the pixel count times it.
    assert got["bce_per_image"] == pytest.approx(4 * metrics.bce_per_pixel(x.astype(np.float64),
                                                                          x_hat.astype(np.float64)), rel=1e-5)
    sq_1, sq_2 = 0.01 + 0.04 + 0 + 0.0625, 0.09 + 0.25 + 0.04 + 0.04
    assert got["sq_error_per_image"] == pytest.approx((sq_1 + sq_2) / 2, rel=1e-5)
    assert got["psnr_db"] == pytest.approx((10 * math.log10(4 / sq_1) + 10 * math.log10(4 / sq_2)) / 2, rel=1e-5)
    # Perfect reconstruction of binary pixels costs nothing; of grey pixels, their entropy.
    binary = np.array([[0.0, 1.0, 1.0, 0.0]], np.float32)
    assert quality_measures.bce_per_image(binary, binary) == pytest.approx(0.0, abs=1e-5)
    assert quality_measures.bce_per_image(np.full((1, 4), 0.5), np.full((1, 4), 0.5)) == pytest.approx(4 * math.log(2))


def test_precision_at_10_against_a_full_60k_database():
    rng = np.random.default_rng(2)
    centers = rng.normal(0, 10, size=(10, 8)).astype(np.float32)
    db_labels = np.arange(60_000) % 10
    database = centers[db_labels] + rng.normal(0, 0.1, size=(60_000, 8)).astype(np.float32)
    query_labels = np.arange(1000) % 10
    queries = centers[query_labels] + rng.normal(0, 0.1, size=(1000, 8)).astype(np.float32)
    assert quality_measures.precision_at_k(database, db_labels, queries, query_labels) == 1.0
    # Exact search: the 10 nearest are the 10 smallest distances, as numpy finds them.
    near = quality_measures.nearest_labels(database[:5000], np.arange(5000), queries[:20], k=10)
    d = ((queries[:20, None, :] - database[None, :5000, :]) ** 2).sum(-1)
    assert np.array_equal(np.sort(near, axis=1), np.sort(np.argsort(d, axis=1)[:, :10], axis=1))
    shuffled = rng.permutation(db_labels)
    assert quality_measures.precision_at_k(database, shuffled, queries, query_labels) == pytest.approx(0.1, abs=0.03)


def test_balanced_draw():
    labels = np.repeat(np.arange(10), 70)
    a, b = quality_measures.balanced_draw(labels, 55, 0), quality_measures.balanced_draw(labels, 55, 1)
    assert len(a) == 550 and np.array_equal(np.bincount(labels[a]), np.full(10, 55)) and len(set(a)) == 550
    assert np.array_equal(a, quality_measures.balanced_draw(labels, 55, 0)) and not np.array_equal(a, b)
    with pytest.raises(ZooError, match="has only 70"):
        quality_measures.balanced_draw(labels, 80, 0)


def _clusters(rng, per_class, dims=20, spread=1.0):
    centers = rng.normal(0, 3, size=(10, dims))
    labels = np.tile(np.arange(10), per_class)
    return centers[labels] + rng.normal(0, spread, size=(len(labels), dims)), labels


def test_linear_probe_on_separable_data_and_its_spread_over_draws():
    rng = np.random.default_rng(3)
    x, y = _clusters(rng, 200)
    x_test, y_test = x[1500:], y[1500:]
    x, y = x[:1500], y[:1500]
    result = quality_measures.probe(x, y, 1350, x_test, y_test, per_class=10)
    few, everything = result["few_labels"], result["all_labels"]
    assert few["labels"] == 100 and few["draws"] == [0, 1, 2, 3, 4] and len(few["values"]) == 5
    assert few["mean"] > 0.95 and few["std"] == pytest.approx(np.std(few["values"], ddof=1))
    assert few["min"] <= few["mean"] <= few["max"] and set(few["C"]) <= set(quality_measures.PROBE_C_GRID)
    assert everything["labels"] == 1500 and everything["validation_images"] == 150
    assert everything["accuracy"] > 0.98 and everything["converged"] and few["converged"]
    # Labels unrelated to the inputs: chance, whatever C the validation picks.
    noise = quality_measures.probe(x, rng.permutation(y), 1350, x_test, y_test, per_class=10)
    assert noise["all_labels"]["accuracy"] < 0.2 and noise["few_labels"]["mean"] < 0.2


def _result(preset, seed, sq_error, epochs=10, p10=0.5, few=(0.6, 0.7)):
    return {"preset": preset, "model": "deep_ae", "dataset": "mnist", "latent_dim": 30, "run_dir": "runs/" + str(seed),
            "training": {"epochs": epochs, "batch_size": 128, "learning_rate": 1e-3, "seed": seed},
            "model_config": {"latent_dim": 30, "seed": seed},
            "reduction": {"sq_error_per_image": sq_error, "pca_sq_error_per_image": 8.0, "ratio_to_pca": sq_error / 8,
                          "bce_per_image": 100.0 + sq_error, "psnr_db": 20.0},
            "retrieval": {"precision_at_10": p10, "pixels_precision_at_10": 0.5, "pca_precision_at_10": 0.5},
            "probe": {"codes": {"few_labels": quality_measures.spread(few), "all_labels": {"accuracy": 0.8}}},
            "denoising": [{"noisy_psnr_db": 10.0, "output_psnr_db": 11.0, "gain_db": 1.0}
                          for _ in quality.DENOISING_CONDITIONS]}


def test_seed_summary_mean_std_min_max():
    results = [_result("deep_ae_mnist", 1337, 1.0), _result("deep_ae_mnist", 1, 2.0), _result("deep_ae_mnist", 2, 4.0)]
    summary = quality.seed_summary(results)
    assert summary["n"] == 3 and summary["seeds"] == [1337, 1, 2]
    sq = summary["metrics"]["sq_error_per_image"]
    assert sq["mean"] == pytest.approx(7 / 3) and sq["std"] == pytest.approx(math.sqrt(7 / 3))
    assert (sq["min"], sq["max"], sq["values"]) == (1.0, 4.0, [1.0, 2.0, 4.0])
    assert summary["metrics"]["probe_few_labels_every_draw"]["n"] == 6
    assert summary["metrics"]["denoising_gain_db[gaussian 0.1]"]["std"] == 0.0
    one = quality.seed_summary(results[:1])
    assert one["n"] == 1 and one["metrics"]["precision_at_10"]["std"] is None
    results[0]["seeds"] = summary
    text = quality.markdown(results[:1])
    assert "| deep_ae_mnist | 30 | 3 | 2.33 ± 1.53 |" in text
    assert "| deep_ae_mnist | 1337, 1, 2 | sq_error_per_image | 2.333 | 1.5 | 1 | 4 |" in text
    with pytest.raises(ZooError, match="several runs with seed 1"):
        quality.seed_summary([_result("deep_ae_mnist", 1, 1.0), _result("deep_ae_mnist", 1, 2.0)])
    with pytest.raises(ZooError, match="epochs 10 vs 20"):
        quality.seed_summary([_result("deep_ae_mnist", 1337, 1.0), _result("deep_ae_mnist", 1, 2.0, epochs=20)])


@pytest.fixture
def trained_runs(tmp_path, offline):
    idx_dir = write_idx_dir(tmp_path / "idx", n_train=300, n_test=60)
    runs = tmp_path / "runs"
    for preset in ("dae_mnist", "vae_mnist"):
        train.train(preset, out=runs / preset, epochs=1, limit=200, data_dir=idx_dir, verbose=0)
    return runs, idx_dir


def test_quality_run_writes_tables_and_figures(trained_runs, tmp_path):
    runs, idx_dir = trained_runs
    out = tmp_path / "results"
    results = quality.run(None, runs_dir=runs, out_dir=out, data_dir=idx_dir, probe_per_class=5)
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


def test_quality_run_averages_seeds_and_evaluates_the_common_code_size(trained_runs, tmp_path):
    runs, idx_dir = trained_runs
    # The layout benchmarks/reproduce.sh trains: seeds beside the preset's run, latent-20 runs in their own folder.
    train.train("dae_mnist", out=runs / "seeds" / "dae_mnist" / "seed1", seed=1, epochs=1, limit=200,
                data_dir=idx_dir, verbose=0)
    train.train("dae_mnist", out=runs / "latent20" / "dae_mnist", overrides={"latent_dim": 20}, epochs=1, limit=200,
                data_dir=idx_dir, verbose=0)
    out = tmp_path / "results"
    results = quality.run(["dae_mnist"], runs_dir=runs, out_dir=out, data_dir=idx_dir, probe_per_class=5)
    (dae,) = results
    assert dae["seeds"]["n"] == 2 and dae["seeds"]["seeds"] == [dae["training"]["seed"], 1]
    sq = dae["seeds"]["metrics"]["sq_error_per_image"]
    assert sq["values"][0] == dae["reduction"]["sq_error_per_image"] and sq["min"] <= sq["mean"] <= sq["max"]
    assert sq["std"] == pytest.approx(np.std(sq["values"], ddof=1))
    assert dae["retrieval"]["database"] == "train (300)" and dae["probe"]["codes"]["all_labels"]["labels"] == 300
    assert dae["probe"]["pixels"]["few_labels"]["labels"] == 50 and len(dae["probe"]["pca"]["few_labels"]["values"]) == 5
    red = dae["reduction"]
    assert red["mean_image_sq_error_per_image"] > red["pca_sq_error_per_image"] > 0
    assert red["bce_floor_per_image"] < red["bce_per_image"] and red["pca_bce_per_image"] > 0
    saved = json.loads((out / "quality.json").read_text())
    (common,) = saved["common_code"]["results"]
    assert common["latent_dim"] == 20 and common["seeds"]["n"] == 1 and common["overrides"]["latent_dim"] == 20
    assert common["reduction"]["pca_sq_error_per_image"] != red["pca_sq_error_per_image"]  # PCA-20, not PCA-30
    text = (out / "quality.md").read_text()
    assert "## At a common code size of 20" in text and "PCA-20" in text
    assert "| dae_mnist | 30 | 2 | " in text and "| dae_mnist | 20 | 1 | " in text
    assert "| dae_mnist | {}, 1 | sq_error_per_image |".format(dae["training"]["seed"]) in text
    assert "common_code_size" in (out / "quality.csv").read_text()
    # A result over fewer seeds does not replace a saved one over more: refused before anything is evaluated,
    # while the other code size can still be evaluated alone and the saved seeds stay.
    shutil.rmtree(runs / "seeds")
    with pytest.raises(ZooError, match=r"dae_mnist: 1 run found .* averages 2 seeds .*--sizes common"):
        quality.run(["dae_mnist"], runs_dir=runs, out_dir=out, data_dir=idx_dir, probe_per_class=5)
    quality.run(["dae_mnist"], runs_dir=runs, out_dir=out, data_dir=idx_dir, probe_per_class=5, sizes="common")
    saved = json.loads((out / "quality.json").read_text())
    assert saved["results"][0]["seeds"]["n"] == 2 and saved["common_code"]["results"][0]["seeds"]["n"] == 1
    with pytest.raises(ZooError, match="No complete run for vae_mnist in .*latent20"):
        quality.run(["vae_mnist"], runs_dir=runs, out_dir=out, data_dir=idx_dir, sizes="common")
    # A latent-20 folder must hold a code of 20; that is checked before anything is evaluated.
    shutil.copytree(runs / "vae_mnist", runs / "latent20" / "vae_mnist")
    with pytest.raises(ZooError, match="has code size"):
        quality.run(["vae_mnist"], runs_dir=runs, out_dir=out, data_dir=idx_dir, probe_per_class=5)


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


def test_results_of_an_earlier_recipe_are_dropped_when_merging(capsys):
    """A result whose recorded description is not its preset's (nor the preset's with --set overrides) was
    measured on a recipe the preset no longer has; merging drops it, with a line that says so."""
    from zoo.presets import PRESETS

    def result(preset, description):
        return {"preset": preset, "description": description}

    old = [result("dae_mnist", PRESETS["dae_mnist"].description),
           result("vae_mnist", PRESETS["vae_mnist"].description + " (changed: latent_dim=20)"),
           result("conv_dae_mnist", "conv_dae on MNIST: an earlier recipe"),
           result("gone_mnist", "a preset that was removed"),
           result("ae_mnist", "replaced by the new result, whatever it says")]
    merged = quality._merge(old, [result("ae_mnist", PRESETS["ae_mnist"].description)])
    assert [(r["preset"], r["description"]) for r in merged] == [
        ("ae_mnist", PRESETS["ae_mnist"].description), ("dae_mnist", PRESETS["dae_mnist"].description),
        ("vae_mnist", PRESETS["vae_mnist"].description + " (changed: latent_dim=20)")]
    err = capsys.readouterr().err
    assert "dropped the earlier result of conv_dae_mnist: it was trained on an earlier recipe" in err
    assert "dropped the earlier result of gone_mnist: there is no preset gone_mnist" in err
    assert err.count("dropped") == 2


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
    int8 = {"kept": True, "extent": "full", "tolerance": {"sq_error_rel": 0.02, "precision_at_10": 0.005},
            "sq_error_per_image": {"fp32": 5.432, "variant": 5.5, "relative_change": (5.5 - 5.432) / 5.432},
            "precision_at_10": {"fp32": 0.812, "variant": 0.8115, "change": -0.0005},
            "evaluation": {"database": {"num_images": 10000}}}
    dropped = dict(int8, kept=False)
    (dist / "manifest.json").write_text(json.dumps({"files": [{"file": "encoder.onnx", "size": 1234,
                                                               "sha256": "ab" * 32}], "release": "v9.9",
                                                    "parity": {"variants": {"int8": int8, "fp16": dropped}}}))
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
                     "Recipe as trained: 7 epochs",
                     "int8 (full extent): sq. error per image 5.500 against 5.432 (+1.25%, tolerance 2.0%), "
                     "precision@10 over the first 10,000 training images 0.8115 against 0.8120 (tolerance -0.005)"):
        assert expected in section, expected
    assert "fp16" not in section  # a variant that was not kept is not shown as shipped


def test_cards_refuse_to_invent_missing_figures(tmp_path):
    results, dist = _fake_results(tmp_path)
    text = cards.render(results, dist)
    section = text[text.index("## conv_ae_fashion_mnist"):text.index("## conv_ae_mnist")]
    assert "No measured results" in section
    assert "not measured" in section
    assert "sq_error_per_image |" not in section and "PCA-30" not in section
    assert "Released files: none in this release" in section
    assert "Preset recipe (not trained here): 40 epochs" in section
    # No weights to fetch: the card says how to train and export them instead of offering from_preset.
    assert "zoo.from_preset" not in section and "zoo.weights fetch" not in section
    assert "python -m zoo.train conv_ae_fashion_mnist" in section and "python -m export runs/conv_ae_fashion_mnist" \
        in section
    empty = cards.render(tmp_path / "nothing", tmp_path / "nodist")
    assert "Measured presets: none" in empty and "images/s (p50" not in empty
