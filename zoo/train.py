"""Train a preset: `python -m zoo.train dae_mnist` leaves a self-describing run dir.

runs/<preset>/: model.keras, config.json, history.csv, metrics.json, reconstructions.png.
An interrupted run resumes from its last epoch when started again with the same settings.
This module is the command line and the run-dir rules; the training loop is zoo.training, loaded
(with Keras and TensorFlow) only when something is trained, so listing and help answer at once.
"""

import csv
import io
import json
import math
import os
import shutil
import sys

import numpy as np

from zoo import _startup, fileio
from zoo.errors import ZooError, run_cli
from zoo.presets import PRESETS, list_presets

BACKUP_DIR = ".backup"  # checkpoints of the run in progress (zoo.checkpoint)
LEGACY_PARTIAL_HISTORY = ".history.partial.csv"  # written by aezoo 0.1; removed when found


STRATEGIES = ("default", "mirrored", "multiworker")
TF_CONFIG_EXAMPLE = (
    'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}\'')


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
    if fileio.marker_kind(out) != "run" and not _is_legacy_run(out):
        return "foreign"
    if COMPLETE in names and "config.json" in names:
        return "complete"
    if BACKUP_DIR in names:
        return "interrupted"
    return "started"


def _is_legacy_run(out):
    """A run dir of aezoo 0.1, which wrote no marker: its config.json names aezoo's version, or its checkpoint
    folder holds aezoo's run key."""
    try:
        config = json.loads((out / "config.json").read_text())
        if isinstance(config, dict) and "aezoo" in (config.get("versions") or {}):
            return True
    except (OSError, ValueError):
        pass
    return (out / BACKUP_DIR / "run_key.json").is_file()


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


def train(preset, **kwargs):
    """Train `preset` and write its run dir; returns the run dir's Path. See zoo.training.run for the arguments."""
    from zoo import training

    return training.run(preset, **kwargs)


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
    from zoo.cli import make_parser

    parser = make_parser("zoo.train", "Train an autoencoder preset into a run dir.", [
        "--list                                   # every preset with its description",
        "dae_mnist                                # -> runs/dae_mnist/; run again after Ctrl-C to resume",
        "conv_ae_fashion_mnist --epochs 5 --batch-size 256 --lr 2e-3 --out runs/try1",
        "deep_ae_mnist --epochs 1 --limit 256 --data-dir ~/mnist-idx --out /tmp/smoke --overwrite"])
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
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--verbose", action="store_true", help="let TensorFlow's start-up lines through")
    args = parser.parse_args(argv)
    if args.verbose:
        os.environ[_startup.VERBOSE_ENV] = "1"
    if args.list:
        print(_list_text())
        return 0
    if not args.preset:
        parser.error("name a preset to train, or --list to see them")

    def body():
        # A terminal gets Keras' live bar; a log file one line per epoch (verbose=2 in zoo.training).
        verbose = 0 if args.quiet else (1 if sys.stdout.isatty() else 2)
        train(args.preset, out=args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
              data_dir=args.data_dir, seed=args.seed, limit=args.limit, verbose=verbose,
              strategy=args.strategy, overwrite=args.overwrite)
        return 0

    return run_cli(body, interrupted="Interrupted. Run the same command again to resume from the last finished epoch.")


if __name__ == "__main__":
    sys.exit(main())
