"""Deep autoencoder: a configurable Dense stack (Hinton & Salakhutdinov, Science 2006)."""

from zoo.models.base import Autoencoder
from zoo.models.blocks import dense_decoder, dense_encoder
from zoo.registry import register


@register("deep_ae", "Deep autoencoder: Dense stack 784-1000-500-250-30 by default; the decoder need not mirror it.")
class DeepAE(Autoencoder):
    #: Variational subclasses give the encoder two heads, z_mean and z_log_var.
    variational = False

    def __init__(self, input_shape=(28, 28, 1), latent_dim=30, hidden_units=(1000, 500, 250), decoder_units=None,
                 activation="relu", output_activation="sigmoid", reconstruction_loss="mse", **kwargs):
        hidden_units = tuple(int(u) for u in hidden_units)
        # The decoder mirrors the encoder unless told otherwise: symmetry is not necessary.
        decoder_units = tuple(reversed(hidden_units)) if decoder_units is None else tuple(int(u) for u in decoder_units)
        # === Layers ===
        encoder = dense_encoder(input_shape, hidden_units, latent_dim, activation, variational=self.variational)
        decoder = dense_decoder(input_shape, decoder_units, latent_dim, activation, output_activation)
        # === Graph ===
        super().__init__(encoder, decoder, input_shape=input_shape, latent_dim=latent_dim,
                         reconstruction_loss=reconstruction_loss, **kwargs)
        # === Config ===
        self.hidden_units = hidden_units
        self.decoder_units = decoder_units
        self.activation = activation
        self.output_activation = output_activation

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_units": list(self.hidden_units),
            "decoder_units": list(self.decoder_units),
            "activation": self.activation,
            "output_activation": self.output_activation,
        }
