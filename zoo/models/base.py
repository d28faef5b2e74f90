"""The common autoencoder API: encode, decode, reconstruct, and a train_step that logs each loss term."""

import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from zoo.errors import InputShapeError

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


def _multi_worker():
    strategy = tf.distribute.get_strategy()
    extended = getattr(strategy, "extended", None)
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and bool(
        getattr(extended, "_in_multi_worker_mode", lambda: False)())


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
        if sampler is not None:
            code = sampler(code)
        outputs = decoder(code)
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
        z = self.sampler(code, training=training) if self.sampler is not None else code
        x_hat = self.decoder(z, training=training)
        terms = {"reconstruction_loss": self.reconstruction_error(x, x_hat)}
        terms.update(self.regularizers(x, code, training))
        return terms

    # --- Keras training loop ----------------------------------------------------------------
    @property
    def metrics(self):
        # Listed here so that Keras resets them at each epoch.
        return list(self._trackers)

    def _update_trackers(self, loss, terms):
        values = {"loss": loss, **terms}
        for tracker in self._trackers:
            tracker.update_state(values[tracker.name])
        logs = {tracker.name: tracker.result() for tracker in self._trackers}
        if _multi_worker():
            # Keras 3 reduces logs across workers with strategy.reduce("MEAN", v, axis=0), which fails
            # on scalars ("Invalid reduction dimension 0", tensorflow/tensorflow#72388). Shape (1,)
            # reduces to the same scalar.
            logs = {name: ops.reshape(value, (1,)) for name, value in logs.items()}
        return logs

    @staticmethod
    def _images(data):
        # Datasets may yield (x,), (x, y) or (x, y, sample_weight); the target is always x itself.
        return data[0] if isinstance(data, (tuple, list)) else data

    def train_step(self, data):
        x = self._images(data)
        with tf.GradientTape() as tape:
            terms = self.compute_loss_terms(x, training=True)
            loss = sum(terms.values())
            # Under tf.distribute each replica sees its share of the global batch and gradients
            # are summed across replicas, so the per-replica loss is divided by their number.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = self.optimizer.scale_loss(loss / replicas)
        grads = tape.gradient(scaled, self.trainable_weights)
        self.optimizer.apply(grads, self.trainable_weights)
        return self._update_trackers(loss, terms)

    def test_step(self, data):
        x = self._images(data)
        terms = self.compute_loss_terms(x, training=False)
        return self._update_trackers(sum(terms.values()), terms)

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
