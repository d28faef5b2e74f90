"""The traditional autoencoder of the lecture and its linear special case (PCA's capacity)."""

from zoo.models.base import Autoencoder
from zoo.models.blocks import dense_decoder, dense_encoder
from zoo.registry import register


@register("ae", "Traditional autoencoder: one hidden code layer, f(x) = s(Wx + b), g(z) = s(W'z + b').")
class AE(Autoencoder):
    def __init__(self, input_shape=(28, 28, 1), latent_dim=30, activation="sigmoid", output_activation="sigmoid",
                 reconstruction_loss="mse", center_inputs=True, **kwargs):
        # center_inputs: subtract the mean training image in the encoder (blocks.InputCentering), which keeps
        # the sigmoid code from saturating in the first steps; set from the data by `adapt` before training.
        # === Layers ===
        encoder = dense_encoder(input_shape, (), latent_dim, activation=None, code_activation=activation,
                                center=center_inputs)
        decoder = dense_decoder(input_shape, (), latent_dim, activation=None, output_activation=output_activation)
        # === Graph ===
        super().__init__(encoder, decoder, input_shape=input_shape, latent_dim=latent_dim,
                         reconstruction_loss=reconstruction_loss, **kwargs)
        # === Config ===
        self.activation = activation
        self.output_activation = output_activation
        self.center_inputs = bool(center_inputs)

    def get_config(self):
        return {**super().get_config(), "activation": self.activation, "output_activation": self.output_activation,
                "center_inputs": self.center_inputs}

    @classmethod
    def from_config(cls, config):
        # Files saved before `center_inputs` existed (aezoo 0.2: runs, releases/v0.2) have no centering layer.
        return cls(**{"center_inputs": False, **config})


@register("linear_ae", "Linear autoencoder: no activations; reaches PCA's reconstruction error at the same code size.")
class LinearAE(Autoencoder):
    def __init__(self, input_shape=(28, 28, 1), latent_dim=30, reconstruction_loss="mse", **kwargs):
        encoder = dense_encoder(input_shape, (), latent_dim, activation=None, code_activation=None)
        decoder = dense_decoder(input_shape, (), latent_dim, activation=None, output_activation=None)
        super().__init__(encoder, decoder, input_shape=input_shape, latent_dim=latent_dim,
                         reconstruction_loss=reconstruction_loss, **kwargs)
