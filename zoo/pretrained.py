"""Released Keras models: `zoo.from_preset("deep_ae_fashion_mnist")` builds a preset's model with its released
weights, checked by sha256; `pretrained=False` gives the untrained model of the preset's recipe.

A release bundle keeps every weight once: the ONNX encoder and decoder hold them, and keras_weights.json
says which ONNX initializer (transposed how) holds each Keras variable. The few a graph does not hold go
to keras_extra.npz. So the bundled release stays small and the two formats cannot drift apart.
"""

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np

from zoo import fileio, schema
from zoo.errors import ZooError

MAP_VERSION = 1


class PretrainedError(ZooError):
    """Released weights do not fit the model asked for, or the bundle is damaged."""


def weights_digest(arrays):
    """sha256 over the weights in order (shape, dtype and bytes of each): equal only for identical weights."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(json.dumps([list(array.shape), array.dtype.str]).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _initializers(onnx_files):
    """{(file name, initializer name): array} of the ONNX files."""
    import onnx
    from onnx import numpy_helper

    found = {}
    for path in onnx_files:
        for tensor in onnx.load(str(path)).graph.initializer:
            found[(Path(path).name, tensor.name)] = numpy_helper.to_array(tensor)
    return found


def _permutations(ndim):
    # Identity first: dense kernels and biases are stored as they are; conv kernels are transposed.
    return [None] + [p for p in itertools.permutations(range(ndim)) if list(p) != list(range(ndim))] if ndim > 1 \
        else [None]


def map_weights(model, onnx_files):
    """Find where the ONNX files hold each of `model.weights`; returns (keras_weights.json dict, {key: array}
    for those no file holds exactly). Matching is by value, bit for bit, so a match cannot be wrong."""
    initializers = _initializers(onnx_files)
    by_shape = {}
    for key, array in initializers.items():
        by_shape.setdefault((array.size, array.dtype.str), []).append(key)
    variables, extra = [], {}
    for index, variable in enumerate(model.weights):
        value = np.asarray(variable.numpy())
        entry = {"index": index, "path": variable.path, "shape": list(value.shape), "dtype": value.dtype.str}
        for key in by_shape.get((value.size, value.dtype.str), ()):
            candidate = initializers[key]
            if candidate.ndim != value.ndim:
                continue
            for perm in _permutations(value.ndim):
                moved = value if perm is None else value.transpose(perm)
                if moved.shape == candidate.shape and np.array_equal(moved, candidate):
                    entry.update(file=key[0], initializer=key[1], transpose=None if perm is None else list(perm))
                    break
            if "file" in entry:
                break
        if "file" not in entry:
            entry["extra"] = "w{}".format(index)
            extra[entry["extra"]] = value
        variables.append(entry)
    return {"map_version": MAP_VERSION, "model": model.registry_name, "model_config": model.get_config(),
            "weights_sha256": weights_digest(np.asarray(v.numpy()) for v in model.weights),
            "variables": variables}, extra


def load_arrays(bundle_dir, weights_map):
    """The Keras weights, in order, rebuilt from the bundle's ONNX files (and keras_extra.npz)."""
    bundle_dir = Path(bundle_dir)
    files = sorted({v["file"] for v in weights_map["variables"] if "file" in v})
    initializers = _initializers([bundle_dir / f for f in files])
    extra = {}
    if any("extra" in v for v in weights_map["variables"]):
        with np.load(bundle_dir / schema.KERAS_EXTRA, allow_pickle=False) as npz:
            extra = {k: npz[k] for k in npz.files}
    arrays = []
    for v in weights_map["variables"]:
        try:
            if "extra" in v:
                value = extra[v["extra"]]
            else:
                value = initializers[(v["file"], v["initializer"])]
                if v.get("transpose") is not None:
                    value = value.transpose(np.argsort(v["transpose"]))
        except KeyError as exc:
            raise PretrainedError("{} names {} that the bundle does not hold; fetch it again (--refresh).".format(
                bundle_dir / schema.KERAS_WEIGHTS, exc)) from None
        if list(value.shape) != v["shape"]:
            raise PretrainedError("{}: variable {} should have shape {}, the bundle gives {}.".format(
                bundle_dir / schema.KERAS_WEIGHTS, v["path"], v["shape"], list(value.shape)))
        arrays.append(np.array(value, order="C"))  # not ascontiguousarray: it turns a scalar into shape (1,)
    return arrays


def write_weights(bundle_dir, model, onnx_files):
    """keras_weights.json (and keras_extra.npz when needed) in `bundle_dir`; returns the map.

    Checks the round trip at once: the weights rebuilt from the bundle must be the model's, bit for bit."""
    bundle_dir = Path(bundle_dir)
    weights_map, extra = map_weights(model, onnx_files)
    if extra:
        with fileio.atomic_path(bundle_dir / schema.KERAS_EXTRA) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **extra)
    fileio.write_json(bundle_dir / schema.KERAS_WEIGHTS, weights_map)
    if weights_digest(load_arrays(bundle_dir, weights_map)) != weights_map["weights_sha256"]:
        raise PretrainedError("The weights rebuilt from {} differ from the model's; not released.".format(bundle_dir))
    return weights_map


def load_into(model, bundle_dir):
    """Set `model`'s weights from a fetched bundle; raises PretrainedError if they do not fit or do not check."""
    bundle_dir = Path(bundle_dir)
    weights_map = schema.load_json(bundle_dir / schema.KERAS_WEIGHTS, "Keras weights map")
    if len(weights_map.get("variables", ())) != len(model.weights):
        raise PretrainedError("The released weights are for a model with {} variables; this one has {}. An override "
                              "changed the architecture: drop it, or pass pretrained=False.".format(
                                  len(weights_map.get("variables", ())), len(model.weights)))
    arrays = load_arrays(bundle_dir, weights_map)
    for variable, value, v in zip(model.weights, arrays, weights_map["variables"]):
        if tuple(variable.shape) != value.shape:
            raise PretrainedError("The released weight {} has shape {}, the model's {} has {}. An override changed "
                                  "the architecture: drop it, or pass pretrained=False.".format(
                                      v["path"], value.shape, variable.path, tuple(variable.shape)))
    digest = weights_digest(arrays)
    if digest != weights_map.get("weights_sha256"):
        raise PretrainedError("The weights rebuilt from {} have sha256 {}, the release says {}: the bundle is damaged. "
                              "Fetch it again with refresh=True (CLI --refresh).".format(
                                  bundle_dir, digest, weights_map.get("weights_sha256")))
    model.set_weights(arrays)
    return model


def from_preset(name, pretrained=True, *, source=None, cache_dir=None, verbose=False, **overrides):
    """The Keras model of preset `name` (e.g. "deep_ae_fashion_mnist").

    pretrained=True: the released weights (bundled with aezoo, or from `source` / $ZOO_WEIGHTS_URL), checked
    by sha256; `overrides` may change what does not change the weights' shapes (e.g. noise_level).
    pretrained=False: the untrained model of the preset's recipe, with `overrides` of its constructor
    arguments (e.g. latent_dim=20), validated like `python -m zoo.train PRESET --set KEY=VALUE`.
    """
    import zoo

    if not pretrained:
        from zoo import presets

        preset, changed = presets.apply_overrides(name, overrides)
        return presets.build_model(preset, changed)
    from zoo import weights

    paths = weights.fetch(name, format="keras", source=source, cache_dir=cache_dir, verbose=verbose)
    manifest = schema.Manifest.load(paths["dir"])
    get_class = zoo.get_class  # loads zoo.models before zoo.registry (see zoo._startup)
    from zoo.registry import constructor_arguments

    accepted = sorted(constructor_arguments(manifest.model))
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        import difflib

        hints = ["{} (did you mean {}?)".format(k, ", ".join(difflib.get_close_matches(k, accepted, n=2)))
                 if difflib.get_close_matches(k, accepted, n=2) else k for k in unknown]
        raise PretrainedError("{} ({}) has no setting {}; it has: {}.".format(
            name, manifest.model, ", ".join(hints), ", ".join(accepted)))
    try:
        model = get_class(manifest.model).from_config(dict(manifest.model_config, **overrides))
    except (TypeError, ValueError) as exc:
        raise PretrainedError("Cannot build {} with {}: {}".format(
            name, ", ".join("{}={!r}".format(k, v) for k, v in overrides.items()) or "its released config",
            exc)) from None
    return load_into(model, paths["dir"])


def write_run_dir(name, out, *, source=None, cache_dir=None, verbose=False):
    """Write a run dir (model.keras, config.json, metrics.json) holding preset `name`'s released weights, which
    `python -m export` and `python -m export.release` take like a run trained here: released weights exported
    again by this aezoo's exporter (a newer graph form, other precisions) without training them again.

    config.json and metrics.json are the release manifest's (recipe, versions of the training, test metrics);
    `weights_source` in config.json names the release and the weights' sha256. `out` is replaced only if it is
    empty or a run dir written here before: never a run trained here. Returns `out`."""
    from zoo import weights

    out = Path(out)
    _check_released_run_target(out)
    bundle = weights.fetch(name, format="keras", source=source, cache_dir=cache_dir, verbose=verbose)["dir"]
    model, manifest = weights._keras_model(bundle)
    if not (manifest.metrics or {}).get("metrics"):
        raise PretrainedError("The release manifest of {} has no test metrics, so its run dir would look "
                              "unfinished; nothing was written to {}.".format(name, out))
    config = schema.RunConfig(
        preset=manifest.preset, model=manifest.model, dataset=manifest.dataset, model_config=manifest.model_config,
        training=manifest.training, input_shape=manifest.input_shape, latent_dim=manifest.latent_dim,
        description=manifest.description, parameters=int(model.count_params()),
        normalization=manifest.normalization, versions=dict((manifest.versions or {}).get("training") or {}),
        overrides=dict(manifest.overrides or {}),
        weights_source={"release": manifest.release, "bundle": str(bundle), "weights_sha256": manifest.weights_sha256})
    metrics = manifest.metrics
    with fileio.atomic_dir(out, "run", schema.RUN_FILES) as tmp:
        model.save(str(tmp / schema.MODEL))
        config.save(tmp)
        schema.RunMetrics(split=metrics.get("split"), num_images=metrics.get("num_images"),
                          metrics=metrics["metrics"], units=metrics.get("units") or {}).save(tmp)
        _check_released_run_target(out)  # again: a training may have started there meanwhile
    return out


def _check_released_run_target(out):
    """Refuse, in one line, a folder write_run_dir must not replace: anything but a missing or empty folder or a
    run dir it wrote before (config.json naming its weights_source). A run trained here carries the same marker,
    so the marker alone is not enough."""
    if not out.exists():
        return
    if not out.is_dir():
        raise PretrainedError("{} is a file, not a folder; choose a new folder for the run dir.".format(out))
    if not any(out.iterdir()):
        return
    try:
        written_here = schema.RunConfig.load(out).weights_source is not None
    except (schema.SchemaError, OSError):
        written_here = False
    if not (written_here and fileio.marker_kind(out) == "run" and not (out / fileio.FolderLock.NAME).exists()):
        raise PretrainedError("{} holds a run trained here or other files; it is left as it is. {}".format(
            out, fileio.HOW_TO_REPLACE))
