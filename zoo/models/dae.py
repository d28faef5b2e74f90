"""Denoising autoencoders (Vincent et al., ICML 2008): learn to undo a stochastic corruption.

The corruption is a layer at the front of the graph. It draws fresh noise for every batch inside
the graph, acts only when `training=True`, and the loss compares with the clean input. By default
half of the training images pass clean (`clean_fraction`), so that clean inputs are not out of
distribution for the encoder.
"""

import keras
from keras import ops

from zoo.models.conv_ae import ConvAE
from zoo.models.deep_ae import DeepAE
from zoo.registry import register

NOISE_KINDS = ("gaussian", "masking", "salt_and_pepper")


def apply_noise(x, noise, noise_level, seed=None):
    """Corrupt images in [0, 1]; the result stays in [0, 1].

    gaussian: add N(0, noise_level^2), clipped to [0, 1]; masking: set a `noise_level` fraction of
    the values to 0; salt_and_pepper: set a `noise_level` fraction to 0 or 1 with equal chance.
    `seed` is an int (for eager use) or a keras.random.SeedGenerator (inside a graph).
    """
    x = ops.convert_to_tensor(x, "float32")
    shape = ops.shape(x)
    if not isinstance(seed, keras.random.SeedGenerator):
        # An int seed would give every draw below the same numbers (salt would then always win).
        seed = keras.random.SeedGenerator(seed)
    if noise == "gaussian":
        return ops.clip(x + noise_level * keras.random.normal(shape, seed=seed), 0.0, 1.0)
    if noise == "masking":
        keep = ops.cast(keras.random.uniform(shape, seed=seed) >= noise_level, x.dtype)
        return x * keep
    if noise == "salt_and_pepper":
        hit = keras.random.uniform(shape, seed=seed) < noise_level
        salt = ops.cast(keras.random.uniform(shape, seed=seed) < 0.5, x.dtype)
        return ops.where(hit, salt, x)
    raise ValueError("noise must be one of {}; got {!r}.".format(NOISE_KINDS, noise))


def check_noise(noise, noise_level):
    if noise not in NOISE_KINDS:
        raise ValueError("noise must be one of {}; got {!r}.".format(NOISE_KINDS, noise))
    if noise == "gaussian" and not noise_level >= 0:
        raise ValueError("noise_level is the Gaussian stddev and must be >= 0; got {!r}.".format(noise_level))
    if noise != "gaussian" and not 0 <= noise_level <= 1:
        raise ValueError("noise_level is the fraction of corrupted values for {!r} noise and must be in "
                         "[0, 1]; got {!r}.".format(noise, noise_level))


def check_clean_fraction(clean_fraction):
    if not 0 <= clean_fraction < 1:
        raise ValueError("clean_fraction (the share of training images left uncorrupted) must be in [0, 1); got {!r}."
                         .format(clean_fraction))


@keras.saving.register_keras_serializable(package="aezoo")
class Corruption(keras.layers.Layer):
    """Stochastic corruption in training; the identity otherwise."""

    def __init__(self, noise="gaussian", noise_level=0.3, clean_fraction=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        check_noise(noise, noise_level)
        check_clean_fraction(clean_fraction)
        self.noise = noise
        self.noise_level = float(noise_level)
        self.clean_fraction = float(clean_fraction)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=False):
        if not training:
            return inputs
        noisy = apply_noise(inputs, self.noise, self.noise_level, seed=self.seed_generator)
        if self.clean_fraction:
            # Whole images left clean, drawn per image, so the encoder also sees the inputs it gets at inference.
            shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
            clean = keras.random.uniform(shape, seed=self.seed_generator) < self.clean_fraction
            noisy = ops.where(clean, ops.cast(inputs, noisy.dtype), noisy)
        return noisy

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "noise": self.noise, "noise_level": self.noise_level,
                "clean_fraction": self.clean_fraction, "seed": self.seed}


class _Denoising:
    """Adds the corruption layer and its arguments to an architecture.

    clean_fraction: the share of training images passed uncorrupted. Every noise moves the statistics of the
    input (clipped Gaussian noise raises Fashion-MNIST's mean pixel from 0.287 to 0.341; masking lowers it), so
    an encoder that only ever sees corrupted images meets clean ones as unusual inputs, and reconstructs them
    worse than noisy ones. With some clean images the target is still always the clean image.
    """

    def __init__(self, noise="gaussian", noise_level=0.3, clean_fraction=0.5, seed=None, **kwargs):
        corruption = Corruption(noise, noise_level, clean_fraction=clean_fraction, seed=seed, name="corruption")
        super().__init__(corruption=corruption, **kwargs)
        self.noise = noise
        self.noise_level = float(noise_level)
        self.clean_fraction = float(clean_fraction)
        self.seed = seed

    def corrupt(self, images):
        """A freshly corrupted copy of `images` at the model's own noise (every image, whatever clean_fraction)."""
        return ops.convert_to_numpy(apply_noise(images, self.noise, self.noise_level,
                                                seed=self.corruption.seed_generator))

    def get_config(self):
        return {**super().get_config(), "noise": self.noise, "noise_level": self.noise_level,
                "clean_fraction": self.clean_fraction, "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        # Configs saved before `clean_fraction` existed (aezoo 0.2: runs, releases/v0.2) were trained without it.
        return super().from_config({"clean_fraction": 0.0, **config})


@register("dae", "Denoising autoencoder (Dense stack): gaussian, masking or salt-and-pepper noise in training.")
class DenoisingAE(_Denoising, DeepAE):
    pass


@register("conv_dae", "Convolutional denoising autoencoder: the conv_ae architecture trained to undo corruption.")
class ConvDenoisingAE(_Denoising, ConvAE):
    pass
