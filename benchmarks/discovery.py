"""Which models a benchmark runs: export dirs, run dirs holding export/, release bundles, and preset names (a run
under runs/, else the bundled release); each with its ONNX parts, their precision variants, its SavedModel and
where a Keras model of it can be built (for the TensorFlow bf16 and Keras-on-JAX baselines)."""

import json
from pathlib import Path

import onnx

from benchmarks.errors import ModelNotFoundError
from benchmarks.keras_parts import WEIGHTS_FILE
from zoo import schema

PARTS = schema.ONNX_FILES
PRECISIONS = schema.PRECISIONS
RUNS_DIR = Path(schema.RUNS_DIR)


class ExportedModel:
    """A folder of ONNX parts (an export dir or a release bundle) and what its ONNX metadata says.

    `keras_source` is how a Keras model of the same weights is built, or None: {"kind": "run", "path": RUN_DIR}
    (config.json + model.keras or model.weights.h5) or {"kind": "bundle", "path": BUNDLE_DIR} (manifest.json +
    keras_weights.json)."""

    def __init__(self, directory, parts=tuple(PARTS)):
        self.dir = Path(directory)
        self.parts = {p: self.dir / PARTS[p] for p in parts}
        self.metadata = read_metadata(next(iter(self.parts.values())))
        folder = self.dir.parent if self.dir.name == schema.EXPORT_DIR else self.dir
        self.name = self.metadata.get("preset") or folder.name
        self.family = self.metadata.get("family") or ""
        savedmodel = self.dir / schema.SAVEDMODEL_DIR
        self.savedmodel = savedmodel if (savedmodel / "saved_model.pb").is_file() else None
        self.keras_source = keras_source(self.dir)

    def variant(self, part, precision):
        """The file of `part` at `precision`, or None when this folder has no such variant."""
        path = self.dir / schema.onnx_file(part, precision)
        return path if path.is_file() else None

    def precisions(self):
        """The precisions of which every benchmarked part has a file."""
        return [p for p in PRECISIONS if all(self.variant(part, p) for part in self.parts)]

    def describe(self):
        return {"name": self.name, "dir": str(self.dir), "family": self.family,
                "latent_dim": self.metadata.get("latent_dim"), "input_shape": self.metadata.get("input_shape"),
                "files": {p: str(f) for p, f in self.parts.items()},
                "precisions": self.precisions(),
                "savedmodel": str(self.savedmodel) if self.savedmodel else None,
                "keras_source": self.keras_source}


def keras_source(directory):
    """Where the Keras model of an export can be rebuilt from, or None (see ExportedModel)."""
    directory = Path(directory)
    for run in (directory, directory.parent):
        weights = [run / name for name in (schema.MODEL, WEIGHTS_FILE)]
        if (run / schema.CONFIG).is_file() and any(w.is_file() for w in weights):
            return {"kind": "run", "path": str(run.resolve())}
    if (directory / schema.MANIFEST).is_file() and (directory / schema.KERAS_WEIGHTS).is_file():
        return {"kind": "bundle", "path": str(directory.resolve())}
    return None


def read_metadata(path):
    """aezoo.* metadata_props of an ONNX file as {short key: value}, JSON values parsed."""
    model = onnx.load(str(path), load_external_data=False)
    values = {}
    for prop in model.metadata_props:
        if prop.key.startswith("aezoo."):
            try:
                values[prop.key[len("aezoo."):]] = json.loads(prop.value)
            except ValueError:
                values[prop.key[len("aezoo."):]] = prop.value
    return values


def _has_parts(directory, parts):
    return all((directory / PARTS[p]).is_file() for p in parts)


def bundled_release_dir():
    """The newest release shipped in the repository (releases/<version>/), or None."""
    from zoo import weights  # json and files only: no Keras

    return weights.bundled_release()


def resolve_model(arg, parts=tuple(PARTS), runs_dir=RUNS_DIR):
    """An export dir or bundle folder, a run dir holding export/, or a preset name meaning runs/<preset>/export/,
    else the preset's bundle in the release shipped with aezoo."""
    path = Path(arg)
    candidates = [path, path / schema.EXPORT_DIR]
    if not path.is_absolute() and len(path.parts) == 1:
        candidates.append(Path(runs_dir) / arg / schema.EXPORT_DIR)
        release = bundled_release_dir()
        if release is not None:
            candidates.append(release / arg)
    for candidate in candidates:
        if candidate.is_dir() and _has_parts(candidate, parts):
            return ExportedModel(candidate, parts)
    partial = [c for c in candidates if c.is_dir() and any((c / PARTS[p]).is_file() for p in PARTS)]
    if partial:
        c = partial[0]
        missing = [PARTS[p] for p in parts if not (c / PARTS[p]).is_file()]
        raise ModelNotFoundError("{} lacks {}; re-export it (`python -m export RUN_DIR`) or choose parts with "
                                 "--parts.".format(c, ", ".join(missing)))
    raise ModelNotFoundError(
        "No exported model at {!r}: looked for {} in {}. Pass an export dir, a run dir, a release bundle, or a preset "
        "name with runs/<preset>/export/ or a bundle in the release (train with `python -m zoo.train PRESET`, then "
        "`python -m export runs/PRESET`).".format(str(arg), ", ".join(PARTS[p] for p in parts),
                                                  ", ".join(str(c) for c in candidates)))


def find_all(parts=tuple(PARTS), runs_dir=RUNS_DIR):
    """Every exported run under `runs_dir` (RUN/export/ with the parts)."""
    found = [ExportedModel(d, parts) for d in sorted(Path(runs_dir).glob("*/" + schema.EXPORT_DIR))
             if _has_parts(d, parts)]
    if not found:
        raise ModelNotFoundError("--all found no exported runs under {}/ (each needs export/ with {}). Export one "
                                 "with `python -m export runs/PRESET`.".format(runs_dir, ", ".join(PARTS.values())))
    return found
