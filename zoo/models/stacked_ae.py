"""Stacked autoencoder: the deep_ae stack pretrained greedily, one layer at a time, then fine-tuned end to end.

Hinton & Salakhutdinov (Science 2006) pretrained each layer as an RBM; here each layer is pretrained as a shallow
autoencoder, as in Bengio et al., "Greedy layer-wise training of deep networks" (NIPS 2007): encoder layer k and
its mirror in the decoder learn to reconstruct what the frozen layers below k make of the image.
"""

import inspect
import math
import time

import keras
import numpy as np
from keras import ops

from zoo.errors import ZooError
from zoo.models.base import _ScaleForReplicas, as_vector_logs, reconstruction_error
from zoo.models.deep_ae import DeepAE
from zoo.registry import register


class PretrainingDiverged(ZooError, FloatingPointError):
    """A layer's pretraining loss became NaN or infinite."""


class _Stage(keras.Model):
    """One greedy stage as a model Keras' own fit can train: the frozen layers below make the target, the stage's
    encoder layer and its mirror in the decoder reconstruct it. The layers are the big model's own objects, so the
    weights trained here are its weights."""

    def __init__(self, below, hidden, mirror, loss_kind, vector_logs=False, **kwargs):
        super().__init__(**kwargs)
        self.below = list(below)
        self.hidden = hidden
        self.mirror = mirror
        self.loss_kind = loss_kind
        self.vector_logs = vector_logs
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self._scale = _ScaleForReplicas()

    def call(self, x, training=False):
        for layer in self.below:
            x = layer(x, training=training)
        target = ops.stop_gradient(x)
        return target, self.mirror(self.hidden(target, training=training), training=training)

    @property
    def metrics(self):
        return [self.loss_tracker]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        target, reconstruction = y_pred
        loss = reconstruction_error(target, reconstruction, self.loss_kind)
        self.loss_tracker.update_state(loss)
        return self._scale(loss, loss)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        logs = super().compute_metrics(x, y, y_pred, sample_weight)
        return as_vector_logs(logs) if self.vector_logs else logs


@register("stacked_ae", "Stacked autoencoder: deep_ae's stack, greedy layer-wise pretraining, then fine-tuning.")
class StackedAE(DeepAE):
    """pretrain_epochs: epochs of each layer's greedy stage (0: none, the model is then a deep_ae);
    pretrain_learning_rate: the stages' Adam learning rate. `fit` pretrains first, once: the non-trainable weight
    `pretrained` (saved with the model) is set to 1 when the stages are done."""

    def __init__(self, pretrain_epochs=5, pretrain_learning_rate=1e-3, decoder_units=None, **kwargs):
        if isinstance(pretrain_epochs, bool) or not isinstance(pretrain_epochs, (int, np.integer)) \
                or pretrain_epochs < 0:
            raise ValueError("pretrain_epochs must be an integer >= 0 (epochs per layer; 0: no pretraining); got {!r}."
                             .format(pretrain_epochs))
        if isinstance(pretrain_learning_rate, bool) or not isinstance(pretrain_learning_rate, (int, float)) \
                or not (math.isfinite(pretrain_learning_rate) and pretrain_learning_rate > 0):
            raise ValueError("pretrain_learning_rate must be a positive finite number, e.g. 1e-3; got {!r}."
                             .format(pretrain_learning_rate))
        super().__init__(decoder_units=decoder_units, **kwargs)
        # Each encoder layer is pretrained with its mirror image in the decoder, so the decoder must mirror.
        if self.decoder_units != tuple(reversed(self.hidden_units)):
            raise ValueError("stacked_ae pairs each encoder layer with its mirror in the decoder, so decoder_units "
                             "must be hidden_units reversed ({}); got {}. Leave decoder_units out.".format(
                                 list(reversed(self.hidden_units)), list(self.decoder_units)))
        self.pretrain_epochs = int(pretrain_epochs)
        self.pretrain_learning_rate = float(pretrain_learning_rate)
        self.pretrained = self.add_weight(shape=(), initializer="zeros", trainable=False, name="pretrained")

    @property
    def needs_pretraining(self):
        """True until the greedy stages have run (never with pretrain_epochs=0)."""
        return self.pretrain_epochs > 0 and float(ops.convert_to_numpy(self.pretrained)) == 0.0

    def stages(self):
        """[(layers below, encoder layer, its mirror decoder layer)], bottom up: encoder layer k (dense_0 ..
        code) pairs with decoder layer L - k of (dense_0 .. dense_{L-1}, pixels)."""
        encoder = [layer for layer in self.encoder.layers if not isinstance(layer, keras.layers.InputLayer)]
        hidden = [layer for layer in encoder if isinstance(layer, keras.layers.Dense)]
        mirrors = [layer for layer in self.decoder.layers if isinstance(layer, keras.layers.Dense)][::-1]
        return [(encoder[:encoder.index(layer)], layer, mirror) for layer, mirror in zip(hidden, mirrors)]

    def pretrain(self, data_for_stage, steps_per_epoch=None, verbose=0, batch_size=None, shuffle=True):
        """Greedy layer-wise pretraining: each stage trains one encoder layer and its mirror for `pretrain_epochs`
        epochs, with the layers below frozen, then sets `pretrained` to 1.

        `data_for_stage` is what `fit` accepts (an array of images, a tf.data.Dataset, a PyDataset) or a callable
        stage index -> such data. The first stage's loss is the model's reconstruction_loss against the pixels,
        the others' the squared error summed per example. verbose: 0 silent; 1 Keras' progress bars and a line
        per stage; 2 a line per stage. Returns [{"layer", "epochs", "loss" (of the last epoch), "seconds"}] (none with
        pretrain_epochs=0). `batch_size` and `shuffle` are passed to each stage's fit.
        """
        if not self.pretrain_epochs:
            return []
        records = []
        stages = self.stages()
        for k, (below, hidden, mirror) in enumerate(stages):
            stage = _Stage(below, hidden, mirror, self.reconstruction_loss if k == 0 else "mse",
                           vector_logs=self.vector_logs, name="pretrain_{}".format(hidden.name))
            frozen = [(layer, layer.trainable) for layer in below]
            start = time.perf_counter()
            try:
                for layer, _ in frozen:
                    layer.trainable = False
                stage.compile(optimizer=keras.optimizers.Adam(self.pretrain_learning_rate))
                data = data_for_stage(k) if callable(data_for_stage) else data_for_stage
                history = stage.fit(data, batch_size=batch_size, epochs=self.pretrain_epochs,
                                    steps_per_epoch=steps_per_epoch, shuffle=shuffle, verbose=1 if verbose == 1 else 0,
                                    callbacks=[keras.callbacks.TerminateOnNaN()])
            finally:
                for layer, trainable in frozen:
                    layer.trainable = trainable
            losses = [float(np.ravel(v)[0]) for v in history.history.get("loss", [])]
            if not losses:
                raise ValueError("Pretraining layer {} of {} got no batches: the data for its stage is empty.".format(
                    hidden.name, self.registry_name))
            loss = losses[-1]
            if not math.isfinite(loss):
                raise PretrainingDiverged(
                    "Pretraining layer {} of {} diverged: its loss became {}. Lower pretrain_learning_rate (now {}), "
                    "e.g. --set pretrain_learning_rate={:g}, and start again.".format(
                        hidden.name, self.registry_name, loss, self.pretrain_learning_rate,
                        self.pretrain_learning_rate / 3))
            records.append({"layer": hidden.name, "epochs": self.pretrain_epochs, "loss": loss,
                            "seconds": round(time.perf_counter() - start, 2)})
            if verbose:
                print("pretrain {}/{}: {} {}-{}-{}, {} epoch{}, loss {:.4g} ({} per example), {:.1f}s".format(
                    k + 1, len(stages), hidden.name, hidden.kernel.shape[0], hidden.units, mirror.units,
                    self.pretrain_epochs, "" if self.pretrain_epochs == 1 else "s", loss, stage.loss_kind,
                    records[-1]["seconds"]), flush=True)
        self.pretrained.assign(1.0)
        return records

    def fit(self, x=None, *args, **kwargs):
        # Pretraining belongs to the model: whoever calls fit gets it, once (zoo.training pretrains first itself).
        if self.needs_pretraining:
            given = inspect.signature(keras.Model.fit).bind(self, x, *args, **kwargs)
            given.apply_defaults()
            given = given.arguments
            if inspect.isgenerator(x) or (hasattr(x, "__next__") and not isinstance(x, keras.utils.PyDataset)):
                raise ValueError("{} pretrains on fit's data once per layer, so it must be re-iterable (an array, a "
                                 "tf.data.Dataset, a keras.utils.PyDataset); got {}. Call model.pretrain(lambda stage: "
                                 "data) first, or build it with pretrain_epochs=0.".format(
                                     self.registry_name, type(x).__name__))
            data = x
            if given["validation_split"] and hasattr(x, "shape"):  # Keras holds out the last images
                data = x[:int(math.floor(len(x) * (1.0 - given["validation_split"])))]
            self.pretrain(data, steps_per_epoch=given["steps_per_epoch"], batch_size=given["batch_size"],
                          shuffle=given["shuffle"], verbose=1 if given["verbose"] == "auto" else given["verbose"])
        return super().fit(x, *args, **kwargs)

    def get_config(self):
        return {**super().get_config(), "pretrain_epochs": self.pretrain_epochs,
                "pretrain_learning_rate": self.pretrain_learning_rate}
