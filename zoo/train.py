"""Train a preset: `python -m zoo.train dae_mnist` leaves a self-describing run dir.

runs/<preset>/: model.keras, config.json, history.csv, metrics.json, reconstructions.png (zoo.schema).
`--set KEY=VALUE` and `--config FILE` change the preset's recipe or model (zoo.presets.apply_overrides).
An interrupted run resumes from its last epoch when started again with the same settings.
This module is the command line and the run-dir rules; the training loop is zoo.training, loaded
(with Keras and TensorFlow) only when something is trained, so listing and help answer at once.
"""

import csv
import io
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from zoo import _startup, fileio, schema
from zoo.errors import ZooError, run_cli
from zoo.presets import PRESETS, RECIPE_FIELDS, list_presets

# Run-dir names live in zoo.schema; these aliases keep `train.BACKUP_DIR` and the like working.
BACKUP_DIR = schema.BACKUP_DIR  # checkpoints of the run in progress (zoo.checkpoint)
RUN_FILES = schema.RUN_FILES
COMPLETE = schema.METRICS  # written last: its presence marks a finished run
RUN_KEY = "run_key.json"  # in BACKUP_DIR: the settings of the interrupted run, which a resume must match
LEGACY_PARTIAL_HISTORY = ".history.partial.csv"  # written by aezoo 0.1; removed when found


STRATEGIES = ("default", "mirrored", "multiworker")
TF_CONFIG_EXAMPLE = (
    'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}\'')


#: The command-line flags that set a recipe field; they win over --set and --config.
FLAGS = {"epochs": "--epochs", "batch_size": "--batch-size", "learning_rate": "--lr", "seed": "--seed",
         "limit": "--limit"}


def parse_value(text):
    """A --set value: JSON when it parses (20, 0.5, true, [64, 128], null), else the text itself (masking)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_assignments(items):
    """{key: value} from --set KEY=VALUE items, the last of a repeated key winning."""
    result = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ZooError("--set expects KEY=VALUE, e.g. --set latent_dim=20; got {!r}.".format(item))
        result[key.strip()] = parse_value(text)
    return result


def read_overrides(path):
    """{key: value} from a --config file: a JSON (or, with PyYAML, YAML) object of the keys --set takes, flat
    or in two sections, {"model": {...}, "training": {...}}."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ZooError("--config {} cannot be read: {}.".format(path, exc.strerror or exc)) from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ZooError("--config {} is YAML, and PyYAML is not installed: write it as JSON, or `pip install "
                           "pyyaml`.".format(path)) from None
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ZooError("--config {} is not valid YAML: {}".format(path, " ".join(str(exc).split()))) from None
    else:
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise ZooError("--config {} is not valid JSON ({}); YAML files need the .yaml suffix.".format(
                path, exc)) from None
    if not isinstance(value, dict):
        raise ZooError("--config {} must hold an object of KEY: VALUE, e.g. {{\"latent_dim\": 20}}; it holds a {}."
                       .format(path, type(value).__name__))
    result = {}
    for key, item in value.items():
        if key in ("model", "training") and isinstance(item, dict):
            entries = item.items()
        else:
            entries = [(key, item)]
        for name, v in entries:
            if name in result:
                raise ZooError("--config {} sets {} twice.".format(path, name))
            result[name] = v
    return result


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
    if COMPLETE in names and schema.CONFIG in names:
        return "complete"
    if BACKUP_DIR in names:
        return "interrupted"
    return "started"


def _is_legacy_run(out):
    """A run dir of aezoo 0.1, which wrote no marker: its config.json names aezoo's version, or its checkpoint
    folder holds aezoo's run key."""
    try:
        config = json.loads((out / schema.CONFIG).read_text())
        if isinstance(config, dict) and "aezoo" in (config.get("versions") or {}):
            return True
    except (OSError, ValueError):
        pass
    return (out / BACKUP_DIR / RUN_KEY).is_file()


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
        config = json.loads((out / schema.CONFIG).read_text())
        return "preset {}, {} epochs".format(config.get("preset"), config.get("training", {}).get("epochs"))
    except (OSError, ValueError, AttributeError):
        return "its config.json is unreadable"


def _clear_old_run(out):
    """Remove a previous run's files, the completion marker first and its export next, so that a crash
    part-way never leaves a folder that looks complete but mixes two models."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
        if name == COMPLETE:
            export_dir = out / schema.EXPORT_DIR
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
        "dae_mnist --set latent_dim=20 --set noise=masking --set noise_level=0.5 --out runs/dae_masking",
        "deep_ae_mnist --set optimizer=adamw --set weight_decay=1e-4 --set schedule=constant --out runs/adamw",
        "vae_mnist --config recipe.json --set beta=0.5      # recipe.json: {\"model\": {\"latent_dim\": 16}, "
        "\"training\": {\"epochs\": 10}}",
        "deep_ae_mnist --epochs 1 --limit 256 --data-dir ~/mnist-idx --out /tmp/smoke --overwrite"])
    parser.add_argument("preset", nargs="?", help="preset name, e.g. dae_mnist (see --list)")
    parser.add_argument("--list", action="store_true", help="list the presets with their descriptions")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                        help="override a recipe field ({}) or an argument of the preset's model (latent_dim, noise, "
                             "noise_level, hidden_units, filters, reconstruction_loss, ...); VALUE is JSON when it "
                             "parses (20, 0.5, true, [64,128], null), else text; repeatable".format(
                                 ", ".join(RECIPE_FIELDS)))
    parser.add_argument("--config", metavar="FILE",
                        help="overrides from a JSON file (YAML too with PyYAML): the keys of --set, flat or as "
                             '{"model": {...}, "training": {...}}. Preset < --config < --set < the flags below')
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float, help="peak learning rate (of the schedule: cosine decay by default)")
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
        overrides = read_overrides(args.config) if args.config else {}
        overrides.update(parse_assignments(args.set))
        train(args.preset, overrides=overrides, out=args.out, epochs=args.epochs, batch_size=args.batch_size,
              lr=args.lr, data_dir=args.data_dir, seed=args.seed, limit=args.limit, verbose=verbose,
              strategy=args.strategy, overwrite=args.overwrite)
        return 0

    return run_cli(body, interrupted="Interrupted. Run the same command again to resume from the last finished epoch.")


if __name__ == "__main__":
    sys.exit(main())
