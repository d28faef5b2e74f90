"""Encoder and decoder builders shared by the families: dense stacks and strided convolutions."""

import math

import keras
import numpy as np
from keras import layers, ops


@keras.saving.register_keras_serializable(package="aezoo")
class InputCentering(keras.layers.Layer):
    """x - the mean training image, a non-trainable weight (`input_mean`) that Autoencoder.adapt sets before
    training; it is saved with the weights and exported inside the encoder.

    Pixels are all >= 0, so without it every gradient of a code unit's weights has the sign of that unit's
    error and Adam moves all 784 weights the same way: the pre-activation jumps by about lr * sum(x) per step,
    and sigmoid codes saturate in the first epoch (LeCun et al., Efficient BackProp, 1998, section 4.3)."""

    def build(self, input_shape):
        self.input_mean = self.add_weight(shape=tuple(input_shape[1:]), initializer="zeros", trainable=False,
                                          name="input_mean")

    def call(self, inputs):
        return inputs - ops.cast(self.input_mean, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def adapt(self, mean_image):
        self.input_mean.assign(np.reshape(np.asarray(mean_image, "float32"), self.input_mean.shape))


def _code_heads(x, latent_dim, code_activation, variational):
    """One code layer, or the Gaussian posterior's two heads for a variational encoder."""
    if variational:
        return [layers.Dense(latent_dim, name="z_mean")(x), layers.Dense(latent_dim, name="z_log_var")(x)]
    return layers.Dense(latent_dim, activation=code_activation, name="code")(x)


def dense_encoder(input_shape, hidden_units, latent_dim, activation, code_activation=None, variational=False,
                  center=False, name="encoder"):
    """Flatten, optionally subtract the mean training image (InputCentering), a stack of Dense layers, then the
    code layer (`code`, or `z_mean` and `z_log_var`)."""
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Flatten(name="flatten")(inputs)
    if center:
        x = InputCentering(name="centering")(x)
    for i, units in enumerate(hidden_units):
        x = layers.Dense(units, activation=activation, name="dense_{}".format(i))(x)
    return keras.Model(inputs, _code_heads(x, latent_dim, code_activation, variational), name=name)


def dense_decoder(output_shape, hidden_units, latent_dim, activation, output_activation, name="decoder"):
    """A stack of Dense layers back to the image size, reshaped to `output_shape`."""
    inputs = keras.Input(shape=(latent_dim,), name="latent")
    x = inputs
    for i, units in enumerate(hidden_units):
        x = layers.Dense(units, activation=activation, name="dense_{}".format(i))(x)
    x = layers.Dense(math.prod(output_shape), activation=output_activation, name="pixels")(x)
    outputs = layers.Reshape(output_shape, name="reconstruction")(x)
    return keras.Model(inputs, outputs, name=name)


def check_conv_shape(input_shape, filters):
    """Strided stages halve the image; the decoder can only undo that for divisible sizes."""
    factor = 2 ** len(filters)
    height, width = input_shape[0], input_shape[1]
    if len(input_shape) != 3 or height % factor or width % factor:
        raise ValueError(
            "input_shape {} does not fit {} stride-2 stages: height and width must be divisible by {} "
            "(for example (28, 28, 1) or (32, 32, 3) with 2 stages). Use fewer `filters`.".format(
                tuple(input_shape), len(filters), factor
            )
        )


def check_conv_depth(convs_per_stage):
    if isinstance(convs_per_stage, bool) or not isinstance(convs_per_stage, (int, np.integer)) \
            or convs_per_stage < 1:
        raise ValueError("convs_per_stage must be an integer >= 1 (same-size convolutions after each strided one); "
                         "got {!r}".format(convs_per_stage))
    return int(convs_per_stage)


def _same_size_convs(x, f, kernel_size, activation, stage, convs_per_stage, residual):
    """`convs_per_stage` same-size Conv2D layers (conv_<stage>, conv_<stage>_1, ...), each added to its input when
    `residual` (x + relu(conv(x)): the stage can deepen without losing what the strided layer passed on)."""
    for j in range(convs_per_stage):
        name = "conv_{}".format(stage) + ("_{}".format(j) if j else "")
        y = layers.Conv2D(f, kernel_size, padding="same", activation=activation, name=name)(x)
        x = layers.Add(name=name + "_residual")([x, y]) if residual else y
    return x


def conv_encoder(input_shape, filters, latent_dim, activation, kernel_size=3, code_activation=None,
                 variational=False, dense_units=(), convs_per_stage=1, residual=False, name="encoder"):
    """Strided Conv2D stages (each followed by `convs_per_stage` same-size Conv2D layers, residual or not),
    flattened, through `dense_units` hidden Dense layers (none by default), into the code."""
    check_conv_shape(input_shape, filters)
    convs_per_stage = check_conv_depth(convs_per_stage)
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for i, f in enumerate(filters):
        x = layers.Conv2D(f, kernel_size, strides=2, padding="same", activation=activation, name="down_{}".format(i))(x)
        x = _same_size_convs(x, f, kernel_size, activation, i, convs_per_stage, residual)
    x = layers.Flatten(name="flatten")(x)
    for i, units in enumerate(dense_units):
        x = layers.Dense(units, activation=activation, name="fc_{}".format(i))(x)
    return keras.Model(inputs, _code_heads(x, latent_dim, code_activation, variational), name=name)


def conv_decoder(output_shape, filters, latent_dim, activation, output_activation, kernel_size=3, dense_units=(),
                 convs_per_stage=1, residual=False, name="decoder"):
    """The code through `dense_units` hidden Dense layers in reverse (the encoder's mirror), Dense to a small
    feature map, then Conv2DTranspose ("deconvolution") stages back up, each followed by `convs_per_stage`
    same-size Conv2D layers."""
    check_conv_shape(output_shape, filters)
    convs_per_stage = check_conv_depth(convs_per_stage)
    factor = 2 ** len(filters)
    small = (output_shape[0] // factor, output_shape[1] // factor, filters[-1])
    inputs = keras.Input(shape=(latent_dim,), name="latent")
    x = inputs
    for i, units in enumerate(reversed(tuple(dense_units))):
        x = layers.Dense(units, activation=activation, name="fc_{}".format(i))(x)
    x = layers.Dense(math.prod(small), activation=activation, name="project")(x)
    x = layers.Reshape(small, name="unflatten")(x)
    for i, f in enumerate(reversed(filters)):
        x = layers.Conv2DTranspose(f, kernel_size, strides=2, padding="same", activation=activation,
                                   name="up_{}".format(i))(x)
        x = _same_size_convs(x, f, kernel_size, activation, i, convs_per_stage, residual)
    outputs = layers.Conv2D(output_shape[-1], kernel_size, padding="same", activation=output_activation,
                            name="reconstruction")(x)
    return keras.Model(inputs, outputs, name=name)
