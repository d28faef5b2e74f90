"""Release bundles: per preset the ONNX files, the SavedModel as .tar.gz, model.keras, manifest.json, SHA256SUMS.
`python -m export.release runs/dae_mnist runs/conv_vae_mnist --out dist/` writes dist/<preset>/ and dist/index.json."""

import gzip
import io
import json
import re
import shutil
import sys
import tarfile
from pathlib import Path

from export import layout, runtime
from zoo.fileio import atomic_dir
from zoo import fileio
from zoo.errors import ZooError

MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
INDEX = "index.json"
SAVEDMODEL_ARCHIVE = "savedmodel.tar.gz"
MANIFEST_VERSION = 1
PRESET_NAME = re.compile(r"[a-z0-9][a-z0-9_]*")
RELEASE_KIND, BUNDLE_KIND = "release", "bundle"  # marker kinds (zoo.fileio.MARKER) of OUT/ and OUT/<preset>/
BUNDLE_FILES = (MANIFEST, SUMS, SAVEDMODEL_ARCHIVE, "model.keras", *layout.ENDPOINTS.values())  # an 0.1 bundle


def _exporter():
    from export import exporter  # TensorFlow, Keras, tf2onnx: only when a run must be exported first

    return exporter


class ReleaseError(ZooError):
    """A bundle cannot be made from the given run dirs."""


sha256_file = fileio.sha256_file


def tar_gz(src_dir, dest, arcname):
    """A reproducible .tar.gz of a folder: sorted entries, no times or owners, so equal input gives equal sha256."""
    src_dir = Path(src_dir)
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            paths = [src_dir] + sorted(src_dir.rglob("*"))
            for path in paths:
                name = arcname if path == src_dir else "{}/{}".format(arcname, path.relative_to(src_dir).as_posix())
                info = tarfile.TarInfo(name)
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                if path.is_dir():
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                else:
                    info.size, info.mode = path.stat().st_size, 0o644
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
    with fileio.atomic_path(dest) as tmp:
        tmp.write_bytes(raw.getvalue())
    return Path(dest)


def _export_is_current(run_dir, export_dir, opset):
    """Whether RUN_DIR/export holds a passed, complete export of this model.keras at this opset."""
    parity_file = export_dir / layout.PARITY_FILE
    needed = [export_dir / f for f in layout.ENDPOINTS.values()] + [export_dir / layout.SAVEDMODEL_DIR]
    if not parity_file.is_file() or not all(p.exists() for p in needed):
        return False
    try:
        parity = json.loads(parity_file.read_text())
    except ValueError:
        return False
    return (parity.get("passed") is True and set(parity.get("formats", ())) == set(layout.FORMATS)
            and parity.get("opset") == opset
            and parity_file.stat().st_mtime >= (run_dir / "model.keras").stat().st_mtime)


def _preset_of(run_dir):
    try:
        config = json.loads((run_dir / "config.json").read_text())
    except ValueError as exc:
        raise ReleaseError("Cannot read {}: {}".format(run_dir / "config.json", exc)) from None
    preset = config.get("preset") or run_dir.name
    if not PRESET_NAME.fullmatch(preset):
        raise ReleaseError("Preset name {!r} (from {}) cannot name a release folder: use lower-case letters, digits "
                           "and underscores.".format(preset, run_dir / "config.json"))
    return preset


def _file_entry(path, fmt, role, **extra):
    return {"file": path.name, "format": fmt, "role": role, "size": path.stat().st_size,
            "sha256": sha256_file(path), **extra}


def release_run(run_dir, out="dist", *, data_dir=None, opset=layout.DEFAULT_OPSET, reexport=False, verbose=1):
    """Write the bundle of one run dir (or preset name) to OUT/<preset>/; returns that folder.

    The run is exported first unless RUN_DIR/export/ already holds a passed export of it.
    """
    run_dir = layout.resolve_run_dir(run_dir)
    preset = _preset_of(run_dir)
    _check_out(out, [run_dir])
    fileio.check_replaceable(Path(out) / preset, BUNDLE_KIND, BUNDLE_FILES)
    config = json.loads((run_dir / "config.json").read_text())
    export_dir = run_dir / "export"
    if reexport or not _export_is_current(run_dir, export_dir, opset):
        _exporter().export_run(run_dir, opset=opset, out=export_dir, data_dir=data_dir, verbose=verbose)
    elif verbose:
        print("Using the export in {} (its parity check passed)".format(export_dir), flush=True)
    parity = json.loads((export_dir / layout.PARITY_FILE).read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}

    dest = Path(out) / preset
    with atomic_dir(dest, BUNDLE_KIND, BUNDLE_FILES) as tmp:
        files = []
        for endpoint in ("encode", "decode", "reconstruct"):
            name = layout.ENDPOINTS[endpoint]
            shutil.copyfile(export_dir / name, tmp / name)
            meta = runtime.decode_metadata(_onnx_props(tmp / name))
            files.append(_file_entry(tmp / name, "onnx", layout.ROLES[endpoint],
                                     inputs=meta.get("inputs"), outputs=meta.get("outputs")))
            # The versions that made the files, recorded at export time (not this process's).
            export_versions = (meta.get("versions") or {}).get("export")
        tar_gz(export_dir / layout.SAVEDMODEL_DIR, tmp / SAVEDMODEL_ARCHIVE, "savedmodel")
        files.append(_file_entry(tmp / SAVEDMODEL_ARCHIVE, "savedmodel", "savedmodel",
                                 signatures=["reconstruct (serving_default)", "encode", "decode"]))
        shutil.copyfile(run_dir / "model.keras", tmp / "model.keras")
        files.append(_file_entry(tmp / "model.keras", "keras", "keras",
                                 note="load with keras.models.load_model after `import zoo`"))
        encoder_entry = next(e for e in files if e["role"] == "encoder")
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "preset": preset,
            "model": config.get("model"),
            "description": config.get("description"),
            "dataset": config.get("dataset"),
            "input_shape": config.get("input_shape"),
            "latent_dim": config.get("latent_dim"),
            "normalization": config.get("normalization") or runtime.NORMALIZATION,
            "variational": "z_mean" in (encoder_entry.get("outputs") or ()),
            "files": files,
            "metrics": {k: metrics[k] for k in ("split", "num_images", "metrics", "units") if k in metrics},
            "training": config.get("training", {}),
            "parity": {k: parity.get(k) for k in ("passed", "tolerance", "batch_sizes", "max_abs_diff", "inputs")},
            "versions": {"training": config.get("versions", {}), "export": export_versions},
        }
        if manifest["variational"]:
            manifest["sampling"] = runtime.SAMPLING_DOC
        fileio.write_json(tmp / MANIFEST, manifest)
        sums = [(e["sha256"], e["file"]) for e in files] + [(sha256_file(tmp / MANIFEST), MANIFEST)]
        # The format `sha256sum -c SHA256SUMS` reads.
        fileio.write_text(tmp / SUMS, "".join("{}  {}\n".format(digest, name) for digest, name in sums))
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
        legacy = all(p.name == INDEX or p.name.startswith((fileio.PARTIAL, fileio.OLD))
                     or (p.is_dir() and (p / MANIFEST).is_file() and (p / SUMS).is_file()) for p in out.iterdir())
        if not legacy:
            fileio.check_replaceable(out, RELEASE_KIND)
    elif out.exists() and not out.is_dir():
        raise ReleaseError("--out {} is a file, not a folder.".format(out))


def _onnx_props(path):
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def write_index(out):
    """OUT/index.json: every preset bundle in OUT, so a client can list what a release holds."""
    out = Path(out)
    presets = {}
    for manifest_path in sorted(out.glob("*/" + MANIFEST)):
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError:
            continue
        presets[manifest["preset"]] = {
            "model": manifest.get("model"), "dataset": manifest.get("dataset"),
            "latent_dim": manifest.get("latent_dim"), "manifest": "{}/{}".format(manifest_path.parent.name, MANIFEST),
            "manifest_sha256": sha256_file(manifest_path),
            "metrics": manifest.get("metrics", {}).get("metrics", {}),
        }
    return fileio.write_json(out / INDEX, {"index_version": MANIFEST_VERSION, "presets": presets})


def release(run_dirs, out="dist", *, data_dir=None, opset=layout.DEFAULT_OPSET, reexport=False, verbose=1):
    """Bundle every run dir into OUT/<preset>/ and refresh OUT/index.json; returns {preset: folder}."""
    if not run_dirs:
        raise ReleaseError("Name at least one run dir (or preset) to release.")
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
                                          verbose=verbose)
        write_index(out)
        fileio.write_marker(out, RELEASE_KIND)
    except BaseException:
        if created and Path(out).is_dir() and {p.name for p in Path(out).iterdir()} <= {fileio.MARKER}:
            shutil.rmtree(out)  # leave no empty folder behind
        raise
    return bundles


from export.cli import release_main as main  # noqa: E402  (the command line, light: see export.cli)

if __name__ == "__main__":
    sys.exit(main())
