"""The common autoencoder API: encode, decode, reconstruct, and a loss that logs each term.

The loss lives in Keras' backend-neutral `compute_loss` hook, so Keras' own train_step trains every
family on TensorFlow, JAX and PyTorch alike; only keras.ops here.
"""

import math

import keras
import numpy as np
from keras import ops

from zoo.errors import InputShapeError
from zoo.models.blocks import InputCentering

RECONSTRUCTION_LOSSES = ("mse", "bce")
_EPSILON = 1e-7


def reconstruction_error(x, x_hat, kind):
    """Per-image sum over pixels, averaged over the batch (the unit of Hinton & Salakhutdinov 2006).

    `mse` is the squared error ||x - x_hat||^2; `bce` the cross-entropy of pixel intensities read
    as bit probabilities. Summing per image keeps the KL and penalty weights on a familiar scale.
    """
    x = ops.cast(x, "float32")
    x_hat = ops.cast(x_hat, "float32")
    axes = tuple(range(1, len(x.shape)))
    if kind == "mse":
        per_image = ops.sum(ops.square(x - x_hat), axis=axes)
    else:
        p = ops.clip(x_hat, _EPSILON, 1.0 - _EPSILON)
        per_image = -ops.sum(x * ops.log(p) + (1.0 - x) * ops.log(1.0 - p), axis=axes)
    return ops.mean(per_image)


def check_batch(x, expected_shape, what):
    """Raise InputShapeError unless `x` is a batch of arrays shaped `expected_shape`."""
    shape = tuple(x.shape)
    expected_shape = tuple(expected_shape)
    if len(shape) == len(expected_shape) + 1 and all(
        given is None or given == want for given, want in zip(shape[1:], expected_shape)
    ):
        return
    wanted = "(batch, {})".format(", ".join(str(d) for d in expected_shape))
    hint = ""
    if shape == expected_shape:
        hint = " Add a batch axis, e.g. x[None]."
    elif len(shape) >= 2 and shape[1:] and math.prod(d or 0 for d in shape[1:]) == math.prod(expected_shape):
        hint = " Reshape it: x.reshape((-1,) + {}).".format(expected_shape)
    raise InputShapeError("{} must have shape {}; got shape {}.{}".format(what, wanted, shape, hint))


class _RegularizerTerms(keras.layers.Layer):
    """Adds a family's regularizer terms (computed from the clean input and the code) with add_loss and
    passes the code on. The terms reach `compute_loss` through `model.losses` on every backend, from
    the same forward pass that made the reconstruction."""

    def __init__(self, terms, **kwargs):
        super().__init__(**kwargs)
        self._terms = terms  # (x, code, training) -> {name: scalar}; a plain function, not tracked

    def call(self, inputs, training=False):
        x, code = inputs
        for value in self._terms(x, code, training).values():
            self.add_loss(value)
        return code

    def compute_output_spec(self, inputs, training=False):
        # The graph is built inside the model's __init__, before the family has set what its terms read.
        return keras.tree.map_structure(lambda t: keras.KerasTensor(t.shape, dtype=t.dtype), inputs[1])


class _ScaleForReplicas(keras.losses.Loss):
    """The identity, through keras.losses.Loss: under tf.distribute, Keras' Loss divides by the number
    of replicas (gradients are summed across them), as it does for the losses given to compile()."""

    def __init__(self):
        super().__init__(name="scale_for_replicas", reduction="sum")

    def call(self, y_true, y_pred):
        return y_pred


def as_vector_logs(logs):
    """Each log with shape (1,) instead of a scalar, for Autoencoder.vector_logs (tf.distribute multi-worker)."""
    return {k: ops.reshape(v, (1,)) for k, v in logs.items()}


def _decoder_input(code, sampler, encoder_outputs, training=False):
    """What the decoder reads of the encoder's outputs: the sampler's draw, or the first output (the others, such as
    a VQ-VAE's code indices, are not decoded)."""
    if sampler is not None:
        return sampler(code, training=training)
    return code[0] if len(encoder_outputs) > 1 else code


def _as_batch(x):
    if isinstance(x, (list, tuple)):
        x = np.asarray(x, dtype="float32")
    return x


class Autoencoder(keras.Model):
    """Base of every family: a functional keras.Model image -> reconstruction.

    Subclasses build `encoder` and `decoder` (keras.Models) and pass them here. Optional layers
    sit in the graph where the lecture puts them: `corruption` before the encoder (denoising),
    `sampler` between encoder and decoder (variational). Both act only when `training=True`, so
    `call(x)` is deterministic.
    """

    #: Names of the loss terms besides `reconstruction_loss`; each is logged on its own.
    regularizer_terms = ()
    #: Names of the encoder's outputs, in order; the exported encoder has the same. The decoder reads the first,
    #: unless a sampler makes one code of them all (z_mean, z_log_var).
    encoder_outputs = ("latent",)
    #: Return each log with shape (1,) instead of a scalar. Keras 3 reduces logs across workers with
    #: strategy.reduce("MEAN", v, axis=0), which fails on scalars under tf.distribute's
    #: MultiWorkerMirroredStrategy ("Invalid reduction dimension 0", tensorflow/tensorflow#72388); zoo.training
    #: sets this there. Shape (1,) reduces to the same value.
    vector_logs = False

    def rows_per_call(self, role):
        """Images one inference call of the exported `role` ("encoder", "decoder", "autoencoder") should take at
        most, or None for export.runtime's default; the exporter records it in the file (aezoo.rows_per_call)."""
        return None

    def __init__(self, encoder, decoder, *, input_shape, latent_dim, reconstruction_loss="mse",
                 corruption=None, sampler=None, **kwargs):
        if reconstruction_loss not in RECONSTRUCTION_LOSSES:
            raise ValueError("reconstruction_loss must be one of {}; got {!r}.".format(
                RECONSTRUCTION_LOSSES, reconstruction_loss))
        input_shape = tuple(int(d) for d in input_shape)

        # === Functional graph ===
        inputs = keras.Input(shape=input_shape, name="image")
        x = corruption(inputs) if corruption is not None else inputs
        code = encoder(x)
        if type(self).regularizers is not Autoencoder.regularizers:
            terms = _RegularizerTerms(lambda x, c, training: self.regularizers(x, c, training), name="regularizers")
            code = terms([inputs, code])
        outputs = decoder(_decoder_input(code, sampler, self.encoder_outputs))
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Attributes ===
        self.encoder = encoder
        self.decoder = decoder
        self.corruption = corruption
        self.sampler = sampler
        self.image_shape = input_shape
        self.latent_dim = int(latent_dim)
        self.reconstruction_loss = reconstruction_loss
        self._trackers = [keras.metrics.Mean(name=name)
                          for name in ("loss", "reconstruction_loss") + tuple(self.regularizer_terms)]
        self._scale = _ScaleForReplicas()

    # --- the common API -------------------------------------------------------------------
    def encode(self, images, batch_size=256):
        """Codes of a batch of images (NHWC float32 in [0, 1]) as a numpy array."""
        images = _as_batch(images)
        check_batch(images, self.image_shape, "images")
        return self.encoder.predict(images, batch_size=batch_size, verbose=0)

    def decode(self, latents, batch_size=256):
        """Images decoded from a batch of codes, as a numpy array."""
        latents = _as_batch(latents)
        check_batch(latents, (self.latent_dim,), "latents")
        return self.decoder.predict(latents, batch_size=batch_size, verbose=0)

    def reconstruct(self, images, batch_size=256):
        """decode(encode(images)), deterministically."""
        images = _as_batch(images)
        check_batch(images, self.image_shape, "images")
        return self.predict(images, batch_size=batch_size, verbose=0)

    @property
    def code_kind(self):
        """What the code is, for zoo.metrics.code_health: 'gaussian' for a variational latent, else the name of
        the code layer's activation ('sigmoid', 'relu', 'linear', ...)."""
        if self.sampler is not None:
            return "gaussian"
        layer = next((layer for layer in self.encoder.layers if layer.name == "code"), None)
        return getattr(getattr(layer, "activation", None), "__name__", "linear")

    # --- data-dependent statistics --------------------------------------------------------------
    def adapt(self, images, batch_size=8192):
        """Set the statistics the model takes from its training images (the mean image of an InputCentering
        layer) before training; zoo.training calls it before fit, on a fresh and a resumed run alike. `images`
        are float images in [0, 1] or uint8 ones (read as pixel / 255, like zoo.data.normalize). Returns the
        names of the layers it set (none for a model without such statistics)."""
        centering = [layer for layer in self.encoder.layers if isinstance(layer, InputCentering)]
        if not centering:
            return []
        images = np.asarray(images) if isinstance(images, (list, tuple)) else images
        check_batch(images, self.image_shape, "images")
        total = np.zeros(self.image_shape, np.float64)
        for start in range(0, len(images), batch_size):
            total += np.sum(np.asarray(images[start:start + batch_size], np.float64), axis=0)
        mean = total / max(len(images), 1) / (255.0 if images.dtype == np.uint8 else 1.0)
        for layer in centering:
            layer.adapt(mean)
        return [layer.name for layer in centering]

    # --- losses -----------------------------------------------------------------------------
    def reconstruction_error(self, x, x_hat):
        return reconstruction_error(x, x_hat, self.reconstruction_loss)

    def regularizers(self, x, code, training):
        """Extra loss terms {name: scalar} computed from the inputs and the code."""
        return {}

    def compute_loss_terms(self, x, training=False):
        """{term name: scalar}; the training loss is their sum. The target is always the clean x."""
        x_in = self.corruption(x, training=training) if self.corruption is not None else x
        code = self.encoder(x_in, training=training)
        x_hat = self.decoder(_decoder_input(code, self.sampler, self.encoder_outputs, training), training=training)
        terms = {"reconstruction_loss": self.reconstruction_error(x, x_hat)}
        terms.update(self.regularizers(x, code, training))
        return terms

    # --- Keras training loop ----------------------------------------------------------------
    @property
    def metrics(self):
        # Listed here so that Keras resets them at each epoch and reports them as the logs.
        return list(self._trackers)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The sum of the terms, each tracked on its own. The target is always the clean input x; y_pred
        is the model's output for x (corrupted and sampled in training) and `self.losses` holds the
        regularizer terms that forward pass added, in the order of `regularizer_terms`."""
        terms = {"reconstruction_loss": self.reconstruction_error(x, y_pred)}
        added = self.losses
        if len(added) != len(self.regularizer_terms):
            raise ValueError("{} added {} losses in its forward pass but names {} ({}); a layer with its own "
                             "regularizer would be summed under the wrong name.".format(
                                 self.registry_name, len(added), len(self.regularizer_terms), self.regularizer_terms))
        terms.update(zip(self.regularizer_terms, added))
        loss = sum(terms.values())
        for tracker in self._trackers:
            tracker.update_state(loss if tracker.name == "loss" else terms[tracker.name])
        return self._scale(loss, loss)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        logs = super().compute_metrics(x, y, y_pred, sample_weight)
        return as_vector_logs(logs) if self.vector_logs else logs

    # --- config -----------------------------------------------------------------------------
    def get_config(self):
        # Exactly the constructor arguments, so from_config(get_config()) rebuilds the model.
        return {
            "name": self.name,
            "input_shape": list(self.image_shape),
            "latent_dim": self.latent_dim,
            "reconstruction_loss": self.reconstruction_loss,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
