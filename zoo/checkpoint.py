"""Crash-proof training checkpoints: a kill or a full disk at any moment never loses a finished epoch.

Keras' BackupAndRestore writes `latest.weights.h5` and its epoch file in place; with
`double_checkpoint=True` it first copies them, but the copies and the epoch file are plain
overwrites too, so a kill mid-write can leave a truncated file, or weights and an epoch number from
different epochs. Here each epoch's weights (model and optimizer) go to a new file under a temporary
name, renamed when whole; then one small JSON, `state.json`, renamed last, names the weights of the
last finished epoch and of the one before, with every finished epoch's logs and wall time. Weights,
epoch number and history therefore always agree, and the older file is deleted only after the
newer one is named.
"""

import json
import math
import time
from pathlib import Path

import keras

from zoo import fileio
from zoo.errors import ZooError

STATE = "state.json"
WEIGHTS_GLOB = "epoch-*.weights.h5"


class CheckpointError(ZooError):
    """No checkpoint of an interrupted run can be read."""


def _weights_name(epoch):
    return "epoch-{:04d}.weights.h5".format(epoch)


def empty_state():
    return {"epoch": 0, "weights": None, "seed_states": [], "history": [], "seconds": []}


def _truncated(state, epoch, weights, seed_states):
    """`state` as it was after `epoch` finished epochs (the history is cut to match)."""
    return {"epoch": epoch, "weights": weights, "seed_states": seed_states, "history": state["history"][:epoch],
            "seconds": state["seconds"][:epoch]}


def _seed_variables(model):
    # Keras does not save SeedGenerator states with the weights, yet the noise and sampling draws of
    # the next epoch depend on them: they are kept in state.json instead, in the model's variable order.
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def read_state(folder):
    """The saved state of `folder`, or None when no epoch has finished there."""
    path = Path(folder) / STATE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
        int(state["epoch"]), list(state["history"]), list(state["seconds"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError("The checkpoint index {} cannot be read ({}). Delete {} to start this run afresh, or "
                              "train with --overwrite.".format(path, exc, folder)) from None
    return state


def restore(model, folder, say=print):
    """Load the newest readable checkpoint in `folder` into `model` (weights and optimizer); returns its
    state, or an empty state when there is none. An unreadable newest checkpoint is reported in one line
    and the one before it is used."""
    folder = Path(folder)
    state = read_state(folder)
    if state is None or not state.get("weights"):
        return empty_state()
    candidates = [state] + ([state["previous"]] if state.get("previous") else [])
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    for candidate in candidates:
        epoch, weights, seed_states = candidate["epoch"], candidate["weights"], candidate.get("seed_states") or []
        if weights is None:  # the run's state before its first epoch: start from scratch
            return empty_state()
        try:
            model.load_weights(folder / weights)
        except Exception as exc:  # h5py raises OSError for a truncated file, Keras ValueError for a wrong one
            say("Checkpoint {} (epoch {}) cannot be read ({}: {}); trying the one before it.".format(
                folder / weights, epoch, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else ""))
            continue
        for variable, value in zip(_seed_variables(model), seed_states):
            variable.assign(value)
        return _truncated(state, epoch, weights, seed_states)
    raise CheckpointError("No checkpoint in {} can be read. Delete that folder to start this run afresh, or train "
                          "with --overwrite.".format(folder))


class Checkpoint(keras.callbacks.Callback):
    """Save weights and optimizer at the end of every finished epoch; see the module docstring."""

    def __init__(self, folder, state=None):
        super().__init__()
        self.folder = Path(folder)
        self.state = state or empty_state()
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._start
        logs = {k: float(v) for k, v in (logs or {}).items()}
        if not all(math.isfinite(v) for v in logs.values()):
            return  # a diverged epoch is not worth keeping; the NaN guard stops the run
        name = _weights_name(epoch + 1)
        with fileio.atomic_path(self.folder / name) as tmp:
            self.model.save_weights(tmp)
        previous = {k: self.state[k] for k in ("epoch", "weights", "seed_states")}
        seed_states = [keras.ops.convert_to_numpy(v).tolist() for v in _seed_variables(self.model)]
        state = {"epoch": epoch + 1, "weights": name, "seed_states": seed_states, "previous": previous,
                 "history": self.state["history"][:epoch] + [{"epoch": epoch, **logs}],
                 "seconds": self.state["seconds"][:epoch] + [seconds]}
        fileio.write_json(self.folder / STATE, state)
        self.state = state
        keep = {name, previous["weights"]}
        for path in self.folder.glob(WEIGHTS_GLOB):
            if path.name not in keep:
                path.unlink(missing_ok=True)
