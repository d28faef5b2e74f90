"""`python -m zoo.train`: run dir contents, resume after interruption, seeds, CLI errors, real data."""

import csv
import json
import os

import keras
import numpy as np
import pytest

from zoo import data, fileio, presets, train
from zoo.errors import UnknownNameError, ZooError
from tests.helpers import write_idx_dir

RUN_FILES = {"model.keras", "config.json", "history.csv", "metrics.json", "reconstructions.png"}


pytestmark = pytest.mark.usefixtures("offline")  # tests/conftest.py


@pytest.fixture
def idx_dir(tmp_path):
    return write_idx_dir(tmp_path / "idx", n_train=400, n_test=64)


@pytest.mark.parametrize("preset", ["deep_ae_mnist", "conv_dae_fashion_mnist", "vae_mnist"])
def test_cli_trains_a_complete_run_dir(preset, idx_dir, tmp_path):
    out = tmp_path / "run"
    rc = train.main([preset, "--epochs", "1", "--limit", "256", "--data-dir", str(idx_dir), "--out", str(out),
                     "--quiet"])
    assert rc == 0
    assert RUN_FILES <= {p.name for p in out.iterdir()}
    assert not (out / train.BACKUP_DIR).exists() and not (out / fileio.FolderLock.NAME).exists()
    assert fileio.marker_kind(out) == "run"
    config = json.loads((out / "config.json").read_text())
    assert config["preset"] == preset and config["dataset"] == presets.get_preset(preset).dataset
    assert config["data_source"] == "idx:{}".format(idx_dir)
    assert config["training"]["epochs"] == 1 and config["training"]["limit"] == 256
    # The preset's own recipe, and what the flags changed in it.
    assert (config["training"]["optimizer"], config["training"]["schedule"]) == ("adam", "cosine")
    assert config["overrides"] == {"epochs": 1, "limit": 256}
    assert {"tensorflow", "keras", "aezoo"} <= set(config["versions"])
    assert config["parameters"] > 0
    result = json.loads((out / "metrics.json").read_text())
    m = result["metrics"]
    assert result["num_images"] == 64
    for key in ("sq_error_per_image", "mse_per_pixel", "bce_per_pixel", "psnr_db"):
        assert np.isfinite(m[key]) and key in result["units"]
    assert m["sq_error_per_image"] == pytest.approx(m["mse_per_pixel"] * 28 * 28, rel=1e-6)
    if preset.startswith("conv_dae"):
        assert {"noisy_psnr_db", "denoised_psnr_db", "psnr_gain_db"} <= set(m)
    model = keras.models.load_model(out / "model.keras")
    assert model.get_config() == config["model_config"]
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and "val_reconstruction_loss" in rows[0]


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, at_epoch):
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at_epoch:
            raise KeyboardInterrupt


def test_interrupted_run_resumes_from_checkpoint(idx_dir, tmp_path):
    out = tmp_path / "run"
    kwargs = dict(out=out, epochs=3, limit=128, data_dir=idx_dir, verbose=0)
    with pytest.raises(KeyboardInterrupt):
        train.train("ae_mnist", callbacks=[_Interrupt(at_epoch=1)], **kwargs)
    assert (out / train.BACKUP_DIR).exists()
    assert not (out / "metrics.json").exists(), "an interrupted run must not look complete"
    # Other settings would resume the wrong run.
    with pytest.raises(ZooError, match="interrupted run with other settings"):
        train.train("ae_mnist", **{**kwargs, "epochs": 5})
    started = []

    class Spy(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            started.append(epoch)

    train.train("ae_mnist", callbacks=[Spy()], **kwargs)
    assert started == [2], "resumes after the two finished epochs"
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["resumed"] is True
    with open(out / "history.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1, 2]


def test_same_seed_same_result(idx_dir, tmp_path):
    results = []
    for run in ("a", "b"):
        out = train.train("ae_mnist", out=tmp_path / run, epochs=2, limit=128, data_dir=idx_dir, seed=7, verbose=0)
        results.append(json.loads((out / "metrics.json").read_text())["metrics"])
    assert results[0]["sq_error_per_image"] == pytest.approx(results[1]["sq_error_per_image"], rel=1e-5)


def test_list_and_unknown_preset(capsys):
    assert train.main(["--list"]) == 0
    listing = capsys.readouterr().out
    for name in ("dae_mnist", "conv_ae_cifar10", "linear_ae_fashion_mnist"):
        assert name in listing
    assert train.main(["dae_mnst", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "dae_mnist" in err and "Traceback" not in err
    with pytest.raises(UnknownNameError):
        presets.get_preset("nope")


def test_bad_settings_are_refused(capsys):
    assert train.main(["ae_mnist", "--epochs", "0"]) == 2
    assert "--epochs must be at least 1" in capsys.readouterr().err


def test_missing_data_fails_fast_and_clearly(capsys, tmp_path):
    assert train.main(["ae_mnist", "--quiet", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "ZOO_DATA_DIR" in err and "Traceback" not in err
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_presets_cover_every_family_and_dataset():
    names = set(presets.list_presets())
    for model in ("ae", "linear_ae", "deep_ae", "conv_ae", "dae", "conv_dae", "sparse_ae", "contractive_ae", "vae",
                  "conv_vae"):
        assert {model + "_mnist", model + "_fashion_mnist"} <= names
    assert {"conv_ae_cifar10", "conv_dae_cifar10", "conv_vae_cifar10"} <= names
    for p in presets.PRESETS.values():
        assert p.description and p.epochs > 0 and p.batch_size > 0 and p.learning_rate > 0
        assert tuple(p.model_config["input_shape"]) == data.get_info(p.dataset).image_shape
        if "filters" in p.model_config:
            assert "/".join(str(f) for f in p.model_config["filters"]) in p.description


def test_denoising_presets_share_the_architecture_and_recipe_of_their_control():
    # The denoising table compares a denoiser with its control: only the noise may differ between them.
    from benchmarks.quality import CONTROLS
    from benchmarks.quality_report import RECIPE_KEYS

    noise_only = {"noise", "noise_level"}
    checked = 0
    for denoising, control in CONTROLS.items():
        for dataset in ("mnist", "fashion_mnist", "cifar10"):
            name = "{}_{}".format(denoising, dataset)
            if name not in presets.PRESETS:
                continue
            ours, theirs = presets.PRESETS[name], presets.PRESETS["{}_{}".format(control, dataset)]
            config = {k: v for k, v in ours.model_config.items() if k not in noise_only}
            assert config == theirs.model_config, name
            # The keys the quality table compares, and the whole recipe (optimizer and schedule too).
            keys = [key for key in (*RECIPE_KEYS, *presets.RECIPE_FIELDS) if hasattr(ours, key)]
            assert {"epochs", "batch_size", "learning_rate", "seed"} <= set(keys)
            for key in keys:
                assert getattr(ours, key) == getattr(theirs, key), (name, key)
            checked += 1
    assert checked >= 5


@pytest.mark.realdata
@pytest.mark.skipif(not os.path.isdir(data.DEBIAN_FASHION_MNIST_DIR), reason="apt-get install dataset-fashion-mnist")
def test_trains_on_real_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.delenv("ZOO_OFFLINE")
    out = train.train("deep_ae_fashion_mnist", out=tmp_path / "run", epochs=2, limit=6000, verbose=0)
    config = json.loads((out / "config.json").read_text())
    assert config["data_source"].startswith("idx:") and config["num_test"] == 10000
    test = data.normalize(data.load_arrays("fashion_mnist", "test").images)
    mean_image_error = float(np.mean(np.sum((test - test.mean(axis=0)) ** 2, axis=(1, 2, 3))))
    m = json.loads((out / "metrics.json").read_text())["metrics"]
    assert m["sq_error_per_image"] < 0.6 * mean_image_error, (m, mean_image_error)
