"""Every registered model: build, fit step, API shapes, config and .keras round trips, loss terms."""

import keras
import numpy as np
import pytest

import zoo
from zoo.errors import InputShapeError, UnknownNameError
from tests.helpers import TINY_LATENT, TINY_SHAPE, tiny_model

MODELS = zoo.list_models()


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return rng.uniform(0, 1, size=(32,) + TINY_SHAPE).astype("float32")


def fit_one_step(model, images, **compile_kwargs):
    model.compile(optimizer=keras.optimizers.Adam(1e-3), **compile_kwargs)
    return model.fit(images, batch_size=len(images), epochs=1, verbose=0)


@pytest.mark.parametrize("loss", ["mse", "bce"])
@pytest.mark.parametrize("name", MODELS)
def test_fit_step_logs_every_loss_term(name, loss, images):
    keras.utils.set_random_seed(1)
    model = tiny_model(name, reconstruction_loss=loss)
    history = fit_one_step(model, images).history
    expected = {"loss", "reconstruction_loss", *model.regularizer_terms}
    assert expected <= set(history)
    for term in expected:
        assert np.isfinite(history[term][0]), term
    total = history["reconstruction_loss"][0] + sum(history[t][0] for t in model.regularizer_terms)
    assert history["loss"][0] == pytest.approx(total, rel=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_api_shapes_and_determinism(name, images):
    model = tiny_model(name)
    assert isinstance(model.encoder, keras.Model) and isinstance(model.decoder, keras.Model)
    assert model.latent_dim == TINY_LATENT
    codes = model.encode(images)
    assert codes.shape == (len(images), TINY_LATENT)
    decoded = model.decode(codes)
    assert decoded.shape == images.shape
    recon = model.reconstruct(images)
    assert recon.shape == images.shape
    assert not np.isnan(recon).any()
    np.testing.assert_allclose(recon, decoded, atol=1e-5)
    # call() is deterministic: no noise, no sampling outside training.
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(images)), keras.ops.convert_to_numpy(model(images)))


@pytest.mark.parametrize("name", MODELS)
def test_config_round_trip(name, images):
    model = tiny_model(name)
    clone = model.__class__.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone.reconstruct(images), model.reconstruct(images), atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_keras_file_round_trip(name, images, tmp_path):
    keras.utils.set_random_seed(2)
    model = tiny_model(name)
    fit_one_step(model, images)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(model)
    assert loaded.get_config() == model.get_config()
    np.testing.assert_allclose(loaded.reconstruct(images), model.reconstruct(images), atol=1e-6)
    np.testing.assert_allclose(loaded.encode(images), model.encode(images), atol=1e-6)


def test_unknown_model_lists_close_names():
    with pytest.raises(UnknownNameError, match="deep_ae"):
        zoo.build("deep_aee")
    with pytest.raises(UnknownNameError, match="Known models"):
        zoo.build("transformer")


def test_unknown_argument_lists_accepted_ones():
    with pytest.raises(TypeError, match="latent_dim"):
        zoo.build("ae", latent_size=3)


@pytest.mark.parametrize("name", MODELS)
def test_wrong_input_shape_is_named(name):
    model = tiny_model(name)
    with pytest.raises(InputShapeError, match=r"\(batch, 8, 8, 1\).*\(2, 9, 9, 3\)"):
        model.reconstruct(np.zeros((2, 9, 9, 3), "float32"))
    with pytest.raises(InputShapeError, match=r"Add a batch axis"):
        model.encode(np.zeros(TINY_SHAPE, "float32"))
    with pytest.raises(InputShapeError, match=r"latents must have shape \(batch, 4\)"):
        model.decode(np.zeros((2, 5), "float32"))


def test_conv_models_fit_both_image_sizes():
    for shape in [(28, 28, 1), (32, 32, 3)]:
        model = zoo.build("conv_ae", input_shape=shape, filters=(4, 8), latent_dim=3)
        assert model.reconstruct(np.zeros((2,) + shape, "float32")).shape == (2,) + shape
    with pytest.raises(ValueError, match="divisible by 4"):
        zoo.build("conv_ae", input_shape=(30, 30, 1))


def test_bad_reconstruction_loss():
    with pytest.raises(ValueError, match="mse"):
        zoo.build("ae", reconstruction_loss="l2")
