"""Variational autoencoders (Kingma & Welling, ICLR 2014), with beta weighting (Higgins et al. 2017).

Sampling lives in the `Sampler` layer and acts only in training; `call` and `encode` use the
posterior mean, so the exported graph is deterministic. Generate images with `sample(n)`.
"""

import keras
from keras import ops

from zoo.models.conv_ae import ConvAE
from zoo.models.deep_ae import DeepAE
from zoo.registry import register


@keras.saving.register_keras_serializable(package="aezoo")
class Sampler(keras.layers.Layer):
    """z = mean + exp(log_var / 2) * eps in training; the mean otherwise."""

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=False):
        z_mean, z_log_var = inputs
        if not training:
            return z_mean
        eps = keras.random.normal(ops.shape(z_mean), seed=self.seed_generator)
        return z_mean + ops.exp(0.5 * z_log_var) * eps

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


class _Variational:
    """Two-headed encoder, sampler, KL term and `sample(n)` on top of an architecture."""

    variational = True
    regularizer_terms = ("kl_loss",)

    def __init__(self, beta=1.0, seed=None, **kwargs):
        super().__init__(sampler=Sampler(seed=seed, name="sampler"), **kwargs)
        self.beta = float(beta)
        self.seed = seed
        self.prior_seed_generator = keras.random.SeedGenerator(None if seed is None else seed + 1)

    def regularizers(self, x, code, training):
        z_mean, z_log_var = (ops.cast(t, "float32") for t in code)
        kl = -0.5 * ops.sum(1.0 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), axis=-1)
        return {"kl_loss": self.beta * ops.mean(kl)}

    def encode(self, images, batch_size=256):
        """The posterior mean of each image's code."""
        return self.encode_distribution(images, batch_size)[0]

    def encode_distribution(self, images, batch_size=256):
        """(z_mean, z_log_var) of the Gaussian posterior q(z | x)."""
        return tuple(super().encode(images, batch_size))

    def sample(self, n, seed=None):
        """n images decoded from codes drawn from the N(0, I) prior."""
        z = keras.random.normal((int(n), self.latent_dim), seed=self.prior_seed_generator if seed is None else seed)
        return ops.convert_to_numpy(self.decoder(z, training=False))

    def get_config(self):
        return {**super().get_config(), "beta": self.beta, "seed": self.seed}


@register("vae", "Variational autoencoder (Dense), beta-weighted KL; encode gives the mean, sample(n) generates.")
class VAE(_Variational, DeepAE):
    def __init__(self, hidden_units=(512, 256), reconstruction_loss="bce", **kwargs):
        super().__init__(hidden_units=hidden_units, reconstruction_loss=reconstruction_loss, **kwargs)


@register("conv_vae", "Convolutional variational autoencoder: conv_ae architecture with a Gaussian latent.")
class ConvVAE(_Variational, ConvAE):
    def __init__(self, reconstruction_loss="bce", **kwargs):
        super().__init__(reconstruction_loss=reconstruction_loss, **kwargs)
