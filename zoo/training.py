"""The training loop behind `python -m zoo.train` (see zoo.train, which holds the command line and loads
this module, with Keras and TensorFlow, only when something is actually trained)."""

import contextlib
import dataclasses
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

import zoo
from zoo import checkpoint, data, fileio, figures, metrics, presets, schema
from zoo.errors import ZooError
from zoo.train import (BACKUP_DIR, COMPLETE, FLAGS, LEGACY_PARTIAL_HISTORY, RUN_KEY, STRATEGIES, TF_CONFIG_EXAMPLE,
                       _check_out, _clear_old_run, history_csv, timing)

EVAL_SEED = 2024  # noise for the denoising metrics is drawn the same way for every run


class TrainingDiverged(ZooError):
    pass


def make_strategy(name):
    """The tf.distribute strategy for `--strategy` (TensorFlow backend); create it before any other TensorFlow
    work."""
    import tensorflow as tf

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


@dataclasses.dataclass
class Placement:
    """Where a run's steps execute, whatever the backend: a scope to build the model in, the number of
    replicas the global batch is split over, and whether this process writes the run dir."""

    name: str
    scope: object  # a context manager factory
    replicas: int
    chief: bool
    # JAX only: every batch must split evenly over the devices, and each process feeds its own share of it.
    batch_multiple: int = 1
    shard: tuple = (0, 1)
    vector_logs: bool = False  # see zoo.models.Autoencoder.vector_logs


def place(strategy="default"):
    """The Placement for `--strategy` on the current Keras backend.

    TensorFlow: the tf.distribute strategies (or a tf.distribute.Strategy given directly). JAX:
    "mirrored" is keras.distribution.DataParallel over this host's devices, "multiworker" first joins
    the processes with keras.distribution.initialize (jax.distributed; the cluster comes from
    KERAS_DISTRIBUTION_JOB_ADDRESSES, KERAS_DISTRIBUTION_NUM_PROCESSES and KERAS_DISTRIBUTION_PROCESS_ID,
    or is detected by JAX) and then spreads the batch over every process's devices. PyTorch: one device.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        if isinstance(strategy, str):
            name, strategy = strategy, make_strategy(strategy)
        else:
            name = type(strategy).__name__
        import tensorflow as tf

        multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and bool(
            getattr(strategy.extended, "_in_multi_worker_mode", lambda: False)())
        return Placement(name, strategy.scope, strategy.num_replicas_in_sync, is_chief(strategy),
                         vector_logs=multi_worker)
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise ZooError("--strategy must be one of {}; got {!r}.".format(", ".join(STRATEGIES), strategy))
    if strategy == "default":
        return Placement(strategy, contextlib.nullcontext, 1, True)
    if backend != "jax":
        raise ZooError("--strategy {} needs the TensorFlow or JAX backend; this is {} (set KERAS_BACKEND).".format(
            strategy, backend))
    import jax

    if strategy == "multiworker":
        # CPU processes exchange gradients through gloo (GPUs use NCCL whatever this says).
        with contextlib.suppress(AttributeError, ValueError):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        try:
            keras.distribution.initialize()
        except Exception as exc:  # jax.distributed raises RuntimeError/ValueError with its own words
            raise ZooError("--strategy multiworker could not join the processes ({}: {}). Set "
                           "KERAS_DISTRIBUTION_JOB_ADDRESSES (coordinator host:port first), "
                           "KERAS_DISTRIBUTION_NUM_PROCESSES and KERAS_DISTRIBUTION_PROCESS_ID on every host."
                           .format(type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")) from None
    devices = keras.distribution.list_devices()
    # zoo.data's batches are already this process's share (Placement.shard): no auto-sharding on top.
    distribution = keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)

    @contextlib.contextmanager
    def scope():
        with distribution.scope():
            yield

    return Placement(strategy, scope, len(devices), jax.process_index() == 0, batch_multiple=len(devices),
                     shard=(jax.process_index(), jax.process_count()))


def library_versions():
    """The versions that trained a run; TensorFlow and tfds only where they are installed."""
    import importlib.metadata

    versions = {"aezoo": zoo.__version__, "keras": keras.__version__, "backend": keras.backend.backend()}
    for package, key in (("tensorflow", "tensorflow"), ("jax", "jax"), ("torch", "torch"),
                         ("tensorflow-datasets", "tensorflow_datasets")):
        try:
            versions[key] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    versions.update({"numpy": np.__version__, "python": platform.python_version()})
    return versions


def make_optimizer(preset, steps_per_epoch):
    """Keras' optimizer for the recipe: `preset.optimizer` at `preset.learning_rate`, with its schedule."""
    rate = preset.learning_rate
    if preset.schedule == "cosine":
        # Cosine decay to 1% over the whole run: the last epochs refine instead of bouncing around.
        rate = keras.optimizers.schedules.CosineDecay(rate, steps_per_epoch * preset.epochs, alpha=0.01)
    config = {"learning_rate": rate}
    # AdamW requires a weight decay; the others keep Keras' default (none) unless the recipe asks for one.
    if preset.weight_decay or preset.optimizer == "adamw":
        config["weight_decay"] = preset.weight_decay
    return keras.optimizers.get({"class_name": preset.optimizer, "config": config})


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


class _EpochLine(keras.callbacks.Callback):
    """One line per epoch with every loss term and the epoch's time, for logs that are not a terminal (Keras'
    verbose=2 takes two lines, and its live bar joins every step of an epoch into one carriage-return line)."""

    def __init__(self, epochs):
        super().__init__()
        self.epochs = epochs

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        terms = " - ".join("{} {:.4g}".format(k, float(v)) for k, v in (logs or {}).items())
        print("epoch {}/{} - {:.1f}s - {}".format(epoch + 1, self.epochs, time.perf_counter() - self._start, terms),
              flush=True)


def _check_resume(out, run_key):
    """A backup from other settings would resume the wrong run: refuse rather than mix them."""
    key_file = out / BACKUP_DIR / RUN_KEY
    if (out / BACKUP_DIR).exists() and not key_file.exists() and checkpoint.read_state(out / BACKUP_DIR) is None:
        shutil.rmtree(out / BACKUP_DIR)  # killed before its first write: nothing in it to resume
    if (out / BACKUP_DIR).exists():
        try:
            previous = json.loads(key_file.read_text()) if key_file.exists() else None
        except (OSError, ValueError):
            previous = "unreadable"
        if previous != json.loads(json.dumps(run_key)):  # as read back: tuples become lists
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


def run(preset, *, out=None, epochs=None, batch_size=None, lr=None, data_dir=None, seed=None, limit=None,
        verbose=1, callbacks=(), strategy="default", overwrite=False, overrides=None):
    """Train `preset` and write its run dir; returns the run dir's Path.

    `overrides` is {key: value} of recipe fields and model arguments (zoo.presets.apply_overrides, the
    --set and --config of the command line); `epochs`, `batch_size`, `lr`, `seed` and `limit` win over it.
    `strategy` is "default" (one device), "mirrored" (this host's devices) or "multiworker"
    (several hosts), or a tf.distribute.Strategy; see `place` for what each means per backend.
    `batch_size` is the global batch, split across replicas; the learning rate is used as given (see
    README for the scaling rule).
    A run dir that holds a finished run is refused unless `overwrite`; one that holds an interrupted
    run with the same settings is resumed. One process at a time may write a run dir.
    """
    explicit = {key: value for key, value in (("epochs", epochs), ("batch_size", batch_size), ("learning_rate", lr),
                                              ("seed", seed), ("limit", limit)) if value is not None}
    preset, changed = presets.apply_overrides(preset, {**(overrides or {}), **explicit},
                                              labels={key: FLAGS[key] for key in explicit})
    placement = place(strategy)
    if preset.batch_size % placement.batch_multiple:
        raise ZooError("--batch-size {} does not split evenly over the {} devices; use a multiple of {}, e.g. {}."
                       .format(preset.batch_size, placement.batch_multiple, placement.batch_multiple,
                               preset.batch_size // placement.batch_multiple * placement.batch_multiple
                               or placement.batch_multiple))
    chief = placement.chief
    out = Path(out) if out is not None else Path(schema.RUNS_DIR) / preset.name
    # Every process resumes from the chief's checkpoint (on storage they all see), so that all of them start
    # from the same epoch and weights; the others then write their own checkpoints in a scratch folder.
    resume_from = out / BACKUP_DIR
    if chief:
        _check_out(out, overwrite)  # before any work, so a refusal costs nothing
    else:
        # Other workers compute the same steps but must not write where the chief writes.
        out = Path(tempfile.mkdtemp(prefix="aezoo-worker-"))

    keras.utils.set_random_seed(preset.seed)
    # Built before any data is read or any folder written, so that a value the model rejects costs nothing.
    with placement.scope():
        model = presets.build_model(preset, changed)
        model.vector_logs = placement.vector_logs
    splits = data.load(preset.dataset, batch_size=preset.batch_size, seed=preset.seed, data_dir=data_dir,
                       limit=preset.limit)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = fileio.FolderLock(out)
    try:
        lock.acquire()
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # empty unless the holder of the lock made it too: then it stays
        raise
    try:
        state = _check_out(out, overwrite)  # again: another writer may have finished meanwhile
        if overwrite and state in ("complete", "interrupted"):
            _clear_old_run(out)
        fileio.write_marker(out, "run")
        fileio.remove_partials(out)
        (out / LEGACY_PARTIAL_HISTORY).unlink(missing_ok=True)
        return _train_locked(preset, changed, model, splits, out, placement, data_dir, verbose, callbacks,
                             resume_from)
    except BaseException:
        if not chief:
            shutil.rmtree(out, ignore_errors=True)  # a worker's scratch folder
        elif created and out.is_dir() and checkpoint.read_state(out / BACKUP_DIR) is None \
                and not (out / COMPLETE).exists():
            shutil.rmtree(out, ignore_errors=True)  # nothing worth keeping: leave no empty or half-made folder
        raise
    finally:
        lock.release()


def _warn(message):
    print("warning: " + message, file=sys.stderr, flush=True)


def _train_locked(preset, changed, model, splits, out, placement, data_dir, verbose, callbacks, resume_from):
    with placement.scope():
        # Statistics of the training images (the encoder's mean image), set the same way on a resumed run, whose
        # checkpoint then restores the very same values.
        model.adapt(splits.fit_images)
        model.compile(optimizer=make_optimizer(preset, splits.steps_per_epoch))

    settings = {key: getattr(preset, key) for key in ("epochs", "batch_size", "learning_rate", "seed", "limit")}
    run_key = {"preset": preset.name, **settings, "data_source": splits.source, "strategy": placement.name,
               "replicas": placement.replicas, "backend": keras.backend.backend()}
    others = {key: value for key, value in changed.items() if key not in settings}
    if others:  # only then, so that a run interrupted before --set existed still resumes
        run_key["overrides"] = others
    resumed = _check_resume(out, run_key)
    with placement.scope():
        source = out / BACKUP_DIR if placement.chief or not resume_from.is_dir() else resume_from
        state = checkpoint.restore(model, source, say=_warn)
    first_epoch = state["epoch"]
    if verbose:
        print("{} {}: {} ({} train / {} val / {} test images from {})".format(
            "Resuming after epoch {} of".format(first_epoch) if resumed else "Training", preset.name,
            preset.description, splits.num_train, splits.num_val, splits.num_test, splits.source), flush=True)
    # Greedy layer-wise pretraining (stacked_ae), before the first epoch only: a resumed run's checkpoint restored
    # the model's `pretrained` flag with the weights, and the records kept beside it.
    pretraining, records_file = None, out / BACKUP_DIR / schema.PRETRAINING
    if first_epoch == 0 and getattr(model, "needs_pretraining", False):
        with placement.scope():
            pretraining = model.pretrain(
                lambda stage: splits.train(0, model.pretrain_epochs, placement.batch_multiple, placement.shard,
                                             augment=preset.augment),
                steps_per_epoch=splits.steps_per_epoch, verbose=verbose, shuffle=False)
        fileio.write_json(records_file, pretraining)
    elif records_file.is_file():
        pretraining = json.loads(records_file.read_text())

    nan_guard = _StopOnNaN()
    saver = checkpoint.Checkpoint(out / BACKUP_DIR, state)
    progress = [_EpochLine(preset.epochs)] if verbose == 2 else []  # a log file: one line per epoch
    if first_epoch < preset.epochs:  # a run killed after its last epoch goes straight to the evaluation
        with placement.scope():
            model.fit(splits.train(first_epoch, preset.epochs, placement.batch_multiple, placement.shard,
                                   augment=preset.augment),
                      steps_per_epoch=splits.steps_per_epoch, initial_epoch=first_epoch, epochs=preset.epochs,
                      validation_data=splits.validation(placement.batch_multiple, placement.shard),
                      verbose=1 if verbose == 1 else 0, shuffle=False,
                      callbacks=[saver, nan_guard, *progress, *callbacks])
    if nan_guard.bad_epoch is not None:
        shutil.rmtree(out / BACKUP_DIR, ignore_errors=True)
        raise TrainingDiverged("Training {} diverged: the loss became NaN{}. Lower the learning rate "
                               "(--lr, now {}) and start again; nothing was written.".format(
                                   preset.name, "" if nan_guard.bad_epoch < 0 else " in epoch {}".format(
                                       nan_guard.bad_epoch + 1), preset.learning_rate))

    test_images = data.normalize(splits.test_images)
    result, recon, noisy = evaluate(model, test_images)
    # How much of the code is in use, on training images (the codes the model was fitted to).
    health = metrics.model_code_health(model, data.normalize(splits.fit_images[:metrics.HEALTH_IMAGES]))
    result["health"] = health
    if placement.chief and metrics.health_warning(health):
        _warn("{}: {}.".format(preset.name, metrics.health_warning(health)))

    # Each file is written whole or not at all; metrics.json goes last and marks a complete run. The
    # checkpoint stays until then, so an interruption here loses no epoch.
    with fileio.atomic_path(out / schema.MODEL) as tmp:
        model.save(tmp)
    schema.RunConfig(
        preset=preset.name, model=preset.model, description=preset.description, model_config=model.get_config(),
        parameters=int(model.count_params()), dataset=preset.dataset, data_source=splits.source,
        data_dir=None if data_dir is None else str(data_dir), num_train=splits.num_train, num_val=splits.num_val,
        num_test=splits.num_test,
        training={**preset.recipe(), "global_batch_size": preset.batch_size, "strategy": placement.name,
                  "replicas": placement.replicas, "per_replica_batch_size": preset.batch_size / placement.replicas,
                  "backend": keras.backend.backend(), "reconstruction_loss": model.reconstruction_loss,
                  "resumed": resumed, **({"pretraining": pretraining} if pretraining is not None else {})},
        input_shape=list(model.image_shape), latent_dim=model.latent_dim, versions=library_versions(),
        overrides=changed,
    ).save(out)
    fileio.write_text(out / schema.HISTORY, history_csv(saver.state["history"]))
    save_figure(out / schema.FIGURE, model, test_images, recon, noisy, "{} (test set)".format(preset.name))
    schema.RunMetrics(split="test", num_images=int(len(test_images)), metrics=result,
                      units={**{k: v for k, v in metrics.UNITS.items() if k in result},
                             "health": {k: v for k, v in metrics.HEALTH_UNITS.items() if k in health}},
                      timing=timing(saver.state["seconds"], splits.num_train)).save(out)
    shutil.rmtree(out / BACKUP_DIR, ignore_errors=True)
    if not placement.chief:
        shutil.rmtree(out, ignore_errors=True)
        return None
    if verbose:
        shown = ", ".join("{}={:.4g}".format(k, v) for k, v in result.items() if isinstance(v, float))
        print("Test: {}\n{}.\nRun dir: {}".format(shown, metrics.health_line(health), out), flush=True)
    return out
