"""Semantic hashing (Salakhutdinov & Hinton, 2009): a deep encoder whose sigmoid code layer receives Gaussian
noise on its inputs during training. To get information through the noise the encoder pushes the
pre-activations far from zero, so the code becomes nearly binary and thresholding it at 0.5 loses little:
short binary codes for Hamming search (zoo.search, `--binarize threshold`)."""

import keras
from keras import layers, ops

from zoo.models.base import Autoencoder
from zoo.models.blocks import InputCentering, dense_decoder
from zoo.registry import register


@keras.saving.register_keras_serializable(package="aezoo")
class CodeNoise(keras.layers.Layer):
    """x + stddev * N(0, 1) in training, the identity otherwise (keras.layers.GaussianNoise allows stddev <= 1 only;
    semantic hashing wants about 4 on the code's pre-activations)."""

    def __init__(self, stddev, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.stddev = float(stddev)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=False):
        if not training or self.stddev == 0:
            return inputs
        return inputs + self.stddev * keras.random.normal(ops.shape(inputs), seed=self.seed_generator)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "stddev": self.stddev, "seed": self.seed}


def hashing_encoder(input_shape, hidden_units, latent_dim, activation, code_noise, seed=None, center=False,
                    name="encoder"):
    """Flatten, optionally subtract the mean training image (InputCentering), a Dense stack, the code's
    pre-activations, training-only noise on them, then the sigmoid code."""
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Flatten(name="flatten")(inputs)
    if center:
        x = InputCentering(name="centering")(x)
    for i, units in enumerate(hidden_units):
        x = layers.Dense(units, activation=activation, name="dense_{}".format(i))(x)
    x = layers.Dense(latent_dim, name="code_logits")(x)
    x = CodeNoise(code_noise, seed=seed, name="code_noise")(x)  # the identity outside training
    return keras.Model(inputs, layers.Activation("sigmoid", name="code")(x), name=name)


@register("semantic_hash", "Semantic hashing: deep encoder, sigmoid code with Gaussian noise on its inputs in "
                           "training, so the code is nearly binary (threshold at 0.5 for Hamming search).")
class SemanticHash(Autoencoder):
    def __init__(self, input_shape=(28, 28, 1), latent_dim=32, hidden_units=(1000, 500, 250), activation="relu",
                 code_noise=4.0, output_activation="sigmoid", reconstruction_loss="mse", center_inputs=True, seed=None,
                 **kwargs):
        # center_inputs: subtract the mean training image first (blocks.InputCentering, set by `adapt`). Without it,
        # 5 of the 32 code units of the Fashion-MNIST preset stayed at one end of the sigmoid (constant bits).
        hidden_units = tuple(int(u) for u in hidden_units)
        if not code_noise >= 0:
            raise ValueError("code_noise (the stddev of the noise before the sigmoid code) must be >= 0; got {!r}."
                             .format(code_noise))
        # === Layers ===
        encoder = hashing_encoder(input_shape, hidden_units, latent_dim, activation, float(code_noise), seed,
                                  center=center_inputs)
        decoder = dense_decoder(input_shape, tuple(reversed(hidden_units)), latent_dim, activation,
                                output_activation)
        # === Graph ===
        super().__init__(encoder, decoder, input_shape=input_shape, latent_dim=latent_dim,
                         reconstruction_loss=reconstruction_loss, **kwargs)
        # === Config ===
        self.hidden_units = hidden_units
        self.activation = activation
        self.code_noise = float(code_noise)
        self.output_activation = output_activation
        self.center_inputs = bool(center_inputs)
        self.seed = seed

    def get_config(self):
        return {**super().get_config(), "hidden_units": list(self.hidden_units), "activation": self.activation,
                "code_noise": self.code_noise, "output_activation": self.output_activation,
                "center_inputs": self.center_inputs, "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        # Files saved before `center_inputs` existed (aezoo 0.2: runs, releases/v0.2) have no centering layer.
        return cls(**{"center_inputs": False, **config})
