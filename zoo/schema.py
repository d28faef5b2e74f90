"""Every file one stage of the zoo hands to the next, defined once: names, format versions, typed load/save.

train -> run dir (config.json, metrics.json, model.keras, history.csv) -> export dir (encoder.onnx,
decoder.onnx, parity.json, savedmodel/) -> release bundle (manifest.json, SHA256SUMS) -> cards. Each
stage reads only what the stages before it wrote. Light on purpose: json and dataclasses only, so the
weights cache, the release and the cards use it without Keras or TensorFlow.
"""

import dataclasses
import json
from pathlib import Path

from zoo import fileio
from zoo.errors import ZooError

#: Version of config.json, metrics.json, parity.json, manifest.json and index.json as this module writes them.
#: 1: aezoo 0.1 (no format_version field); 2: effective recipe with optimizer and schedule, overrides.
FORMAT_VERSION = 2

# --- folders --------------------------------------------------------------------------------------------------
RUNS_DIR = "runs"  # runs/<preset>/ by default
RELEASES_DIR = "releases"  # releases/<version>/<preset>/: the bundles shipped in the repository
RESULTS_DIR = "benchmarks/results"

# --- a run dir (zoo.train) --------------------------------------------------------------------------------------
CONFIG = "config.json"
METRICS = "metrics.json"  # written last: its presence marks a finished run
MODEL = "model.keras"
HISTORY = "history.csv"
FIGURE = "reconstructions.png"
BACKUP_DIR = ".backup"  # checkpoints of the run in progress (zoo.checkpoint)
PRETRAINING = "pretraining.json"  # in BACKUP_DIR: a stacked_ae's layer-wise pretraining records, for a resumed run
EXPORT_DIR = "export"  # RUN/export/, the default place of the export dir
RUN_FILES = (METRICS, MODEL, CONFIG, HISTORY, FIGURE)

# --- an export dir (python -m export) ---------------------------------------------------------------------------
SAVEDMODEL_DIR = "savedmodel"
PARITY = "parity.json"
#: Part -> ONNX file. The same names in an export dir, a release bundle and a fetched cache folder.
ONNX_FILES = {"encoder": "encoder.onnx", "decoder": "decoder.onnx", "autoencoder": "autoencoder.onnx"}
#: SavedModel endpoint -> the part it runs. `reconstruct` first: ExportArchive makes it serving_default.
ENDPOINTS = {"reconstruct": "autoencoder", "encode": "encoder", "decode": "decoder"}
NORMALIZATION = "float32 in [0, 1], NHWC"
#: Precision variants of the ONNX files: fp32 is the plain name, the others add theirs (encoder.int8.onnx).
#: Every variant keeps float32 inputs and outputs.
PRECISIONS = ("fp32", "fp16", "int8")


def parse_precisions(precisions):
    """("fp32", ...) from "fp32,int8" or a sequence of PRECISIONS; fp32 always comes first (it is the reference)."""
    if isinstance(precisions, str):
        precisions = [p.strip() for p in precisions.split(",") if p.strip()]
    precisions = tuple(dict.fromkeys(precisions or ()))
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise SchemaError("Unknown precision(s) {}; choose from {} (comma-separated).".format(
            ", ".join(unknown), ", ".join(PRECISIONS)))
    return ("fp32",) + tuple(p for p in precisions if p != "fp32")


def onnx_file(part, precision="fp32"):
    """The file name of `part` ("encoder", "decoder", "autoencoder") at `precision`."""
    if precision not in PRECISIONS:
        raise SchemaError("Unknown precision {!r}; choose one of {}.".format(precision, ", ".join(PRECISIONS)))
    name = ONNX_FILES[part]
    return name if precision == "fp32" else name.replace(".onnx", ".{}.onnx".format(precision))

# --- a release bundle (python -m export.release) -----------------------------------------------------------------
MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
INDEX = "index.json"
SAVEDMODEL_ARCHIVE = "savedmodel.tar.gz"  # aezoo 0.1 bundles only; 0.2 exports the SavedModel on request
KERAS_WEIGHTS = "keras_weights.json"  # Keras variable -> ONNX initializer that holds its values
KERAS_EXTRA = "keras_extra.npz"  # the Keras variables no ONNX file holds (none for the dense models)


class SchemaError(ZooError):
    """A file one stage wrote is missing, unreadable or not what the next stage expects."""


def load_json(path, what):
    """The JSON object in `path`, or SchemaError saying which file and what is wrong with it."""
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise SchemaError("{} is missing: no {} there.".format(path, what)) from None
    except (OSError, ValueError) as exc:
        raise SchemaError("{} is not a readable {}: {}.".format(path, what, exc)) from None
    if not isinstance(value, dict):
        raise SchemaError("{} is not a {}: it holds a JSON {}, not an object.".format(path, what, type(value).__name__))
    version = value.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise SchemaError("{} has format version {!r}, newer than this aezoo reads ({}); upgrade aezoo.".format(
            path, version, FORMAT_VERSION))
    return value


def _from_dict(cls, value, path, what):
    names = {f.name for f in dataclasses.fields(cls)}
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [k for k in required if k not in value]
    if missing:
        raise SchemaError("{} is not a complete {}: it lacks {}.".format(path, what, ", ".join(missing)))
    known = {k: v for k, v in value.items() if k in names}
    return cls(**known)


class _Record:
    """Save/load for the dataclasses below: JSON written atomically, with the format version."""

    FILE = None
    WHAT = None

    def to_dict(self):
        return dataclasses.asdict(self)

    def save(self, folder):
        return fileio.write_json(Path(folder) / self.FILE, dict(self.to_dict(), format_version=FORMAT_VERSION))

    @classmethod
    def load(cls, folder):
        path = Path(folder) / cls.FILE
        return _from_dict(cls, load_json(path, cls.WHAT), path, cls.WHAT)


@dataclasses.dataclass
class RunConfig(_Record):
    """config.json: what a run was, as trained. `training` is the effective recipe (after --set/--config) and
    how it ran; `overrides` says which fields differ from the preset's defaults."""

    FILE = CONFIG
    WHAT = "run config (config.json, written by python -m zoo.train)"

    preset: str
    model: str
    dataset: str
    model_config: dict
    training: dict
    input_shape: list
    latent_dim: int
    description: str = ""
    parameters: int = None
    data_source: str = None
    data_dir: str = None
    num_train: int = None
    num_val: int = None
    num_test: int = None
    normalization: str = NORMALIZATION
    versions: dict = dataclasses.field(default_factory=dict)
    overrides: dict = dataclasses.field(default_factory=dict)
    #: where the weights came from when they were not trained in this run dir: {"release", "bundle",
    #: "weights_sha256"} for a run dir written from released weights (zoo.pretrained.write_run_dir)
    weights_source: dict = None
    format_version: int = FORMAT_VERSION

    @property
    def epochs(self):
        return self.training.get("epochs")

    def recipe_text(self):
        """One line for a card: the recipe this run recorded (never the preset's defaults)."""
        return recipe_text(self.training, self.model_config, self.overrides)


def recipe_text(training, model_config=None, overrides=None):
    """A recorded recipe in words: "40 epochs, batch 128, adam at 0.001 with cosine decay, mse loss, seed 1337"."""
    t, model_config = training or {}, model_config or {}
    optimizer = t.get("optimizer") or "adam"
    if "schedule" in t:
        schedule = {"cosine": " with cosine decay to 1%", "constant": " (constant)"}.get(
            t["schedule"], " with {} schedule".format(t["schedule"]))
    else:  # aezoo 0.1 recorded "Adam, cosine decay to 1%" in `optimizer`
        schedule = ""
    text = "{} epoch{}, batch {}, {} at {}{}, {} reconstruction loss, seed {}".format(
        t.get("epochs"), "" if t.get("epochs") == 1 else "s", t.get("batch_size"), optimizer,
        t.get("learning_rate"), schedule,
        t.get("reconstruction_loss") or model_config.get("reconstruction_loss", "mse"), t.get("seed"))
    if t.get("weight_decay"):
        text += ", weight decay {}".format(t["weight_decay"])
    if t.get("augment", "none") != "none":
        text += ", {} augmentation".format(t["augment"])
    if t.get("limit"):
        text += ", first {:,} training images only".format(t["limit"])
    if overrides:
        text += "; changed from the preset: " + ", ".join(
            "{}={}".format(k, json.dumps(v)) for k, v in sorted(overrides.items()))
    return text


@dataclasses.dataclass
class RunMetrics(_Record):
    """metrics.json: test-split metrics of a finished run; written last, so it marks the run complete."""

    FILE = METRICS
    WHAT = "run metrics file (metrics.json, written by python -m zoo.train)"

    split: str
    num_images: int
    metrics: dict
    units: dict = dataclasses.field(default_factory=dict)
    timing: dict = dataclasses.field(default_factory=dict)
    format_version: int = FORMAT_VERSION


@dataclasses.dataclass
class Parity(_Record):
    """parity.json: the exporter's comparison of each exported format with the Keras model."""

    FILE = PARITY
    WHAT = "parity report (parity.json, written by python -m export)"

    passed: bool
    checks: list = dataclasses.field(default_factory=list)
    tolerance: float = None
    batch_sizes: list = dataclasses.field(default_factory=list)
    max_abs_diff: dict = dataclasses.field(default_factory=dict)
    inputs: dict = dataclasses.field(default_factory=dict)
    preset: str = None
    formats: list = dataclasses.field(default_factory=list)
    opset: int = None
    #: the form of the transposed convolutions in the ONNX files (export.optimize.CONV_TRANSPOSE_FORMS); None in
    #: exports older than the "phases" form, which hold "slice"
    conv_transpose: str = None
    reference: str = None
    onnxruntime: dict = dataclasses.field(default_factory=dict)
    #: {precision: how its variant of the ONNX files compares with fp32, and whether its files were kept}
    variants: dict = dataclasses.field(default_factory=dict)
    format_version: int = FORMAT_VERSION


@dataclasses.dataclass
class Manifest(_Record):
    """manifest.json of a release bundle: every file with size and sha256, and what the model measured."""

    FILE = MANIFEST
    WHAT = "release manifest (manifest.json, written by python -m export.release)"

    preset: str
    files: list
    model: str = None
    description: str = ""
    dataset: str = None
    input_shape: list = None
    latent_dim: int = None
    normalization: str = NORMALIZATION
    variational: bool = False
    model_config: dict = dataclasses.field(default_factory=dict)
    training: dict = dataclasses.field(default_factory=dict)
    overrides: dict = dataclasses.field(default_factory=dict)
    metrics: dict = dataclasses.field(default_factory=dict)
    parity: dict = dataclasses.field(default_factory=dict)
    versions: dict = dataclasses.field(default_factory=dict)
    weights_sha256: str = None  # of the Keras weights rebuilt from the bundle (zoo.pretrained checks it)
    sampling: str = None
    release: str = None
    format_version: int = FORMAT_VERSION

    def entries(self, format):
        return [e for e in self.files if e.get("format") == format]


@dataclasses.dataclass
class Index(_Record):
    """index.json of a release: {preset: summary} for every bundle in it."""

    FILE = INDEX
    WHAT = "release index (index.json, written by python -m export.release)"

    presets: dict
    release: str = None
    format_version: int = FORMAT_VERSION


def run_files_present(run_dir):
    """The files a finished run dir has, of those an export needs."""
    return [name for name in (MODEL, CONFIG) if (Path(run_dir) / name).is_file()]
