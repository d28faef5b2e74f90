"""Variational autoencoders (Kingma & Welling, ICLR 2014), with beta weighting (Higgins et al. 2017).

Sampling lives in the `Sampler` layer and acts only in training; `call` and `encode` use the
posterior mean, so the exported graph is deterministic. Generate images with `sample(n)`.
Two options against posterior collapse (latent dimensions the decoder ignores, KL 0): KL warm-up
(Bowman et al. 2016; `kl_warmup_epochs`) and free bits (Kingma et al. 2016; `free_bits`).
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


class KLWarmup(keras.callbacks.Callback):
    """Sets the model's `kl_weight` to min(1, epoch / kl_warmup_epochs) at the start of each epoch, from the epoch
    number alone, so a resumed run gets the same weights. A variable read inside the train step, assigned between
    epochs, reaches the step on every backend (JAX re-reads its state after on_epoch_begin)."""

    def on_epoch_begin(self, epoch, logs=None):
        self.model.kl_weight.assign(min(1.0, epoch / self.model.kl_warmup_epochs))


class _Variational:
    """Two-headed encoder, sampler, KL term and `sample(n)` on top of an architecture.

    kl_warmup_epochs: the KL term's weight rises linearly from 0 (first epoch) to `beta` (epoch
    `kl_warmup_epochs` on), so the encoder learns to use the code before the prior pulls it in; 0: off.
    free_bits: each latent dimension's KL, averaged over the batch, counts as at least `free_bits` nats, so
    pushing a dimension below that gains nothing; 0: off.
    """

    variational = True
    regularizer_terms = ("kl_loss",)
    encoder_outputs = ("z_mean", "z_log_var")

    def __init__(self, beta=1.0, kl_warmup_epochs=0, free_bits=0.0, seed=None, **kwargs):
        if not (isinstance(kl_warmup_epochs, int) and kl_warmup_epochs >= 0):
            raise ValueError("kl_warmup_epochs must be an integer >= 0 (0: no warm-up); got {!r}."
                             .format(kl_warmup_epochs))
        if not free_bits >= 0:
            raise ValueError("free_bits (nats per latent dimension) must be >= 0; got {!r}.".format(free_bits))
        super().__init__(sampler=Sampler(seed=seed, name="sampler"), **kwargs)
        self.beta = float(beta)
        self.kl_warmup_epochs = int(kl_warmup_epochs)
        self.free_bits = float(free_bits)
        self.seed = seed
        self.prior_seed_generator = keras.random.SeedGenerator(None if seed is None else seed + 1)
        if self.kl_warmup_epochs:
            # Only with warm-up on, so that the weights of a model without it stay those released before it.
            self.kl_weight = self.add_weight(shape=(), initializer="ones", trainable=False, name="kl_weight")

    def kl_per_dimension(self, code):
        """KL(q(z|x) || N(0, I)) in nats per image and latent dimension, shape (batch, latent_dim)."""
        z_mean, z_log_var = (ops.cast(t, "float32") for t in code)
        return -0.5 * (1.0 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var))

    def regularizers(self, x, code, training):
        kl = self.kl_per_dimension(code)
        if self.free_bits:
            kl = ops.sum(ops.maximum(ops.mean(kl, axis=0), self.free_bits))
        else:
            kl = ops.mean(ops.sum(kl, axis=-1))
        weight = self.beta * self.kl_weight if self.kl_warmup_epochs else self.beta
        return {"kl_loss": weight * kl}

    def fit(self, *args, callbacks=None, **kwargs):
        # The warm-up schedule belongs to the model: whoever calls fit gets it.
        callbacks = list(callbacks or [])
        if self.kl_warmup_epochs and not any(isinstance(c, KLWarmup) for c in callbacks):
            callbacks.append(KLWarmup())
        return super().fit(*args, callbacks=callbacks, **kwargs)

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
        return {**super().get_config(), "beta": self.beta, "kl_warmup_epochs": self.kl_warmup_epochs,
                "free_bits": self.free_bits, "seed": self.seed}


@register("vae", "Variational autoencoder (Dense), beta-weighted KL; encode gives the mean, sample(n) generates.")
class VAE(_Variational, DeepAE):
    def __init__(self, hidden_units=(512, 256), reconstruction_loss="bce", **kwargs):
        super().__init__(hidden_units=hidden_units, reconstruction_loss=reconstruction_loss, **kwargs)


@register("conv_vae", "Convolutional variational autoencoder: conv_ae architecture with a Gaussian latent.")
class ConvVAE(_Variational, ConvAE):
    def __init__(self, reconstruction_loss="bce", **kwargs):
        super().__init__(reconstruction_loss=reconstruction_loss, **kwargs)
