"""stacked_ae: each greedy stage trains its own two layers, pretraining runs once, and zoo.train records it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import zoo
from zoo import presets, train
from zoo.errors import ZooError
from zoo.models.stacked_ae import StackedAE
from tests.helpers import TINY_SHAPE, tiny_model, write_idx_dir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images():
    """scikit-learn's bundled 8x8 digits in [0, 1]: small real data a shallow autoencoder can learn."""
    from sklearn.datasets import load_digits

    x = (load_digits().images[:256] / 16.0).astype("float32")[..., None]
    assert x.shape[1:] == TINY_SHAPE
    return x


pytestmark = pytest.mark.usefixtures("offline")  # tests/conftest.py


def dense_layers(model):
    """{(part, layer name): layer} of every Dense layer: encoder and decoder both have a dense_0."""
    return {(part.name, layer.name): layer for part in (model.encoder, model.decoder) for layer in part.layers
            if isinstance(layer, keras.layers.Dense)}


def weights_of(model):
    return {key: [w.copy() for w in layer.get_weights()] for key, layer in dense_layers(model).items()}


def stage_loss(model, k, x):
    """Stage k's loss, from the layers' own calls and numpy: reconstruct the input of encoder layer k."""
    below, hidden, mirror = model.stages()[k]
    h = x
    for layer in below:
        h = layer(h)
    h = keras.ops.convert_to_numpy(h)
    recon = keras.ops.convert_to_numpy(mirror(hidden(h)))
    if k == 0 and model.reconstruction_loss == "bce":
        p = np.clip(recon, 1e-7, 1 - 1e-7)
        return float(np.mean(-np.sum(h * np.log(p) + (1 - h) * np.log(1 - p), axis=1)))
    return float(np.mean(np.sum(np.square(h - recon), axis=1)))


def test_stages_pair_each_encoder_layer_with_its_mirror():
    model = tiny_model("stacked_ae")
    pairs = [([layer.name for layer in below], hidden.name, mirror.name) for below, hidden, mirror in model.stages()]
    assert pairs == [(["flatten"], "dense_0", "pixels"), (["flatten", "dense_0"], "dense_1", "dense_1"),
                     (["flatten", "dense_0", "dense_1"], "code", "dense_0")]
    # The model's own layer objects, so the stages train its weights.
    assert model.stages()[2][2] is model.decoder.get_layer("dense_0")
    assert model.stages()[0][1] is model.encoder.get_layer("dense_0")


@pytest.mark.parametrize("loss", ["mse", "bce"])
def test_each_stage_trains_only_its_two_layers_and_lowers_its_loss(loss, images):
    keras.utils.set_random_seed(0)
    model = tiny_model("stacked_ae", reconstruction_loss=loss, pretrain_epochs=8, pretrain_learning_rate=1e-2)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))  # the main fit's optimizer: the stages must leave it be
    snapshots, losses_before = [], []

    def data_for_stage(k):
        snapshots.append(weights_of(model))
        losses_before.append(stage_loss(model, k, images))
        return images

    records = model.pretrain(data_for_stage, batch_size=16)
    snapshots.append(weights_of(model))
    stages = model.stages()
    assert [r["layer"] for r in records] == ["dense_0", "dense_1", "code"]
    for k, (_, hidden, mirror) in enumerate(stages):
        own = {("encoder", hidden.name), ("decoder", mirror.name)}
        for key in snapshots[k]:
            changed = any(not np.array_equal(a, b) for a, b in zip(snapshots[k][key], snapshots[k + 1][key]))
            assert changed == (key in own), (k, key)
        # Later stages leave stage k's layers (and those below) as they were: its loss now is its loss after it.
        after = stage_loss(model, k, images)
        assert after < 0.8 * losses_before[k], (k, losses_before[k], after)
        assert records[k]["epochs"] == 8 and np.isfinite(records[k]["loss"])
    assert float(keras.ops.convert_to_numpy(model.pretrained)) == 1.0 and not model.needs_pretraining
    # Every layer is trainable again, and the main optimizer has taken no step.
    assert all(layer.trainable for layer in dense_layers(model).values())
    assert len(model.trainable_weights) == 4 * 3
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 0


def test_fit_pretrains_once_and_the_flag_is_saved(images, tmp_path, monkeypatch):
    calls = []
    original = StackedAE.pretrain

    def spy(self, *args, **kwargs):
        calls.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StackedAE, "pretrain", spy)
    keras.utils.set_random_seed(1)
    model = tiny_model("stacked_ae", pretrain_epochs=1)
    assert model.needs_pretraining
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(images, batch_size=16, epochs=1, verbose=0)
    assert len(calls) == 1 and len(history.history["loss"]) == 1
    model.fit(images, batch_size=16, epochs=1, verbose=0)
    assert len(calls) == 1, "a second fit must not pretrain again"
    path = tmp_path / "stacked.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert not loaded.needs_pretraining and loaded.get_config() == model.get_config()
    loaded.fit(images, batch_size=16, epochs=1, verbose=0)
    assert len(calls) == 1, "the flag is saved with the model"
    with pytest.raises(ValueError, match="re-iterable"):
        tiny_model("stacked_ae").fit((x for x in [images]), epochs=1, verbose=0)


def test_no_pretraining_is_deep_ae(images):
    results = []
    for name, extra in (("deep_ae", {}), ("stacked_ae", {"pretrain_epochs": 0})):
        keras.utils.set_random_seed(3)
        model = tiny_model(name, **extra)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        model.fit(images, batch_size=16, epochs=2, shuffle=False, verbose=0)
        results.append(model)
    deep, stacked = results
    assert not stacked.needs_pretraining and stacked.pretrain(images) == []
    assert float(keras.ops.convert_to_numpy(stacked.pretrained)) == 0.0
    np.testing.assert_allclose(stacked.reconstruct(images), deep.reconstruct(images), atol=1e-6)


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match=r"decoder_units must be hidden_units reversed \(\[8, 16\]\); got \[16, 8\]"):
        tiny_model("stacked_ae", decoder_units=(16, 8))
    assert tiny_model("stacked_ae", decoder_units=[8, 16]).decoder_units == (8, 16)
    with pytest.raises(ValueError, match="pretrain_epochs must be an integer >= 0"):
        tiny_model("stacked_ae", pretrain_epochs=-1)
    with pytest.raises(ValueError, match="pretrain_learning_rate must be a positive"):
        tiny_model("stacked_ae", pretrain_learning_rate=0.0)
    # Through the preset's overrides, the model's message becomes a one-line ZooError.
    preset, changed = presets.apply_overrides("stacked_ae_mnist", {"decoder_units": [250, 1000]})
    with pytest.raises(ZooError, match="decoder_units.*hidden_units reversed"):
        presets.build_model(preset, changed)


def test_preset_is_deep_ae_plus_pretraining():
    ours, control = presets.get_preset("stacked_ae_fashion_mnist"), presets.get_preset("deep_ae_fashion_mnist")
    assert ours.recipe() == control.recipe()
    assert {k: v for k, v in ours.model_config.items() if k != "pretrain_epochs"} == control.model_config
    assert ours.model_config["pretrain_epochs"] == 5 and "(5 epochs a layer)" in ours.description
    model = zoo.build("stacked_ae")
    assert (model.hidden_units, model.latent_dim, model.code_kind) == ((1000, 500, 250), 30, "linear")


def test_train_records_pretraining_and_a_resumed_run_skips_it(tmp_path, monkeypatch):
    idx_dir = write_idx_dir(tmp_path / "idx", n_train=300, n_test=32)
    out = tmp_path / "run"
    rc = train.main(["stacked_ae_mnist", "--epochs", "1", "--limit", "256", "--data-dir", str(idx_dir), "--out",
                     str(out), "--set", "pretrain_epochs=1", "--quiet"])
    assert rc == 0
    config = json.loads((out / "config.json").read_text())
    records = config["training"]["pretraining"]
    assert [r["layer"] for r in records] == ["dense_0", "dense_1", "dense_2", "code"]
    assert all(r["epochs"] == 1 and np.isfinite(r["loss"]) for r in records)
    assert config["model_config"]["pretrain_epochs"] == 1 and config["overrides"]["pretrain_epochs"] == 1
    assert not keras.models.load_model(out / "model.keras").needs_pretraining

    # Interrupted after its first epoch, a run resumes with the flag and records of its checkpoint.
    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt

    kwargs = dict(out=tmp_path / "resumed", epochs=2, limit=128, data_dir=idx_dir, verbose=0,
                  overrides={"pretrain_epochs": 1, "hidden_units": [32, 16]})
    with pytest.raises(KeyboardInterrupt):
        train.train("stacked_ae_mnist", callbacks=[Interrupt()], **kwargs)
    calls = []
    monkeypatch.setattr(StackedAE, "pretrain", lambda self, *a, **k: calls.append(1))
    config = json.loads((train.train("stacked_ae_mnist", **kwargs) / "config.json").read_text())
    assert calls == [] and config["training"]["resumed"] is True
    assert [r["layer"] for r in config["training"]["pretraining"]] == ["dense_0", "dense_1", "code"]


@pytest.mark.skipif(os.environ.get("KERAS_BACKEND") == "jax", reason="this test runs the others under JAX")
def test_under_jax(tmp_path):
    """The stage and zoo.train tests on the JAX backend: stages trained by Keras' JAX trainer (stateless, its
    variables synced back after fit) change the weights they share with the model."""
    pytest.importorskip("jax", reason="the JAX backend tests need jax")
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=str(ROOT), ZOO_OFFLINE="1",
               TFDS_DATA_DIR=str(tmp_path / "tfds"))
    env.pop("ZOO_DATA_DIR", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_stacked.py",
                           "-k", "stage or records"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "failed" not in proc.stdout.splitlines()[-1]
