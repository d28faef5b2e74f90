"""Convolutional autoencoder: strided Conv2D down, Conv2DTranspose ("deconvolution") up."""

from zoo.models.base import Autoencoder
from zoo.models.blocks import conv_decoder, conv_encoder
from zoo.registry import register


@register("conv_ae", "Convolutional autoencoder: strided Conv2D encoder, Conv2DTranspose decoder; 28x28x1 or 32x32x3.")
class ConvAE(Autoencoder):
    variational = False

    def __init__(self, input_shape=(28, 28, 1), latent_dim=30, filters=(32, 64), kernel_size=3, activation="relu",
                 output_activation="sigmoid", reconstruction_loss="mse", dense_units=(), convs_per_stage=1,
                 residual=False, **kwargs):
        filters = tuple(int(f) for f in filters)
        dense_units = tuple(int(u) for u in dense_units)
        if any(u < 1 for u in dense_units):
            raise ValueError("dense_units must be positive layer widths, e.g. [512]; got {}".format(list(dense_units)))
        # === Layers ===
        depth = dict(dense_units=dense_units, convs_per_stage=convs_per_stage, residual=bool(residual))
        encoder = conv_encoder(input_shape, filters, latent_dim, activation, kernel_size=kernel_size,
                               variational=self.variational, **depth)
        decoder = conv_decoder(input_shape, filters, latent_dim, activation, output_activation,
                               kernel_size=kernel_size, **depth)
        # === Graph ===
        super().__init__(encoder, decoder, input_shape=input_shape, latent_dim=latent_dim,
                         reconstruction_loss=reconstruction_loss, **kwargs)
        # === Config ===
        self.filters = filters
        self.dense_units = dense_units
        self.convs_per_stage = int(convs_per_stage)
        self.residual = bool(residual)
        self.kernel_size = int(kernel_size)
        self.activation = activation
        self.output_activation = output_activation

    def get_config(self):
        return {
            **super().get_config(),
            "filters": list(self.filters),
            "dense_units": list(self.dense_units),
            "convs_per_stage": self.convs_per_stage,
            "residual": self.residual,
            "kernel_size": self.kernel_size,
            "activation": self.activation,
            "output_activation": self.output_activation,
        }
