"""Train a preset: `python -m zoo.train dae_mnist` leaves a self-describing run dir.

runs/<preset>/: model.keras, config.json, history.csv, metrics.json, reconstructions.png.
An interrupted run resumes from its last epoch when started again with the same settings.
"""

import argparse
import csv
import io
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import zoo
from zoo import checkpoint, data, fileio, figures, metrics
from zoo.errors import ZooError, run_cli
from zoo.presets import PRESETS, get_preset, list_presets
from zoo.registry import constructor_arguments

NORMALIZATION = "float32 in [0, 1], NHWC"
BACKUP_DIR = ".backup"  # checkpoints of the run in progress (zoo.checkpoint)
LEGACY_PARTIAL_HISTORY = ".history.partial.csv"  # written by aezoo 0.1; removed when found
EVAL_SEED = 2024  # noise for the denoising metrics is drawn the same way for every run


STRATEGIES = ("default", "mirrored", "multiworker")
TF_CONFIG_EXAMPLE = (
    'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}\'')


class TrainingDiverged(ZooError):
    pass


def make_strategy(name):
    """The tf.distribute strategy for `--strategy`; create it before any other TensorFlow work."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        # All visible GPUs of this host (or the CPU when there are none), gradients all-reduced.
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if not os.environ.get("TF_CONFIG"):
            raise ZooError("--strategy multiworker reads the cluster from the TF_CONFIG variable, which is not set. "
                           "Set it on every host, e.g. {}, with index 0, 1, ... per host.".format(TF_CONFIG_EXAMPLE))
        try:
            json.loads(os.environ["TF_CONFIG"])
        except ValueError as exc:
            raise ZooError("TF_CONFIG is not valid JSON ({}); expected e.g. {}".format(exc, TF_CONFIG_EXAMPLE))
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ZooError("--strategy must be one of {}; got {!r}.".format(", ".join(STRATEGIES), name))


def is_chief(strategy):
    """The worker that writes the run dir: the chief, else worker 0, else the only process."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def library_versions():
    import tensorflow_datasets as tfds

    return {
        "aezoo": zoo.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tensorflow_datasets": tfds.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


MAX_SEED = 2 ** 32 - 1  # numpy's and TensorFlow's seeding accept 0..2**32-1


def resolve(preset, epochs=None, batch_size=None, lr=None, seed=None, limit=None):
    """The training settings: the preset's, overridden by what the caller gave."""
    settings = {
        "epochs": preset.epochs if epochs is None else int(epochs),
        "batch_size": preset.batch_size if batch_size is None else int(batch_size),
        "learning_rate": preset.learning_rate if lr is None else float(lr),
        "seed": preset.seed if seed is None else int(seed),
        "limit": None if limit is None else int(limit),
    }
    for key in ("epochs", "batch_size", "limit"):
        if settings[key] is not None and settings[key] < 1:
            raise ZooError("--{} must be at least 1; got {}.".format(key.replace("_", "-"), settings[key]))
    if not (math.isfinite(settings["learning_rate"]) and settings["learning_rate"] > 0):
        raise ZooError("--lr must be a positive finite number, e.g. 1e-3; got {}.".format(settings["learning_rate"]))
    if not 0 <= settings["seed"] <= MAX_SEED:
        raise ZooError("--seed must be between 0 and {}; got {}.".format(MAX_SEED, settings["seed"]))
    return settings


def build_model(preset, seed):
    config = dict(preset.model_config)
    if "seed" in constructor_arguments(preset.model):
        config["seed"] = seed  # noise and sampling draws follow the run's seed
    return zoo.build(preset.model, **config)


class _StopOnNaN(keras.callbacks.Callback):
    """Like TerminateOnNaN, but remembers where, so the run can fail with a useful message."""

    def __init__(self):
        super().__init__()
        self.bad_epoch = None

    def on_epoch_end(self, epoch, logs=None):
        if logs and not np.isfinite(logs.get("loss", 0.0)):
            self.bad_epoch = epoch
            self.model.stop_training = True

    def on_train_batch_end(self, batch, logs=None):
        if logs and not np.isfinite(logs.get("loss", 0.0)):
            self.model.stop_training = True
            self.bad_epoch = -1


RUN_FILES = ("metrics.json", "model.keras", "config.json", "history.csv", "reconstructions.png")
COMPLETE = "metrics.json"  # written last: its presence marks a finished run


def _run_state(out):
    """What `out` holds: "new" (missing or empty), "complete", "interrupted", "started" (a run that had not
    finished an epoch), or "foreign" (files aezoo did not write)."""
    if not out.exists():
        return "new"
    if not out.is_dir():
        return "foreign"
    names = {p.name for p in out.iterdir()} - {fileio.FolderLock.NAME}  # a lock alone: a writer just began
    if not names:
        return "new"
    if COMPLETE in names and "config.json" in names:
        return "complete"
    if BACKUP_DIR in names:
        return "interrupted"
    if fileio.marker_kind(out) == "run":
        return "started"
    return "foreign"


def _check_out(out, overwrite):
    """Refuse an --out that would lose something, before any work is done."""
    state = _run_state(out)
    if state == "foreign":
        raise fileio.OutputFolderError(
            "{} already holds files that aezoo did not write; choose an empty or new --out.".format(out))
    if state == "complete" and not overwrite:
        raise fileio.OutputFolderError(
            "{} holds a finished run ({}); pass --overwrite to train again into it, or choose another --out."
            .format(out, _describe_run(out)))
    return state


def _describe_run(out):
    try:
        config = json.loads((out / "config.json").read_text())
        return "preset {}, {} epochs".format(config.get("preset"), config.get("training", {}).get("epochs"))
    except (OSError, ValueError, AttributeError):
        return "its config.json is unreadable"


def _clear_old_run(out):
    """Remove a previous run's files, the completion marker first and its export next, so that a crash
    part-way never leaves a folder that looks complete but mixes two models."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
        if name == COMPLETE:
            export_dir = out / "export"
            if export_dir.is_dir():
                shutil.rmtree(export_dir)
    shutil.rmtree(out / BACKUP_DIR, ignore_errors=True)
    (out / LEGACY_PARTIAL_HISTORY).unlink(missing_ok=True)


def _check_resume(out, run_key):
    """A backup from other settings would resume the wrong run: refuse rather than mix them."""
    key_file = out / BACKUP_DIR / "run_key.json"
    if (out / BACKUP_DIR).exists():
        try:
            previous = json.loads(key_file.read_text()) if key_file.exists() else None
        except (OSError, ValueError):
            previous = "unreadable"
        if previous != run_key:
            raise ZooError(
                "{} holds an interrupted run with other settings ({}). Start it again with those settings to "
                "resume, or pass --overwrite (or choose another --out) to start afresh.".format(out, previous))
        fileio.remove_partials(out / BACKUP_DIR)
        return True
    (out / BACKUP_DIR).mkdir(parents=True)
    fileio.write_json(key_file, run_key)
    return False


def evaluate(model, images):
    """Test-set metrics; denoising models also report PSNR of noisy input and denoised output."""
    recon = model.reconstruct(images)
    result = metrics.reconstruction_metrics(images, recon)
    noisy = None
    if getattr(model, "corruption", None) is not None:
        noisy = keras.ops.convert_to_numpy(
            zoo.models.apply_noise(images, model.noise, model.noise_level, seed=EVAL_SEED))
        result.update(metrics.denoising_metrics(images, noisy, model.reconstruct(noisy)))
        result["noise"] = {"kind": model.noise, "level": model.noise_level}
    return result, recon, noisy


def save_figure(path, model, images, recon, noisy, title):
    n = 10
    rows = [("original", images[:n])]
    if noisy is not None:
        rows += [("noisy", noisy[:n]), ("denoised", model.reconstruct(noisy[:n]))]
    rows.append(("reconstruction", recon[:n]))
    if hasattr(model, "sample"):
        samples = model.sample(3 * n, seed=EVAL_SEED)
        rows += [("sample" if i == 0 else "", samples[i * n:(i + 1) * n]) for i in range(3)]
    figures.image_rows(path, rows, title=title)


def train(preset, *, out=None, epochs=None, batch_size=None, lr=None, data_dir=None, seed=None, limit=None,
          verbose=1, callbacks=(), strategy="default", overwrite=False):
    """Train `preset` and write its run dir; returns the run dir's Path.

    `strategy` is "default" (one device), "mirrored" (this host's devices) or "multiworker"
    (hosts from TF_CONFIG), or a tf.distribute.Strategy. `batch_size` is the global batch, split
    across replicas; the learning rate is used as given (see README for the scaling rule).
    A run dir that holds a finished run is refused unless `overwrite`; one that holds an interrupted
    run with the same settings is resumed. One process at a time may write a run dir.
    """
    preset = get_preset(preset)
    settings = resolve(preset, epochs, batch_size, lr, seed, limit)
    if isinstance(strategy, str):
        strategy_name, strategy = strategy, make_strategy(strategy)
    else:
        strategy_name = type(strategy).__name__
    chief = is_chief(strategy)
    out = Path(out) if out is not None else Path("runs") / preset.name
    if chief:
        _check_out(out, overwrite)  # before any work, so a refusal costs nothing
    else:
        # Other workers compute the same steps but must not write where the chief writes.
        out = Path(tempfile.mkdtemp(prefix="aezoo-worker-"))

    keras.utils.set_random_seed(settings["seed"])
    splits = data.load(preset.dataset, batch_size=settings["batch_size"], seed=settings["seed"],
                       data_dir=data_dir, limit=settings["limit"])
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with fileio.FolderLock(out):
            state = _check_out(out, overwrite)  # again: another writer may have finished meanwhile
            if overwrite and state in ("complete", "interrupted"):
                _clear_old_run(out)
            fileio.write_marker(out, "run")
            fileio.remove_partials(out)
            (out / LEGACY_PARTIAL_HISTORY).unlink(missing_ok=True)
            return _train_locked(preset, settings, splits, out, chief, strategy, strategy_name, data_dir, verbose,
                                 callbacks)
    except BaseException:
        if created and out.is_dir() and checkpoint.read_state(out / BACKUP_DIR) is None \
                and not (out / COMPLETE).exists():
            shutil.rmtree(out, ignore_errors=True)  # nothing worth keeping: leave no empty or half-made folder
        raise


def _warn(message):
    print("warning: " + message, file=sys.stderr, flush=True)


def _train_locked(preset, settings, splits, out, chief, strategy, strategy_name, data_dir, verbose, callbacks):
    with strategy.scope():
        model = build_model(preset, settings["seed"])
        # Cosine decay to 1% over the whole run: the last epochs refine instead of bouncing around.
        schedule = keras.optimizers.schedules.CosineDecay(
            settings["learning_rate"], splits.steps_per_epoch * settings["epochs"], alpha=0.01)
        model.compile(optimizer=keras.optimizers.Adam(schedule))

    run_key = {"preset": preset.name, **settings, "data_source": splits.source, "strategy": strategy_name,
               "replicas": strategy.num_replicas_in_sync}
    resumed = _check_resume(out, run_key)
    with strategy.scope():
        state = checkpoint.restore(model, out / BACKUP_DIR, say=_warn)
    first_epoch = state["epoch"]
    if verbose:
        print("{} {}: {} ({} train / {} val / {} test images from {})".format(
            "Resuming after epoch {} of".format(first_epoch) if resumed else "Training", preset.name,
            preset.description, splits.num_train, splits.num_val, splits.num_test, splits.source), flush=True)

    nan_guard = _StopOnNaN()
    saver = checkpoint.Checkpoint(out / BACKUP_DIR, state)
    if first_epoch < settings["epochs"]:  # a run killed after its last epoch goes straight to the evaluation
        model.fit(splits.train(first_epoch, settings["epochs"]), steps_per_epoch=splits.steps_per_epoch,
                  initial_epoch=first_epoch, epochs=settings["epochs"], validation_data=splits.val,
                  verbose=verbose, shuffle=False, callbacks=[saver, nan_guard, *callbacks])
    if nan_guard.bad_epoch is not None:
        shutil.rmtree(out / BACKUP_DIR, ignore_errors=True)
        raise TrainingDiverged("Training {} diverged: the loss became NaN{}. Lower the learning rate "
                               "(--lr, now {}) and start again; nothing was written.".format(
                                   preset.name, "" if nan_guard.bad_epoch < 0 else " in epoch {}".format(
                                       nan_guard.bad_epoch + 1), settings["learning_rate"]))

    test_images = data.normalize(splits.test_images)
    result, recon, noisy = evaluate(model, test_images)

    # Each file is written whole or not at all; metrics.json goes last and marks a complete run. The
    # checkpoint stays until then, so an interruption here loses no epoch.
    with fileio.atomic_path(out / "model.keras") as tmp:
        model.save(tmp)
    config = {
        "preset": preset.name,
        "model": preset.model,
        "description": preset.description,
        "model_config": model.get_config(),
        "parameters": int(model.count_params()),
        "dataset": preset.dataset,
        "data_source": splits.source,
        "data_dir": None if data_dir is None else str(data_dir),
        "num_train": splits.num_train,
        "num_val": splits.num_val,
        "num_test": splits.num_test,
        "training": {**settings, "optimizer": "Adam, cosine decay to 1%", "global_batch_size": settings["batch_size"],
                     "strategy": strategy_name, "replicas": strategy.num_replicas_in_sync,
                     "per_replica_batch_size": settings["batch_size"] / strategy.num_replicas_in_sync,
                     "reconstruction_loss": model.reconstruction_loss, "resumed": resumed},
        "input_shape": list(model.image_shape),
        "latent_dim": model.latent_dim,
        "normalization": NORMALIZATION,
        "versions": library_versions(),
    }
    fileio.write_json(out / "config.json", config)
    fileio.write_text(out / "history.csv", history_csv(saver.state["history"]))
    save_figure(out / "reconstructions.png", model, test_images, recon, noisy,
                "{} (test set)".format(preset.name))
    fileio.write_json(out / COMPLETE, {
        "split": "test",
        "num_images": int(len(test_images)),
        "metrics": result,
        "units": {k: v for k, v in metrics.UNITS.items() if k in result},
        "timing": timing(saver.state["seconds"], splits.num_train),
    })
    shutil.rmtree(out / BACKUP_DIR, ignore_errors=True)
    if not chief:
        shutil.rmtree(out, ignore_errors=True)
        return None
    if verbose:
        shown = ", ".join("{}={:.4g}".format(k, v) for k, v in result.items() if isinstance(v, float))
        print("Test: {}\nRun dir: {}".format(shown, out), flush=True)
    return out


def history_csv(history):
    """Per-epoch logs in the layout of keras.callbacks.CSVLogger: epoch first, then the keys sorted."""
    keys = sorted({k for row in history for k in row} - {"epoch"})
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["epoch", *keys], lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return text.getvalue()


def timing(seconds, num_train):
    """Wall time per epoch, for the training-throughput figures in metrics.json."""
    if not seconds:
        return {}
    # The first epoch includes tracing; report the rest when there is one.
    steady = seconds[1:] or seconds
    per_epoch = float(np.median(steady))
    return {"epochs_timed": len(seconds), "seconds_per_epoch": per_epoch,
            # Other work on the machine slows training: the 5-minute load average says how busy it was.
            "load_average": os.getloadavg()[1],
            "first_epoch_seconds": float(seconds[0]), "train_images_per_second": num_train / per_epoch,
            "unit": "wall-clock seconds (median over epochs after the first); images/s over the train split"}


def _list_text():
    width = max(len(n) for n in PRESETS)
    return "\n".join("{}  {}".format(name.ljust(width), PRESETS[name].description) for name in list_presets())


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m zoo.train", description="Train an autoencoder preset.")
    parser.add_argument("preset", nargs="?", help="preset name, e.g. dae_mnist (see --list)")
    parser.add_argument("--list", action="store_true", help="list the presets with their descriptions")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float, help="peak learning rate (cosine decay follows)")
    parser.add_argument("--data-dir", help="folder with the four IDX files (or set ZOO_DATA_DIR)")
    parser.add_argument("--out", help="run dir (default runs/<preset>/)")
    parser.add_argument("--overwrite", action="store_true",
                        help="train afresh into an --out that holds a finished (or interrupted) run, replacing it")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--limit", type=int, help="use only the first N training images (smoke runs)")
    parser.add_argument("--strategy", choices=STRATEGIES, default="default",
                        help="tf.distribute: mirrored = this host's GPUs, multiworker = hosts from TF_CONFIG")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.list:
        print(_list_text())
        return 0
    if not args.preset:
        parser.error("name a preset to train, or --list to see them")

    def body():
        train(args.preset, out=args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
              data_dir=args.data_dir, seed=args.seed, limit=args.limit, verbose=0 if args.quiet else 1,
              strategy=args.strategy, overwrite=args.overwrite)
        return 0

    return run_cli(body, interrupted="Interrupted. Run the same command again to resume from the last finished epoch.")


if __name__ == "__main__":
    sys.exit(main())
