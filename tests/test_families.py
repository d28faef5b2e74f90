"""Checks that can only fail if a family's defining idea is broken."""

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA

import zoo
from zoo.models import apply_noise
from tests.helpers import TINY_SHAPE, tiny_model


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's bundled 8x8 digits, scaled to [0, 1]: small real data."""
    x = (load_digits().images / 16.0).astype("float32")[..., None]
    return x[:1500], x[1500:]


def train(model, x, epochs, lr=1e-3, batch_size=64):
    model.compile(optimizer=keras.optimizers.Adam(lr))
    model.fit(x, batch_size=batch_size, epochs=epochs, verbose=0, shuffle=True)
    return model


# --- denoising ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dae", "conv_dae"])
@pytest.mark.parametrize("noise,level", [("gaussian", 0.3), ("masking", 0.5), ("salt_and_pepper", 0.2)])
def test_denoising_noise_only_in_training(name, noise, level, digits):
    x = digits[0][:64]
    model = tiny_model(name, noise=noise, noise_level=level, seed=3)
    clean = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_array_equal(clean, keras.ops.convert_to_numpy(model(x)))
    noisy_a = keras.ops.convert_to_numpy(model(x, training=True))
    noisy_b = keras.ops.convert_to_numpy(model(x, training=True))
    assert not np.array_equal(noisy_a, clean)
    assert not np.array_equal(noisy_a, noisy_b), "noise must be drawn afresh for every batch"
    corrupted = model.corrupt(x)
    assert corrupted.min() >= 0 and corrupted.max() <= 1
    assert np.mean(np.abs(corrupted - x)) > 0.02
    assert np.array_equal(keras.ops.convert_to_numpy(model.corruption(x)), x), "corruption is off at inference"


def test_noise_kinds_have_their_statistics():
    x = np.full((200, 28, 28, 1), 0.5, "float32")
    masked = keras.ops.convert_to_numpy(apply_noise(x, "masking", 0.3, seed=1))
    assert np.mean(masked == 0) == pytest.approx(0.3, abs=0.01)
    sp = keras.ops.convert_to_numpy(apply_noise(x, "salt_and_pepper", 0.2, seed=1))
    assert np.mean(sp != 0.5) == pytest.approx(0.2, abs=0.01)
    assert np.mean(sp == 1) == pytest.approx(0.1, abs=0.01)
    gauss = keras.ops.convert_to_numpy(apply_noise(x, "gaussian", 0.1, seed=1))
    assert np.std(gauss - x) == pytest.approx(0.1, rel=0.05)
    with pytest.raises(ValueError, match="salt_and_pepper"):
        zoo.build("dae", noise="speckle")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        zoo.build("dae", noise="masking", noise_level=1.5)


def test_clean_fraction_leaves_whole_images_uncorrupted():
    x = np.random.default_rng(0).uniform(0.2, 0.8, (400,) + TINY_SHAPE).astype("float32")
    model = tiny_model("dae", clean_fraction=0.25, seed=1)
    out = keras.ops.convert_to_numpy(model.corruption(x, training=True))
    clean = np.all(out == x, axis=(1, 2, 3))
    assert clean.mean() == pytest.approx(0.25, abs=0.07)
    assert np.all(np.any(out[~clean] != x[~clean], axis=(1, 2, 3)))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.corruption(x)), x)
    with pytest.raises(ValueError, match="clean_fraction"):
        tiny_model("dae", clean_fraction=1.0)


def test_evaluation_sets_the_noisy_input_error_beside_the_clean_one():
    from zoo import training

    x = np.random.default_rng(1).uniform(0, 1, (16,) + TINY_SHAPE).astype("float32")
    model = tiny_model("dae", seed=0)
    result, recon, noisy = training.evaluate(model, x)
    assert result["sq_error_per_image"] == pytest.approx(np.mean(np.sum((recon - x) ** 2, axis=(1, 2, 3))), rel=1e-5)
    denoised = model.reconstruct(noisy)
    assert result["denoised_sq_error_per_image"] == pytest.approx(
        np.mean(np.sum((denoised - x) ** 2, axis=(1, 2, 3))), rel=1e-5)
    assert result["denoised_bce_per_pixel"] > 0 and "bce_per_pixel" in result


def test_dae_target_is_the_clean_input(digits):
    """A DAE on masking noise must learn to fill in: its reconstruction of masked inputs beats the input."""
    keras.utils.set_random_seed(0)
    x_train, x_test = digits
    model = train(zoo.build("dae", input_shape=(8, 8, 1), latent_dim=16, hidden_units=(64,), noise="masking",
                            noise_level=0.5, seed=0), x_train, epochs=60, lr=3e-3)
    noisy = keras.ops.convert_to_numpy(apply_noise(x_test, "masking", 0.5, seed=5))
    err_noisy = np.mean(np.sum((noisy - x_test) ** 2, axis=(1, 2, 3)))
    err_denoised = np.mean(np.sum((model.reconstruct(noisy) - x_test) ** 2, axis=(1, 2, 3)))
    assert err_denoised < 0.5 * err_noisy


# --- variational -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vae", "conv_vae"])
def test_vae_kl_sampling_and_encode_mean(name, digits):
    keras.utils.set_random_seed(0)
    x = digits[0][:256]
    model = tiny_model(name, seed=4)
    history = train(model, x, epochs=2).history.history
    assert all(kl > 0 for kl in history["kl_loss"])
    samples = model.sample(9)
    assert samples.shape == (9,) + TINY_SHAPE
    assert samples.min() >= 0 and samples.max() <= 1
    assert not np.allclose(samples[0], samples[1])
    z_mean, z_log_var = model.encode_distribution(x[:8])
    np.testing.assert_allclose(model.encode(x[:8]), z_mean)
    np.testing.assert_allclose(model.reconstruct(x[:8]), model.decode(z_mean), atol=1e-5)
    # Training-mode calls sample from the posterior; inference uses its mean.
    a = keras.ops.convert_to_numpy(model(x[:8], training=True))
    assert not np.allclose(a, model.reconstruct(x[:8]), atol=1e-5)


def test_beta_scales_the_kl_term(digits):
    x = digits[0][:64]
    terms = {}
    for beta in (1.0, 4.0):
        keras.utils.set_random_seed(0)
        model = tiny_model("vae", beta=beta, seed=0)
        terms[beta] = float(model.compute_loss_terms(x, training=False)["kl_loss"])
    assert terms[4.0] == pytest.approx(4 * terms[1.0], rel=1e-5)


def test_kl_warmup_raises_the_kl_weight_linearly_from_zero(digits, tmp_path):
    keras.utils.set_random_seed(0)
    x = digits[0][:128]
    model = tiny_model("vae", kl_warmup_epochs=2, seed=0)
    kl = train(model, x, epochs=3).history.history["kl_loss"]
    assert kl[0] == 0 and kl[1] > 0 and kl[2] > 0, kl  # weights 0, 1/2, 1
    assert float(model.kl_weight.numpy()) == 1.0
    # Resumed at epoch 1, the schedule comes from the epoch number: the weight is 1/2 again.
    model.fit(x, batch_size=64, initial_epoch=1, epochs=2, verbose=0)
    assert float(model.kl_weight.numpy()) == 0.5
    path = tmp_path / "warm.keras"
    model.save(path)
    assert keras.models.load_model(path).get_config() == model.get_config()
    assert len(tiny_model("vae").weights) == len(model.weights) - 1, "no extra weight when warm-up is off"
    with pytest.raises(ValueError, match="kl_warmup_epochs"):
        tiny_model("vae", kl_warmup_epochs=-1)


def test_free_bits_floor_each_dimension(digits):
    x = digits[0][:64]
    keras.utils.set_random_seed(0)
    model = tiny_model("conv_vae", free_bits=2.0, seed=0)
    code = model.encoder(x)
    per_dim = np.mean(keras.ops.convert_to_numpy(model.kl_per_dimension(code)), axis=0)
    expected = np.sum(np.maximum(per_dim, 2.0))
    assert float(model.compute_loss_terms(x)["kl_loss"]) == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(2.0 * model.latent_dim, rel=0.2)  # an untrained posterior is near the prior
    with pytest.raises(ValueError, match="free_bits"):
        tiny_model("vae", free_bits=-1.0)


# --- sparse ------------------------------------------------------------------------------------
@pytest.mark.parametrize("sparsity", ["kl", "l1"])
def test_sparsity_penalty_lowers_code_activation(sparsity, digits):
    x_train, x_test = digits
    activation = {}
    for weight in (0.0, 3.0):
        keras.utils.set_random_seed(0)
        model = train(zoo.build("sparse_ae", input_shape=(8, 8, 1), latent_dim=32, sparsity=sparsity,
                                sparsity_weight=weight, sparsity_target=0.05), x_train, epochs=20, lr=3e-3)
        activation[weight] = float(np.mean(model.encode(x_test)))
    assert activation[3.0] < 0.6 * activation[0.0], activation


def test_kl_sparsity_is_on_the_batch_mean_activation_of_each_unit(digits):
    x = digits[0][:64]
    model = zoo.build("sparse_ae", input_shape=(8, 8, 1), latent_dim=6, sparsity_weight=2.0, sparsity_target=0.1)
    rho_hat = np.mean(model.encode(x), axis=0)
    kl = np.sum(0.1 * np.log(0.1 / rho_hat) + 0.9 * np.log(0.9 / (1 - rho_hat)))
    assert float(model.compute_loss_terms(x)["sparsity_loss"]) == pytest.approx(2.0 * kl, rel=1e-4)


def test_kl_sparsity_needs_sigmoid():
    with pytest.raises(ValueError, match="sigmoid"):
        zoo.build("sparse_ae", activation="relu")


# --- contractive -------------------------------------------------------------------------------
def jacobian_frobenius_sq(model, x):
    """||d code / d x||_F^2 per image by automatic differentiation, independent of the closed form."""
    if keras.backend.backend() == "jax":
        import jax

        jac = jax.vmap(jax.jacrev(lambda image: model.encoder(image[None])[0]))(jax.numpy.asarray(x))
        return np.sum(np.square(np.asarray(jac)), axis=tuple(range(1, jac.ndim)))
    import tensorflow as tf

    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        code = model.encoder(x)
    jac = tape.batch_jacobian(code, x)
    return tf.reduce_sum(tf.square(jac), axis=list(range(1, len(jac.shape)))).numpy()


def test_contractive_closed_form_matches_autodiff(digits):
    model = zoo.build("contractive_ae", input_shape=(8, 8, 1), latent_dim=6, contractive_weight=1.0)
    x = digits[0][:16]
    closed = float(model.compute_loss_terms(x)["contractive_loss"])
    assert closed == pytest.approx(float(np.mean(jacobian_frobenius_sq(model, x))), rel=1e-4)


def test_contractive_penalty_lowers_jacobian_norm(digits):
    x_train, x_test = digits
    norms = {}
    for weight in (0.0, 1.0):
        keras.utils.set_random_seed(0)
        model = train(zoo.build("contractive_ae", input_shape=(8, 8, 1), latent_dim=16,
                                contractive_weight=weight), x_train, epochs=20, lr=3e-3)
        norms[weight] = float(np.mean(jacobian_frobenius_sq(model, x_test[:100])))
    assert norms[1.0] < 0.5 * norms[0.0], norms


# --- linear = PCA ------------------------------------------------------------------------------
def test_linear_ae_reaches_pca(digits):
    """The lecture: an autoencoder without activations reaches PCA's capacity (within 3%)."""
    x_train, x_test = digits
    k = 10
    flat_train, flat_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
    pca = PCA(n_components=k).fit(flat_train)
    pca_err = np.mean(np.sum((pca.inverse_transform(pca.transform(flat_test)) - flat_test) ** 2, axis=1))

    keras.utils.set_random_seed(0)
    model = zoo.build("linear_ae", input_shape=(8, 8, 1), latent_dim=k)
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-2, 2500)))
    model.fit(x_train, batch_size=150, epochs=250, verbose=0)
    ae_err = np.mean(np.sum((model.reconstruct(x_test) - x_test) ** 2, axis=(1, 2, 3)))
    assert ae_err <= 1.03 * pca_err, (ae_err, pca_err)


# --- VQ-VAE ----------------------------------------------------------------------------------------
def test_vq_codes_are_codebook_entries_and_indices_decode_like_the_code(digits):
    keras.utils.set_random_seed(5)
    model = train(tiny_model("vq_vae", embedding_dim=2, num_embeddings=16), digits[0], epochs=2)
    latent, indices = model.encode_with_indices(digits[1][:50])
    assert indices.shape == (50, model.tokens) == (50, 2) and indices.dtype == np.int32
    assert indices.min() >= 0 and indices.max() < 16
    codebook = keras.ops.convert_to_numpy(model.quantizer.codebook)
    np.testing.assert_array_equal(latent, codebook[indices].reshape(50, -1))  # the code is made of entries
    z_e = keras.ops.convert_to_numpy(model.pre_quantization()(digits[1][:50]))
    nearest = np.argmin(((z_e.reshape(-1, 1, 2) - codebook[None]) ** 2).sum(-1), axis=1).reshape(50, 2)
    np.testing.assert_array_equal(indices, nearest)
    np.testing.assert_allclose(model.decode_indices(indices), model.reconstruct(digits[1][:50]), atol=1e-6)
    with pytest.raises(ValueError, match=r"integers in \[0, 16\)"):
        model.decode_indices(indices + 16)


def test_vq_losses_and_straight_through_gradient(digits):
    keras.utils.set_random_seed(6)
    model = tiny_model("vq_vae", embedding_dim=2, num_embeddings=8, beta=0.5)
    x = digits[0][:32]
    z_e = keras.ops.convert_to_numpy(model.pre_quantization()(x))
    latent = model.encode(x)
    terms = model.compute_loss_terms(x)
    expected = np.mean(np.sum((z_e - latent) ** 2, axis=1))
    assert float(terms["codebook_loss"]) == pytest.approx(expected, rel=1e-5)
    assert float(terms["commitment_loss"]) == pytest.approx(0.5 * expected, rel=1e-5)
    # With beta=0 only the reconstruction error reaches the encoder: its code layer learns only if the decoder's
    # gradient is copied through the nearest-entry step (straight-through), which itself has none. The codebook
    # learns from its own loss alone, so plain SGD moves each used entry towards the mean of its tokens.
    model = tiny_model("vq_vae", embedding_dim=2, num_embeddings=8, beta=0.0)
    kernel = keras.ops.convert_to_numpy(model.encoder.get_layer("code").kernel).copy()
    codebook = keras.ops.convert_to_numpy(model.quantizer.codebook).copy()
    z_e = keras.ops.convert_to_numpy(model.pre_quantization()(x)).reshape(-1, 2)
    indices = model.encode_indices(x).reshape(-1)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    model.fit(x, batch_size=len(x), epochs=1, verbose=0, shuffle=False)
    assert np.abs(keras.ops.convert_to_numpy(model.encoder.get_layer("code").kernel) - kernel).max() > 0
    step = np.zeros_like(codebook)  # d/de of mean over images of sum over tokens ||sg(z_e) - e||^2
    np.add.at(step, indices, 2 * (codebook[indices] - z_e) / len(x))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.quantizer.codebook), codebook - 0.01 * step,
                               atol=1e-5)


def test_vq_training_uses_the_codebook(digits):
    keras.utils.set_random_seed(7)
    model = tiny_model("vq_vae", latent_dim=8, embedding_dim=2, num_embeddings=16, hidden_units=(64, 32))
    before = model.compute_loss_terms(digits[1])
    train(model, digits[0], epochs=15)
    after = model.compute_loss_terms(digits[1])
    assert float(after["reconstruction_loss"]) < 0.8 * float(before["reconstruction_loss"])
    from zoo import metrics

    health = metrics.model_code_health(model, digits[1])
    assert health["codebook_used"] >= 8 and health["perplexity"] > 4


@pytest.mark.parametrize("kwargs,message", [
    (dict(latent_dim=6, embedding_dim=4), "multiple of embedding_dim"),
    (dict(num_embeddings=1), "at least 2"),
    (dict(trunk="rnn"), "trunk must be one of"),
])
def test_vq_bad_arguments_say_what_to_change(kwargs, message):
    with pytest.raises(ValueError, match=message):
        zoo.build("vq_vae", input_shape=TINY_SHAPE, **kwargs)


def test_vq_conv_trunk(digits):
    model = train(tiny_model("vq_vae", trunk="conv", embedding_dim=2), digits[0][:128], epochs=1)
    assert model.encode_indices(digits[1][:4]).shape == (4, 2)
    assert model.decoder.get_layer("up_0") is not None


# --- convolutional ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["conv_ae", "conv_dae", "conv_vae"])
def test_conv_dense_units_put_an_mlp_between_the_convolutions_and_the_code(name, digits, tmp_path):
    model = train(tiny_model(name, dense_units=[24, 12]), digits[0][:128], epochs=1)
    encoder_dense = [(l.name, l.units) for l in model.encoder.layers if isinstance(l, keras.layers.Dense)]
    decoder_dense = [(l.name, l.units) for l in model.decoder.layers if isinstance(l, keras.layers.Dense)]
    assert encoder_dense[:2] == [("fc_0", 24), ("fc_1", 12)]  # then the code head(s)
    assert decoder_dense[:2] == [("fc_0", 12), ("fc_1", 24)] and decoder_dense[2][0] == "project"  # the mirror
    assert model.get_config()["dense_units"] == [24, 12]
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(again.encode(digits[1][:4]), model.encode(digits[1][:4]), atol=1e-5)
    plain = tiny_model(name)
    assert plain.get_config()["dense_units"] == [] and "fc_0" not in [l.name for l in plain.encoder.layers]
    with pytest.raises(ValueError, match="dense_units must be positive layer widths"):
        tiny_model(name, dense_units=[0])


@pytest.mark.parametrize("name", ["conv_ae", "conv_dae", "conv_vae"])
def test_conv_stages_deepen_with_residual_same_size_convolutions(name, digits, tmp_path):
    model = train(tiny_model(name, convs_per_stage=3, residual=True), digits[0][:128], epochs=1)
    for part in (model.encoder, model.decoder):
        names = [l.name for l in part.layers]
        assert {"conv_0", "conv_0_1", "conv_0_2", "conv_1_2"} <= set(names)
        add = part.get_layer("conv_1_2_residual")
        assert isinstance(add, keras.layers.Add) and add.input[0].shape == add.output.shape  # x + conv(x)
    assert model.get_config()["convs_per_stage"] == 3 and model.get_config()["residual"] is True
    assert model.reconstruct(digits[1][:4]).shape == digits[1][:4].shape
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(again.encode(digits[1][:4]), model.encode(digits[1][:4]), atol=1e-5)
    # The default is today's architecture: one plain same-size convolution a stage, the same layer names.
    plain = tiny_model(name)
    convs = (keras.layers.Conv2D, keras.layers.Conv2DTranspose)
    assert [l.name for l in plain.decoder.layers if isinstance(l, convs)] == [
        "up_0", "conv_0", "up_1", "conv_1", "reconstruction"]
    assert not [l for l in plain.encoder.layers if isinstance(l, keras.layers.Add)]
    with pytest.raises(ValueError, match="convs_per_stage must be an integer >= 1"):
        tiny_model(name, convs_per_stage=0)
