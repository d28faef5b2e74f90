"""Where things are in a run dir and an export dir, and how a run dir is named on the command line.

Light on purpose (no TensorFlow, Keras or ONNX): the release command and the command-line help use it.
"""

import re
from pathlib import Path

from zoo.errors import ZooError

from zoo import schema

FORMATS = ("savedmodel", "onnx")
DEFAULT_OPSET = 17
#: The forms of a transposed convolution in the ONNX files (export.optimize), the default first.
CONV_TRANSPOSE_FORMS = ("phases", "slice")
RUN_FILES = (schema.MODEL, schema.CONFIG)  # what an export needs from a run dir
#: Endpoint -> ONNX file, for the exporter: `reconstruct` first (ExportArchive makes it serving_default).
ENDPOINT_FILES = {endpoint: schema.ONNX_FILES[part] for endpoint, part in schema.ENDPOINTS.items()}
EXPORT_KIND = "export"  # the marker kind of an export dir (zoo.fileio.MARKER)
# What an unmarked aezoo 0.1 export dir held; parity.json, written last, is the one it always had.
EXPORT_FILES = (schema.PARITY, schema.SAVEDMODEL_DIR, *schema.ONNX_FILES.values())


class ExportError(ZooError):
    """A run cannot be exported: missing files, unknown format, conversion failure."""


def _train_hint(path):
    """A command that would make the run dir `path`."""
    from zoo.presets import PRESETS

    name = Path(path).name
    if name in PRESETS:
        default = Path(schema.RUNS_DIR) / name
        return "python -m zoo.train {}{}".format(name, "" if Path(path) == default else " --out {}".format(path))
    return "python -m zoo.train PRESET --out {} (python -m zoo.train --list shows the presets)".format(path)


def resolve_run_dir(run_dir):
    """A run dir path, or a preset name standing for runs/<preset>/."""
    path = Path(run_dir)
    if path.is_dir():
        missing = [f for f in RUN_FILES if not (path / f).is_file()]
        if missing:
            raise ExportError("{} is not a finished run dir: it lacks {}. Train it with `{}`.".format(
                path, ", ".join(missing), _train_hint(path)))
        return path
    by_name = Path(schema.RUNS_DIR) / str(run_dir)
    if re.fullmatch(r"[A-Za-z0-9_.-]+", str(run_dir)) and by_name.is_dir():
        return resolve_run_dir(by_name)
    raise ExportError("No run dir {}{}. Give the folder `python -m zoo.train` wrote, or train one first: `{}`.".format(
        path, "" if path == by_name else " (nor {}/)".format(by_name),
        _train_hint(by_name if re.fullmatch(r"[A-Za-z0-9_]+", str(run_dir)) else path)))
