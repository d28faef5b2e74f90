"""Train a preset: `python -m zoo.train dae_mnist` leaves a self-describing run dir.

runs/<preset>/: model.keras, config.json, history.csv, metrics.json, reconstructions.png.
An interrupted run resumes from its last epoch when started again with the same settings.
"""

import argparse
import json
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
from zoo import data, fileio, figures, metrics
from zoo.errors import ZooError
from zoo.presets import PRESETS, get_preset, list_presets
from zoo.registry import constructor_arguments

NORMALIZATION = "float32 in [0, 1], NHWC"
BACKUP_DIR = ".backup"  # BackupAndRestore's checkpoint of the epoch in progress
PARTIAL_HISTORY = ".history.partial.csv"
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


def resolve(preset, epochs=None, batch_size=None, lr=None, seed=None, limit=None):
    """The training settings: the preset's, overridden by what the caller gave."""
    settings = {
        "epochs": preset.epochs if epochs is None else int(epochs),
        "batch_size": preset.batch_size if batch_size is None else int(batch_size),
        "learning_rate": preset.learning_rate if lr is None else float(lr),
        "seed": preset.seed if seed is None else int(seed),
        "limit": None if limit is None else int(limit),
    }
    for key in ("epochs", "batch_size"):
        if settings[key] < 1:
            raise ZooError("--{} must be at least 1; got {}.".format(key.replace("_", "-"), settings[key]))
    if not settings["learning_rate"] > 0:
        raise ZooError("--lr must be positive; got {}.".format(settings["learning_rate"]))
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


def _check_resume(out, run_key):
    """A backup from other settings would resume the wrong run: refuse rather than mix them."""
    key_file = out / BACKUP_DIR / "run_key.json"
    if (out / BACKUP_DIR).exists():
        previous = json.loads(key_file.read_text()) if key_file.exists() else None
        if previous != run_key:
            raise ZooError(
                "{} holds an interrupted run with other settings ({}). Start it again with those settings to "
                "resume, or delete {} (or choose another --out) to start afresh.".format(
                    out, previous, out / BACKUP_DIR))
        return True
    (out / BACKUP_DIR).mkdir(parents=True)
    fileio.write_json(key_file, run_key)
    (out / PARTIAL_HISTORY).unlink(missing_ok=True)
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
          verbose=1, callbacks=(), strategy="default"):
    """Train `preset` and write its run dir; returns the run dir's Path.

    `strategy` is "default" (one device), "mirrored" (this host's devices) or "multiworker"
    (hosts from TF_CONFIG), or a tf.distribute.Strategy. `batch_size` is the global batch, split
    across replicas; the learning rate is used as given (see README for the scaling rule).
    """
    preset = get_preset(preset)
    settings = resolve(preset, epochs, batch_size, lr, seed, limit)
    if isinstance(strategy, str):
        strategy_name, strategy = strategy, make_strategy(strategy)
    else:
        strategy_name = type(strategy).__name__
    chief = is_chief(strategy)
    out = Path(out) if out is not None else Path("runs") / preset.name
    if not chief:
        # Other workers compute the same steps but must not write where the chief writes.
        out = Path(tempfile.mkdtemp(prefix="aezoo-worker-"))
    out.mkdir(parents=True, exist_ok=True)

    keras.utils.set_random_seed(settings["seed"])
    splits = data.load(preset.dataset, batch_size=settings["batch_size"], seed=settings["seed"],
                       data_dir=data_dir, limit=settings["limit"])
    steps = -(-splits.num_train // settings["batch_size"])
    with strategy.scope():
        model = build_model(preset, settings["seed"])
        # Cosine decay to 1% over the whole run: the last epochs refine instead of bouncing around.
        schedule = keras.optimizers.schedules.CosineDecay(settings["learning_rate"], steps * settings["epochs"],
                                                          alpha=0.01)
        model.compile(optimizer=keras.optimizers.Adam(schedule))

    run_key = {"preset": preset.name, **settings, "data_source": splits.source, "strategy": strategy_name,
               "replicas": strategy.num_replicas_in_sync}
    resumed = _check_resume(out, run_key)
    if verbose:
        print("{} {}: {} ({} train / {} val / {} test images from {})".format(
            "Resuming" if resumed else "Training", preset.name, preset.description,
            splits.num_train, splits.num_val, splits.num_test, splits.source), flush=True)

    nan_guard = _StopOnNaN()
    timer = _EpochTimer()
    history_cb = keras.callbacks.CSVLogger(str(out / PARTIAL_HISTORY), append=True)
    model.fit(
        splits.train, validation_data=splits.val, epochs=settings["epochs"], verbose=verbose, shuffle=False,
        callbacks=[keras.callbacks.BackupAndRestore(str(out / BACKUP_DIR)), history_cb, nan_guard, timer,
                   *callbacks],
    )
    if nan_guard.bad_epoch is not None:
        shutil.rmtree(out / BACKUP_DIR, ignore_errors=True)
        raise TrainingDiverged("Training {} diverged: the loss became NaN{}. Lower the learning rate "
                               "(--lr, now {}) and start again; nothing was written.".format(
                                   preset.name, "" if nan_guard.bad_epoch < 0 else " in epoch {}".format(
                                       nan_guard.bad_epoch + 1), settings["learning_rate"]))

    test_images = np.concatenate([batch.numpy() for batch in splits.test])
    result, recon, noisy = evaluate(model, test_images)

    # Each file is written whole or not at all; metrics.json goes last and marks a complete run.
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
    fileio.write_text(out / "history.csv", (out / PARTIAL_HISTORY).read_text())
    save_figure(out / "reconstructions.png", model, test_images, recon, noisy,
                "{} (test set)".format(preset.name))
    fileio.write_json(out / "metrics.json", {
        "split": "test",
        "num_images": int(len(test_images)),
        "metrics": result,
        "units": {k: v for k, v in metrics.UNITS.items() if k in result},
        "timing": timer.summary(splits.num_train),
    })
    (out / PARTIAL_HISTORY).unlink(missing_ok=True)
    shutil.rmtree(out / BACKUP_DIR, ignore_errors=True)
    if not chief:
        shutil.rmtree(out, ignore_errors=True)
        return None
    if verbose:
        shown = ", ".join("{}={:.4g}".format(k, v) for k, v in result.items() if isinstance(v, float))
        print("Test: {}\nRun dir: {}".format(shown, out), flush=True)
    return out


class _EpochTimer(keras.callbacks.Callback):
    """Wall time per epoch, for the training-throughput figures in metrics.json."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)

    def summary(self, num_train):
        if not self.seconds:
            return {}
        # The first epoch includes tracing and filling the tf.data cache; report the rest when there is one.
        steady = self.seconds[1:] or self.seconds
        per_epoch = float(np.median(steady))
        return {"epochs_timed": len(self.seconds), "seconds_per_epoch": per_epoch,
                # Other work on the machine slows training: the 5-minute load average says how busy it was.
                "load_average": os.getloadavg()[1],
                "first_epoch_seconds": float(self.seconds[0]), "train_images_per_second": num_train / per_epoch,
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
    try:
        train(args.preset, out=args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
              data_dir=args.data_dir, seed=args.seed, limit=args.limit, verbose=0 if args.quiet else 1,
              strategy=args.strategy)
    except ZooError as exc:
        print("error: {}".format(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nInterrupted. Run the same command again to resume from the last finished epoch.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
