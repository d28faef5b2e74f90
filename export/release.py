"""Release bundles: per preset encoder.onnx, decoder.onnx, the Keras weights as a map into them, manifest.json and
SHA256SUMS. `python -m export.release runs/dae_mnist runs/conv_vae_mnist --out dist/` writes dist/<preset>/ and
dist/index.json; releases/<version>/ in the repository is such a folder, and zoo.weights reads it by default.

Every weight is stored once: the ONNX files hold them, keras_weights.json says where each Keras variable is
(zoo.pretrained). No autoencoder.onnx (encoder then decoder is the same computation) and no SavedModel
(`zoo.weights.fetch(..., format="savedmodel")` exports it locally from the Keras weights).
"""

import re
import shutil
import sys
from pathlib import Path

from export import layout, runtime
from zoo.fileio import atomic_dir
from zoo import fileio, schema
from zoo.errors import ZooError

PRESET_NAME = re.compile(r"[a-z0-9][a-z0-9_]*")
RELEASE_KIND, BUNDLE_KIND = "release", "bundle"  # marker kinds (zoo.fileio.MARKER) of OUT/ and OUT/<preset>/
PARTS = ("encoder", "decoder")  # the ONNX files a bundle ships
# Every name a bundle of aezoo 0.1 or 0.2 holds; the manifest, written last, is the defining one.
BUNDLE_FILES = (schema.MANIFEST, schema.SUMS, schema.SAVEDMODEL_ARCHIVE, schema.MODEL, schema.KERAS_WEIGHTS,
                schema.KERAS_EXTRA, *schema.ONNX_FILES.values())


def _exporter():
    from export import exporter  # TensorFlow, Keras, tf2onnx: only when a run must be exported first

    return exporter


class ReleaseError(ZooError):
    """A bundle cannot be made from the given run dirs."""


sha256_file = fileio.sha256_file


def _export_is_current(run_dir, export_dir, opset, precisions=("fp32",)):
    """Whether RUN_DIR/export holds a passed export of this model.keras at this opset with its ONNX files, lean
    and NHWC (parity.json records the layout since graphs are lean: an older export is made again), in the
    default form of transposed convolutions (recorded since that form; an older export held "slice"), with each
    variant of `precisions` measured (kept or not)."""
    needed = [export_dir / schema.ONNX_FILES[p] for p in PARTS]
    if not (export_dir / schema.PARITY).is_file() or not all(p.exists() for p in needed):
        return False
    try:
        parity = schema.Parity.load(export_dir)
    except schema.SchemaError:
        return False
    return (parity.passed is True and "onnx" in parity.formats and parity.opset == opset
            and parity.inputs.get("layout") == "nhwc" and all(p in parity.variants for p in precisions[1:])
            and (parity.conv_transpose or "slice") == layout.CONV_TRANSPOSE_FORMS[0]
            and (export_dir / schema.PARITY).stat().st_mtime >= (run_dir / schema.MODEL).stat().st_mtime)


def _variant_files(export_dir, parity, precision):
    """{part: file name} of the variant at `precision` that passed its accuracy check, or {} with why not."""
    report = parity.variants.get(precision) or {}
    if not report.get("kept"):
        return {}, report.get("error") or "; ".join(report.get("failures") or ()) or "not made"
    files = {part: schema.onnx_file(part, precision) for part in PARTS}
    missing = [name for name in files.values() if not (export_dir / name).is_file()]
    if missing:
        return {}, "{} missing from {}".format(", ".join(missing), export_dir)
    return files, None


def _run_config(run_dir):
    try:
        config = schema.RunConfig.load(run_dir)
    except schema.SchemaError as exc:
        raise ReleaseError(str(exc)) from None
    if not PRESET_NAME.fullmatch(config.preset):
        raise ReleaseError("Preset name {!r} (from {}) cannot name a release folder: use lower-case letters, digits "
                           "and underscores.".format(config.preset, run_dir / schema.CONFIG))
    return config


def _preset_of(run_dir):
    return _run_config(run_dir).preset


def _file_entry(path, fmt, role, **extra):
    return {"file": path.name, "format": fmt, "role": role, "size": path.stat().st_size,
            "sha256": sha256_file(path), **extra}


def _load_keras(run_dir):
    import importlib

    import keras

    importlib.import_module("zoo.models")  # registers the model classes for load_model

    try:
        return keras.models.load_model(run_dir / schema.MODEL)
    except Exception as exc:  # Keras raises ValueError, TypeError, OSError, zipfile errors...
        raise ReleaseError("Cannot load {}: {}".format(run_dir / schema.MODEL, exc)) from None


def release_run(run_dir, out="dist", *, data_dir=None, opset=layout.DEFAULT_OPSET, reexport=False, verbose=1,
                release_name=None, precisions=("fp32",)):
    """Write the bundle of one run dir (or preset name) to OUT/<preset>/; returns that folder.

    The run is exported first unless RUN_DIR/export/ already holds a passed export of it (with each of
    `precisions` measured). A variant (fp16, int8) ships only if it passed its accuracy check at export; the
    Keras weights map into the fp32 files only.
    """
    from zoo import pretrained

    precisions = schema.parse_precisions(precisions)
    run_dir = layout.resolve_run_dir(run_dir)
    config = _run_config(run_dir)
    preset = config.preset
    _check_out(out, [run_dir])
    fileio.check_replaceable(Path(out) / preset, BUNDLE_KIND, BUNDLE_FILES)
    export_dir = run_dir / schema.EXPORT_DIR
    if reexport or not _export_is_current(run_dir, export_dir, opset, precisions):
        _exporter().export_run(run_dir, opset=opset, out=export_dir, data_dir=data_dir, verbose=verbose,
                               precisions=precisions)
    elif verbose:
        print("Using the export in {} (its parity check passed)".format(export_dir), flush=True)
    parity = schema.Parity.load(export_dir)
    metrics = schema.RunMetrics.load(run_dir) if (run_dir / schema.METRICS).is_file() else None
    model = _load_keras(run_dir)

    dest = Path(out) / preset
    with atomic_dir(dest, BUNDLE_KIND, BUNDLE_FILES) as tmp:
        files = []
        for part in PARTS:
            name = schema.ONNX_FILES[part]
            shutil.copyfile(export_dir / name, tmp / name)
            meta = runtime.decode_metadata(_onnx_props(tmp / name))
            files.append(_file_entry(tmp / name, "onnx", part, inputs=meta.get("inputs"), outputs=meta.get("outputs")))
            # The versions that made the files, recorded at export time (not this process's).
            export_versions = (meta.get("versions") or {}).get("export")
        weights_map = pretrained.write_weights(tmp, model, [tmp / schema.ONNX_FILES[p] for p in PARTS])
        shipped = {}
        for precision in precisions[1:]:
            names, why_not = _variant_files(export_dir, parity, precision)
            if why_not:
                if verbose:
                    print("  {}: not shipped ({})".format(precision, why_not), flush=True)
                continue
            for part, name in names.items():
                shutil.copyfile(export_dir / name, tmp / name)
                meta = runtime.decode_metadata(_onnx_props(tmp / name))
                files.append(_file_entry(tmp / name, "onnx", part, inputs=meta.get("inputs"),
                                         outputs=meta.get("outputs"), precision=precision))
            shipped[precision] = {k: v for k, v in parity.variants[precision].items() if k not in ("files", "sizes")}
        files.append(_file_entry(tmp / schema.KERAS_WEIGHTS, "keras", "keras_weights",
                                 note="where each Keras variable is in the ONNX files; zoo.from_preset reads it"))
        if (tmp / schema.KERAS_EXTRA).is_file():
            files.append(_file_entry(tmp / schema.KERAS_EXTRA, "keras", "keras_extra"))
        encoder_entry = files[0]
        from zoo.presets import as_now

        description, overrides = as_now(config)  # against the preset as it is now (a --set it later adopted)
        manifest = schema.Manifest(
            preset=preset, files=files, model=config.model, description=description, dataset=config.dataset,
            input_shape=config.input_shape, latent_dim=config.latent_dim, normalization=config.normalization,
            variational="z_mean" in (encoder_entry.get("outputs") or ()), model_config=config.model_config,
            training=config.training, overrides=overrides,
            metrics={k: v for k, v in (metrics.to_dict() if metrics else {}).items()
                     if k in ("split", "num_images", "metrics", "units")},
            parity=dict({k: getattr(parity, k)
                         for k in ("passed", "tolerance", "batch_sizes", "max_abs_diff", "inputs", "conv_transpose")},
                        **({"variants": shipped} if shipped else {})),
            versions={"training": config.versions, "export": export_versions},
            weights_sha256=weights_map["weights_sha256"], release=release_name or Path(out).name)
        if manifest.variational:
            manifest.sampling = runtime.SAMPLING_DOC
        manifest.save(tmp)
        sums = [(e["sha256"], e["file"]) for e in files] + [(sha256_file(tmp / schema.MANIFEST), schema.MANIFEST)]
        # The format `sha256sum -c SHA256SUMS` reads.
        fileio.write_text(tmp / schema.SUMS, "".join("{}  {}\n".format(digest, name) for digest, name in sums))
    if verbose:
        print("Released {} -> {}".format(preset, dest), flush=True)
        for e in files:
            print("  {:<20} {:>10,d} bytes  sha256 {}".format(e["file"], e["size"], e["sha256"]), flush=True)
    return dest


def _check_out(out, run_dirs):
    """OUT must be new, empty, a release folder aezoo made, and apart from every run it bundles."""
    out = Path(out)
    for run_dir in run_dirs:
        if fileio.overlaps(out, run_dir):
            raise ReleaseError("--out {} overlaps the run dir {} that is being released; choose a folder outside "
                               "it, e.g. dist/.".format(out, run_dir))
    if out.is_dir() and fileio.marker_kind(out) != RELEASE_KIND:
        # An unmarked release of aezoo 0.1: index.json and bundle folders only.
        legacy = all(p.name == schema.INDEX or p.name.startswith((fileio.PARTIAL, fileio.OLD))
                     or (p.is_dir() and (p / schema.MANIFEST).is_file() and (p / schema.SUMS).is_file())
                     for p in out.iterdir())
        if not legacy:
            fileio.check_replaceable(out, RELEASE_KIND)
    elif out.exists() and not out.is_dir():
        raise ReleaseError("--out {} is a file, not a folder.".format(out))


def _onnx_props(path):
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def write_index(out, release_name=None):
    """OUT/index.json: every preset bundle in OUT, so a client can list what a release holds."""
    out = Path(out)
    presets = {}
    for manifest_path in sorted(out.glob("*/" + schema.MANIFEST)):
        try:
            manifest = schema.Manifest.load(manifest_path.parent)
        except schema.SchemaError:
            continue
        presets[manifest.preset] = {
            "model": manifest.model, "dataset": manifest.dataset, "latent_dim": manifest.latent_dim,
            "manifest": "{}/{}".format(manifest_path.parent.name, schema.MANIFEST),
            "manifest_sha256": sha256_file(manifest_path),
            "size": sum(e["size"] for e in manifest.files),
            "metrics": manifest.metrics.get("metrics", {}),
            "training": {k: manifest.training.get(k) for k in ("epochs", "batch_size", "learning_rate", "seed")},
        }
    return schema.Index(presets=presets, release=release_name or out.name).save(out)


def release(run_dirs, out="dist", *, data_dir=None, opset=layout.DEFAULT_OPSET, reexport=False, verbose=1,
            release_name=None, precisions=("fp32",)):
    """Bundle every run dir into OUT/<preset>/ and refresh OUT/index.json; returns {preset: folder}."""
    if not run_dirs:
        raise ReleaseError("Name at least one run dir (or preset) to release.")
    precisions = schema.parse_precisions(precisions)
    seen = {}
    for run_dir in run_dirs:
        path = layout.resolve_run_dir(run_dir)
        preset = _preset_of(path)
        if preset in seen:
            raise ReleaseError("{} and {} are both preset {}; release one of them.".format(seen[preset], path, preset))
        seen[preset] = path
    _check_out(out, list(seen.values()))
    created = not Path(out).exists() or not any(Path(out).iterdir())
    bundles = {}
    try:
        if created:  # marked at once, so a killed release can be run again into the same folder
            fileio.write_marker(out, RELEASE_KIND)
        for preset, path in seen.items():
            bundles[preset] = release_run(path, out, data_dir=data_dir, opset=opset, reexport=reexport,
                                          verbose=verbose, release_name=release_name, precisions=precisions)
        write_index(out, release_name)
        fileio.write_marker(out, RELEASE_KIND)
    except BaseException:
        if created and Path(out).is_dir() and {p.name for p in Path(out).iterdir()} <= {fileio.MARKER}:
            shutil.rmtree(out)  # leave no empty folder behind
        raise
    return bundles


from export.cli import release_main as main  # noqa: E402  (the command line, light: see export.cli)

if __name__ == "__main__":
    sys.exit(main())
