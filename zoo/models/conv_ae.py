"""Convolutional autoencoder: strided Conv2D down, Conv2DTranspose ("deconvolution") up.

Optionally (`contrastive_weight` > 0) the code is also trained to tell images apart: an InfoNCE term (SimCLR's
NT-Xent, Chen et al. 2020) between the code of each training image and the code of a randomly shifted and
mirrored copy of it, against the other images of the batch. The reconstruction loss is unchanged; the term acts
only in training, so validation losses and exported graphs are those of the plain autoencoder.
"""

import keras
from keras import ops

from zoo.models.base import Autoencoder
from zoo.models.blocks import conv_decoder, conv_encoder
from zoo.registry import register


@register("conv_ae", "Convolutional autoencoder: strided Conv2D encoder, Conv2DTranspose decoder; 28x28x1 or 32x32x3.")
class ConvAE(Autoencoder):
    variational = False

    def __init__(self, input_shape=(28, 28, 1), latent_dim=30, filters=(32, 64), kernel_size=3, activation="relu",
                 output_activation="sigmoid", reconstruction_loss="mse", dense_units=(), convs_per_stage=1,
                 residual=False, contrastive_weight=0.0, contrastive_temperature=0.2, contrastive_shift=0.1,
                 **kwargs):
        contrastive = _check_contrastive(contrastive_weight, contrastive_temperature, contrastive_shift)
        if contrastive[0] and self.variational:
            raise ValueError("contrastive_weight applies to a deterministic code; {} has a variational one. Leave "
                             "contrastive_weight at 0.".format(type(self).__name__))
        if contrastive[0]:
            # Set before the graph is built: the base class adds the regularizer layer only for named terms.
            self.regularizer_terms = tuple(type(self).regularizer_terms) + ("contrastive_loss",)
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
        self.contrastive_weight, self.contrastive_temperature, self.contrastive_shift = contrastive
        self.views = None
        if self.contrastive_weight:
            # The second view of each image: shifted by up to contrastive_shift of its size (empty border) and
            # mirrored left-right half of the time. Built here, so that its seed state exists before training.
            self.views = keras.Sequential([
                keras.layers.RandomTranslation(self.contrastive_shift, self.contrastive_shift, fill_mode="constant"),
                keras.layers.RandomFlip("horizontal"),
            ], name="contrastive_views")
            self.views.build((None,) + tuple(input_shape))

    def regularizers(self, x, code, training):
        terms = {}
        if self.contrastive_weight:
            if training:
                other = self.encoder(self.views(x, training=True), training=True)
                value = self.contrastive_weight * info_nce(code, other, self.contrastive_temperature)
            else:
                value = ops.zeros((), "float32")
            terms["contrastive_loss"] = value
        return terms

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
            "contrastive_weight": self.contrastive_weight,
            "contrastive_temperature": self.contrastive_temperature,
            "contrastive_shift": self.contrastive_shift,
        }


def _check_contrastive(weight, temperature, shift):
    weight, temperature, shift = float(weight), float(temperature), float(shift)
    if not weight >= 0:
        raise ValueError("contrastive_weight must be >= 0 (0 turns the contrastive term off); got {!r}.".format(weight))
    if not temperature > 0:
        raise ValueError("contrastive_temperature must be > 0, e.g. 0.2; got {!r}.".format(temperature))
    if not 0 <= shift < 0.5:
        raise ValueError("contrastive_shift is the largest shift as a fraction of the image size and must be in "
                         "[0, 0.5), e.g. 0.1; got {!r}.".format(shift))
    return weight, temperature, shift


def info_nce(a, b, temperature):
    """Symmetric InfoNCE (NT-Xent) of two batches of codes: row i of `a` and row i of `b` are two views of one
    image, every other row of the batch a negative. Cosine similarity over `temperature`; in nats per pair."""
    a = ops.cast(a, "float32")
    b = ops.cast(b, "float32")
    a = a / ops.sqrt(ops.sum(ops.square(a), axis=-1, keepdims=True) + 1e-12)
    b = b / ops.sqrt(ops.sum(ops.square(b), axis=-1, keepdims=True) + 1e-12)
    logits = ops.matmul(a, ops.transpose(b)) / temperature
    positive = ops.diagonal(logits)
    return 0.5 * ops.mean(ops.logsumexp(logits, axis=1) - positive) + 0.5 * ops.mean(
        ops.logsumexp(logits, axis=0) - positive)
