"""Code health (zoo.metrics.code_health), the statistics a model takes from its training images (input centering),
and how training reports both: metrics.json, the warning line, the same values on a resumed run."""

import json

import keras
import numpy as np
import pytest

import zoo
from zoo import data, metrics, schema, train
from tests.helpers import TINY_SHAPE, tiny_model, write_idx_dir


# --- the counts ------------------------------------------------------------------------------------------
def test_sigmoid_units_dead_saturated_and_binary():
    rng = np.random.default_rng(0)
    n = 1000
    codes = np.column_stack([
        rng.uniform(0.2, 0.8, n),  # healthy
        np.full(n, 0.5),  # dead: constant
        np.where(np.arange(n) < 995, 1.0, 0.3),  # saturated: at 1 on 99.5% of the codes
        np.where(np.arange(n) % 2, 0.999, 0.001),  # nearly binary, both ends: not saturated
        np.where(np.arange(n) < 980, 0.0, 0.7),  # near 0 on 98%: a sparse unit, not saturated
    ])
    health = metrics.code_health(codes, "sigmoid")
    assert health == {"code": "sigmoid", "units": 5, "images": n, "dead": 1, "saturated": 1, "dead_or_saturated": 2}
    assert metrics.unusable_units(health) == 2
    assert metrics.health_line(health) == "Code health: 2 of 5 units dead or saturated (1 dead, 1 saturated)"


def test_relu_and_linear_codes():
    rng = np.random.default_rng(1)
    n = 1000
    codes = np.column_stack([rng.uniform(0, 3, n), np.zeros(n), np.where(np.arange(n) < 995, 0.0, 2.0)])
    relu = metrics.code_health(codes, "relu")
    assert (relu["dead"], relu["saturated"], relu["dead_or_saturated"]) == (1, 2, 2)  # always 0 is both
    linear = metrics.code_health(codes, "linear")
    assert (linear["dead"], linear["saturated"]) == (1, 0)  # a linear code has no end to stick at


def test_gaussian_active_dimensions_and_kl():
    rng = np.random.default_rng(2)
    z_mean = np.column_stack([rng.normal(0, 1, 500), rng.normal(0, 0.05, 500), np.full(500, 0.3)])
    health = metrics.code_health(z_mean, "gaussian")
    assert health["active_dimensions"] == 1 and health["units"] == 3  # Var 1, 0.0025, 0
    assert metrics.health_line(health) == "VAE active dimensions: 1 of 3"
    z_log_var = np.zeros_like(z_mean)
    kl = metrics.code_health((z_mean, z_log_var), "gaussian")["kl_nats_per_dimension"]
    np.testing.assert_allclose(kl, 0.5 * np.mean(np.square(z_mean), axis=0), atol=1e-4)


def test_warning_above_a_tenth_of_the_code():
    ok = {"code": "sigmoid", "units": 30, "dead": 3, "saturated": 0, "dead_or_saturated": 3}
    assert metrics.health_warning(ok) is None
    bad = dict(ok, dead=4, dead_or_saturated=4)
    assert "4 of 30 code units are dead or saturated" in metrics.health_warning(bad)
    vae = {"code": "gaussian", "units": 20, "active_dimensions": 8}
    assert "only 8 of 20 latent dimensions are active" in metrics.health_warning(vae)
    with pytest.raises(ValueError, match="codes must be"):
        metrics.code_health(np.zeros(5), "sigmoid")


@pytest.mark.parametrize("name", zoo.list_models())
def test_every_family_has_a_code_health(name):
    model = tiny_model(name)
    x = np.random.default_rng(3).uniform(0, 1, (40,) + TINY_SHAPE).astype("float32")
    health = metrics.model_code_health(model, x)
    assert health["units"] == model.latent_dim and health["images"] == 40
    variational = getattr(model, "variational", False)
    assert health["code"] == ("gaussian" if variational else model.code_kind)
    assert ("active_dimensions" in health) == variational
    assert ("codebook_used" in health) == (model.code_kind == "vq")
    assert metrics.health_line(health)


def test_codebook_health_counts_the_entries_tokens_use():
    latents = np.zeros((4, 6))
    indices = np.array([[0, 1, 1], [0, 1, 1], [0, 1, 1], [0, 1, 1]])  # entries 0 and 1 of 8, used 1:2
    health = metrics.code_health((latents, indices, 8), "vq")
    assert health["codebook_size"] == 8 and health["codebook_used"] == 2
    assert health["perplexity"] == pytest.approx(np.exp(-(1 / 3 * np.log(1 / 3) + 2 / 3 * np.log(2 / 3))), abs=0.01)
    assert metrics.unusable_units(health) == 6
    assert "2 of 8 codebook entries" in metrics.health_warning(health)
    even = metrics.code_health((latents, np.arange(12).reshape(4, 3) % 8, 8), "vq")
    assert even["codebook_used"] == 8 and metrics.health_warning(even) is None


# --- input centering ------------------------------------------------------------------------------------
def test_centering_subtracts_the_mean_training_image():
    keras.utils.set_random_seed(0)
    model = zoo.build("ae", input_shape=TINY_SHAPE, latent_dim=4)
    x = np.random.default_rng(4).integers(0, 256, (50,) + TINY_SHAPE).astype(np.uint8)
    assert model.adapt(x) == ["centering"]
    mean = x.astype(np.float64).mean(axis=0) / 255
    np.testing.assert_allclose(model.encoder.get_layer("centering").input_mean.numpy(), mean.ravel(), atol=1e-6)
    images = data.normalize(x)
    code = model.encoder.get_layer("code")
    expected = 1 / (1 + np.exp(-((images - mean).reshape(50, -1) @ code.kernel.numpy() + code.bias.numpy())))
    np.testing.assert_allclose(model.encode(images), expected, atol=1e-5)
    # A family without statistics of its data has nothing to set.
    assert tiny_model("deep_ae").adapt(images) == []


def test_models_saved_before_centering_load_without_it():
    model = zoo.build("ae", input_shape=TINY_SHAPE, latent_dim=4)
    old = {k: v for k, v in model.get_config().items() if k != "center_inputs"}  # aezoo 0.2's config
    rebuilt = zoo.get_class("ae").from_config(old)
    assert rebuilt.center_inputs is False and len(rebuilt.weights) == len(model.weights) - 1
    for family in ("sparse_ae", "semantic_hash"):
        config = {k: v for k, v in tiny_model(family).get_config().items() if k != "center_inputs"}
        assert zoo.get_class(family).from_config(config).center_inputs is False


def test_semantic_hash_centres_its_input():
    model = tiny_model("semantic_hash")
    images = np.random.default_rng(5).uniform(0, 1, (20,) + TINY_SHAPE).astype("float32")
    assert model.center_inputs and model.adapt(images) == ["centering"]
    np.testing.assert_allclose(model.encoder.get_layer("centering").input_mean.numpy(),
                               images.reshape(20, -1).mean(axis=0), atol=1e-6)


# --- in training ------------------------------------------------------------------------------------------
@pytest.fixture
def idx_dir(tmp_path, offline):
    return write_idx_dir(tmp_path / "idx", n_train=300, n_test=64)


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise KeyboardInterrupt


def test_training_sets_the_mean_and_records_health(idx_dir, tmp_path, capsys):
    out = tmp_path / "run"
    kwargs = dict(out=out, epochs=2, limit=128, data_dir=idx_dir, verbose=0)
    with pytest.raises(KeyboardInterrupt):
        train.train("ae_mnist", callbacks=[_Interrupt()], **kwargs)
    train.train("ae_mnist", **kwargs)  # resumed: the mean is set again, and equals the checkpoint's
    assert json.loads((out / schema.CONFIG).read_text())["training"]["resumed"] is True
    model = keras.models.load_model(out / schema.MODEL)
    fit = data.load("mnist", batch_size=32, seed=0, data_dir=idx_dir, limit=128).fit_images
    np.testing.assert_allclose(model.encoder.get_layer("centering").input_mean.numpy(),
                               fit.astype(np.float64).mean(axis=0).ravel() / 255, atol=1e-6)
    result = schema.RunMetrics.load(out)
    health = result.metrics["health"]
    assert health["code"] == "sigmoid" and health["units"] == model.latent_dim and health["images"] == 128
    assert {"dead", "saturated", "dead_or_saturated"} <= set(result.units["health"])


def test_training_warns_about_an_unhealthy_code(idx_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(metrics, "HEALTH_WARNING_FRACTION", -1.0)  # every code counts as unhealthy
    train.train("vae_mnist", out=tmp_path / "run", epochs=1, limit=64, data_dir=idx_dir, verbose=0)
    err = capsys.readouterr().err
    assert "warning: vae_mnist: only" in err and "latent dimensions are active" in err
    assert "active_dimensions" in schema.RunMetrics.load(tmp_path / "run").metrics["health"]


def test_cards_show_the_health_line():
    from benchmarks import cards

    health = metrics.code_health(np.random.default_rng(5).uniform(0.1, 0.9, (200, 30)), "sigmoid")
    assert cards.health_text(health) == "Code health: 0 of 30 units dead or saturated (0 dead, 0 saturated), on 200 " \
                                        "training images."
    assert cards.health_text({"code": "gaussian", "units": 30, "images": 10000, "active_dimensions": 12}) == \
        "VAE active dimensions: 12 of 30, on 10,000 training images."
    assert "not measured" in cards.health_text(None)
