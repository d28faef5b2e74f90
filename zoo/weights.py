"""Released weights: fetch a preset's release bundle into a sha256-checked cache, as ONNX, Keras or SavedModel.

`zoo.weights.fetch("deep_ae_fashion_mnist")` reads the release bundled with aezoo (releases/<version>/ in
the repository: no network, no setting); `source=` or $ZOO_WEIGHTS_URL names a mirror instead (an
http(s):// base such as a GitHub release holding the same files, file://, or a folder).
CLI: `python -m zoo.weights fetch deep_ae_fashion_mnist`, `python -m zoo.weights list`.
"""

import hashlib
import http.client
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path


from zoo import fileio, schema
from zoo.errors import UnknownNameError, ZooError, disk_error, run_cli
from zoo.schema import INDEX, MANIFEST, SAVEDMODEL_DIR

FORMATS = ("onnx", "keras", "savedmodel")
#: The file formats a manifest entry may have, and the ones each requested format needs.
ENTRY_FORMATS = ("onnx", "keras", "savedmodel")
NEEDS = {"onnx": ("onnx",), "keras": ("onnx", "keras"), "savedmodel": ("onnx", "keras")}
ENV_SOURCE = "ZOO_WEIGHTS_URL"
ENV_CACHE = "ZOO_CACHE_DIR"
DEFAULT_CACHE = "~/.cache/aezoo"
#: The releases shipped in the repository; the newest one is the default source.
BUNDLED_RELEASES = Path(__file__).resolve().parents[1] / schema.RELEASES_DIR
SOURCE_FILE = ".source"  # which release the cached manifest came from
EXTRACTED_MARK = ".savedmodel.sha256"  # what the savedmodel/ folder was made from (archive or weights sha256)
KERAS_MARK = ".model.keras.sha256"  # the weights sha256 the cached model.keras was built from
INCOMING = ".incoming"
TIMEOUT_S = 60.0  # per socket operation: a stalled server fails the download instead of hanging it
SCHEMES = ("http", "https", "file")
_NAME = re.compile(r"[a-z0-9][a-z0-9_]*")
_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Names a manifest entry may not take: they would land on the cache's own files and folders.
RESERVED = {MANIFEST, INDEX, SAVEDMODEL_DIR, SOURCE_FILE, EXTRACTED_MARK, KERAS_MARK}
STALE_STAGING_S = 24 * 3600  # a staging folder without a readable pid is removed after this long


class WeightsError(ZooError):
    """Weights cannot be fetched: no source, source unreachable, bad manifest."""


class ChecksumError(WeightsError):
    """A downloaded file does not match the sha256 (or size) its manifest gives; it was deleted."""


class IncompleteDownloadError(ChecksumError):
    """The connection ended before the whole file arrived; nothing was kept."""


class _NotFound(Exception):
    pass


# --- places ------------------------------------------------------------------------------------------


def cache_root(cache_dir=None):
    """The cache folder: `cache_dir`, else $ZOO_CACHE_DIR, else ~/.cache/aezoo."""
    return Path(cache_dir or os.environ.get(ENV_CACHE) or DEFAULT_CACHE).expanduser()


def normalize_source(source):
    """A release base as a URL without a trailing slash: http(s)://, file://, or a local folder."""
    text = os.fspath(source).strip()
    scheme = urllib.parse.urlsplit(text).scheme.lower()
    if scheme in SCHEMES:
        return text.rstrip("/")
    if "://" in text:
        raise WeightsError("Unsupported weights source {!r}: use an http(s):// or file:// URL, or a local folder."
                           .format(text))
    path = Path(text).expanduser()
    if not path.is_dir():
        raise WeightsError("Weights source {} is not a folder (nor an http(s):// or file:// URL).".format(text))
    return path.resolve().as_uri()


def _check_preset(preset):
    if not isinstance(preset, str) or not _NAME.fullmatch(preset):
        raise WeightsError("{!r} is not a preset name (lower-case letters, digits and underscores, e.g. dae_mnist)."
                           .format(preset))


def _check_format(format):
    if format not in FORMATS:
        raise WeightsError("Unknown format {!r}; choose one of {}.".format(format, ", ".join(FORMATS)))


# --- downloading -------------------------------------------------------------------------------------


def _is_not_found(exc):
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code in (404, 410)
    if isinstance(exc, FileNotFoundError):
        return True
    return isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, FileNotFoundError)


class _Progress:
    """A one-line progress display on a terminal; nothing in a log file."""

    def __init__(self, name, total, verbose):
        self.name, self.total = name, total
        self.live = verbose and sys.stderr.isatty()
        self._shown = -1

    def update(self, done):
        if not self.live:
            return
        percent = int(100 * done / self.total) if self.total else -1
        if percent != self._shown:
            self._shown = percent
            of = " / {:.1f} MB ({}%)".format(self.total / 1e6, percent) if self.total else " MB"
            print("\r  {}: {:.1f}{}".format(self.name, done / 1e6, of), end="", file=sys.stderr, flush=True)

    def close(self):
        if self.live:
            print(file=sys.stderr, flush=True)


_sha256 = fileio.sha256_file


def _download(url, dest, staging, entry=None, verbose=True):
    """Download `url` into `staging`, hashing it on the way, check it, then move it to `dest`.

    Plain urllib rather than keras.utils.get_file: that one imports Keras and with it TensorFlow, which
    a weights download (and an install for inference only) must not need. With a manifest `entry` the
    size and sha256 must match, or ChecksumError (the file is deleted). Raises _NotFound for a 404 or a
    missing file:// path, IncompleteDownloadError when the connection ends early, WeightsError otherwise.
    """
    staging = Path(staging)
    staging.mkdir(parents=True, exist_ok=True)
    staged = staging / dest.name
    if verbose:
        print("Downloading data from {}".format(url), flush=True)
    digest, got, total = hashlib.sha256(), 0, None
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(staged, "wb") as f:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            progress = _Progress(dest.name, total, verbose)
            try:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    f.write(chunk)
                    digest.update(chunk)
                    got += len(chunk)
                    progress.update(got)
            finally:
                progress.close()
        if total is not None and got < total:
            raise IncompleteDownloadError("Download of {} was cut short (got only {} out of {} bytes). Nothing was "
                                          "kept; try again.".format(url, got, total))
    except BaseException as exc:
        staged.unlink(missing_ok=True)
        if isinstance(exc, (WeightsError, KeyboardInterrupt)) or disk_error(exc):
            raise
        if _is_not_found(exc):
            raise _NotFound(url) from None
        if isinstance(exc, (http.client.IncompleteRead, ConnectionError)):
            raise IncompleteDownloadError("Download of {} was cut short (got only {} out of {} bytes: {}). Nothing was "
                                          "kept; try again.".format(url, got, total or "?", type(exc).__name__)) from None
        if isinstance(exc, (OSError, http.client.HTTPException, ValueError)):
            raise WeightsError("Cannot download {}: {}".format(url, exc)) from None
        raise
    if entry is not None:
        if got != entry["size"] or digest.hexdigest() != entry["sha256"]:
            staged.unlink()
            if got < entry["size"]:
                raise IncompleteDownloadError("Download of {} is incomplete: got {} bytes, the manifest says {}. "
                                              "Nothing was kept; try again.".format(url, got, entry["size"]))
            if got != entry["size"]:
                raise ChecksumError("{} has {} bytes, but the manifest says {}: the file is not the released one. It "
                                    "was deleted, not cached.".format(url, got, entry["size"]))
            raise ChecksumError("sha256 of {} is {}, but the manifest says {}: the file is corrupt or was replaced. "
                                "It was deleted, not cached.".format(url, digest.hexdigest(), entry["sha256"]))
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, dest)
    return dest


# --- manifests ---------------------------------------------------------------------------------------


def _parse_manifest(path, preset, where):
    try:
        manifest = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError("{} is not a readable manifest: {}".format(where, exc)) from None
    problems = []
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        problems.append("no list of files")
    else:
        if manifest.get("preset") != preset:
            problems.append("it is for preset {!r}".format(manifest.get("preset")))
        for entry in manifest["files"]:
            if not (isinstance(entry, dict) and isinstance(entry.get("file"), str) and _FILE.fullmatch(entry["file"])
                    and entry["file"] not in RESERVED and isinstance(entry.get("sha256"), str)
                    and _SHA256.fullmatch(entry["sha256"]) and isinstance(entry.get("size"), int)
                    and entry.get("format") in ENTRY_FORMATS):
                problems.append("bad file entry {!r}".format(entry))
        names = [e.get("file") for e in manifest["files"] if isinstance(e, dict)]
        if len(names) != len(set(names)):
            problems.append("a file is listed twice")
    if problems:
        raise WeightsError("{} is not a valid aezoo manifest for {}: {}.".format(where, preset, "; ".join(problems)))
    return manifest


def _entries(manifest, format, where):
    """The manifest entries `format` needs: onnx -> the ONNX files; keras -> those and the weights map (or an
    0.1 bundle's model.keras); savedmodel -> an 0.1 bundle's archive, else what keras needs (exported here)."""
    if format == "savedmodel" and any(e["format"] == "savedmodel" for e in manifest["files"]):
        return [e for e in manifest["files"] if e["format"] == "savedmodel"]
    needed = NEEDS[format]
    entries = [e for e in manifest["files"] if e["format"] in needed]
    if not any(e["format"] == needed[-1] for e in entries):
        have = sorted({e["format"] for e in manifest["files"]})
        raise WeightsError("The release of {} at {} has no {} files; it has: {}.".format(
            manifest["preset"], where, needed[-1], ", ".join(have) or "none"))
    if format != "onnx" and any(e["format"] == "keras" and e["file"] == schema.MODEL for e in entries):
        entries = [e for e in entries if e["format"] == "keras"]  # an 0.1 bundle: model.keras holds them all
    return entries


def _is_valid(path, entry):
    return path.is_file() and path.stat().st_size == entry["size"] and _sha256(path) == entry["sha256"]


def list_released(source=None, cache_dir=None, verbose=False):
    """{preset: summary} from the release's index.json (written by export.release)."""
    source = _source(source)
    if source is None:
        raise WeightsError(_no_source_message())
    index = _read_index(source, cache_root(cache_dir), verbose)
    if index is None:
        raise WeightsError("{} has no {} listing its presets.".format(source, INDEX))
    return index


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def _staging(root):
    """A fresh staging folder in the cache, named after this process; first removes the ones that a killed
    fetch left behind (their process is gone, or, without a pid in the name, they are a day old)."""
    root.mkdir(parents=True, exist_ok=True)
    for old in root.glob(INCOMING + "-*"):
        match = re.match(re.escape(INCOMING) + r"-(\d+)-", old.name)
        try:
            stale = (not _pid_alive(int(match.group(1)))) if match else (
                time.time() - old.stat().st_mtime > STALE_STAGING_S)
        except OSError:
            continue
        if stale and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=root, prefix="{}-{}-".format(INCOMING, os.getpid())))


def _read_index(source, root, verbose):
    staging = _staging(root)
    try:
        path = _download(source + "/" + INDEX, staging / "index.download", staging / "get", verbose=verbose)
        index = json.loads(path.read_text())
        return dict(index["presets"])
    except (_NotFound, WeightsError, ValueError, KeyError, TypeError):
        return None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _unknown_preset(preset, source, root):
    index = _read_index(source, root, verbose=False)
    message = "Preset {!r} is not in the release at {} (there is no {}/{}/{}).".format(
        preset, source, source, preset, MANIFEST)
    if index is None:
        message += " The source has no {} listing its presets.".format(INDEX)
    elif not index:
        message += " The release holds no presets."
    else:
        import difflib

        close = difflib.get_close_matches(preset, sorted(index), n=3, cutoff=0.6)
        message += (" Did you mean: {}?".format(", ".join(close)) if close else "") + " It has: {}.".format(
            ", ".join(sorted(index)))
    return UnknownNameError(message)


def bundled_release():
    """The newest release shipped in the repository (releases/<version>/ with an index.json), or None."""
    if not BUNDLED_RELEASES.is_dir():
        return None

    def version(path):
        return tuple(int(n) for n in re.findall(r"\d+", path.name))

    found = sorted((p for p in BUNDLED_RELEASES.iterdir() if (p / INDEX).is_file()), key=version)
    return found[-1].resolve() if found else None


def bundled_source():
    """file:// URL of `bundled_release()`, or None."""
    folder = bundled_release()
    return None if folder is None else folder.as_uri()


def _source(source):
    """The source to use: `source`, else $ZOO_WEIGHTS_URL, else the bundled release."""
    source = source if source is not None else os.environ.get(ENV_SOURCE) or None
    return normalize_source(source) if source else bundled_source()


def _no_source_message(preset=None, root=None):
    where = ""
    if preset is not None:
        where = " The cache {} holds no complete {} bundle to use offline.".format(root / preset, preset)
    return ("No weights source: this install has no bundled release ({} is missing; it ships in the aezoo "
            "repository). Pass source= (CLI: --source URL_OR_DIR) or set {} to a release base URL (https://..., "
            "file://...) or a folder of bundles.{}".format(BUNDLED_RELEASES, ENV_SOURCE, where))


# --- fetch -------------------------------------------------------------------------------------------


def _extract_savedmodel(archive, preset_dir, sha256):
    """Unpack savedmodel.tar.gz to preset_dir/savedmodel/ atomically; skipped if already done for this archive."""
    dest = preset_dir / SAVEDMODEL_DIR
    mark = preset_dir / EXTRACTED_MARK
    if dest.is_dir() and mark.is_file() and mark.read_text().strip() == sha256:
        return dest
    tmp = Path(tempfile.mkdtemp(dir=preset_dir, prefix=".partial-savedmodel-"))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            names = tar.getnames()
            if not names or any((n != SAVEDMODEL_DIR and not n.startswith(SAVEDMODEL_DIR + "/")) or ".." in
                                n.split("/") for n in names):
                raise WeightsError("{} does not hold a single {}/ folder.".format(archive, SAVEDMODEL_DIR))
            if any(not (m.isfile() or m.isdir()) for m in tar.getmembers()):
                raise WeightsError("{} holds links or special files; a SavedModel has none.".format(archive))
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: also refuses absolute paths and odd modes
                tar.extractall(tmp, filter="data")
            else:
                tar.extractall(tmp)  # names were checked above: all under savedmodel/
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(dir=preset_dir, prefix=".old-savedmodel-"))
            os.replace(dest, old / SAVEDMODEL_DIR)
        os.replace(tmp / SAVEDMODEL_DIR, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except (tarfile.TarError, OSError) as exc:
        raise WeightsError("Cannot unpack {}: {}".format(archive, exc)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fileio.write_text(mark, sha256 + "\n")
    return dest


def _keras_model(preset_dir):
    """The Keras model of a fetched bundle, its weights rebuilt from the ONNX files (zoo.pretrained)."""
    import zoo
    from zoo import pretrained

    manifest = schema.Manifest.load(preset_dir)
    model = zoo.get_class(manifest.model).from_config(manifest.model_config)
    return pretrained.load_into(model, preset_dir), manifest


def _made_from(mark, digest):
    return mark.is_file() and mark.read_text().strip() == digest


def _keras_file(preset_dir):
    """preset_dir/model.keras, built once from the bundle (keras.models.load_model reads it after `import zoo`)."""
    dest, mark = preset_dir / schema.MODEL, preset_dir / KERAS_MARK
    digest = schema.Manifest.load(preset_dir).weights_sha256
    if dest.is_file() and _made_from(mark, digest):
        return dest
    model, _ = _keras_model(preset_dir)
    with fileio.atomic_path(dest) as tmp:
        model.save(tmp)
    fileio.write_text(mark, digest + "\n")
    return dest


def _savedmodel_dir(preset_dir):
    """preset_dir/savedmodel/, exported here from the bundle's Keras weights (TensorFlow needed), once."""
    dest, mark = preset_dir / SAVEDMODEL_DIR, preset_dir / EXTRACTED_MARK
    digest = schema.Manifest.load(preset_dir).weights_sha256
    if dest.is_dir() and _made_from(mark, digest):
        return dest
    from export.exporter import write_savedmodel

    model, _ = _keras_model(preset_dir)
    with fileio.atomic_dir(dest) as tmp:
        write_savedmodel(model, tmp / SAVEDMODEL_DIR)
        for path in (tmp / SAVEDMODEL_DIR).iterdir():
            os.replace(path, tmp / path.name)
        (tmp / SAVEDMODEL_DIR).rmdir()
    fileio.write_text(mark, digest + "\n")
    return dest


def _result(preset_dir, entries, format="onnx"):
    paths = {"dir": preset_dir, "manifest": preset_dir / MANIFEST}
    for entry in entries:
        path = preset_dir / entry["file"]
        if entry["format"] == "savedmodel":
            paths["savedmodel_archive"] = path
            paths["savedmodel"] = _extract_savedmodel(path, preset_dir, entry["sha256"])
        else:
            key = entry.get("role") or entry["file"]
            if entry.get("precision", "fp32") != "fp32":  # encoder.int8.onnx -> "encoder_int8"
                key = "{}_{}".format(key, entry["precision"])
            paths[key] = path
    if "keras_weights" in paths:
        if format == "keras":
            paths["keras"] = _keras_file(preset_dir)
        elif format == "savedmodel":
            paths["savedmodel"] = _savedmodel_dir(preset_dir)
    return paths


def fetch(preset, format="onnx", source=None, cache_dir=None, refresh=False, verbose=True):
    """Fetch one format of a preset's released weights; returns {name: local pathlib.Path}.

    `source`: a release base (https://..., http://..., file://... or a folder) holding
    <preset>/manifest.json and the files it lists; default $ZOO_WEIGHTS_URL. Files land in
    `cache_dir` (default $ZOO_CACHE_DIR or ~/.cache/aezoo) under <preset>/, each checked against the
    manifest's sha256; a mismatch raises ChecksumError and leaves nothing behind. When the cache
    already holds valid files, no network is used (`refresh=True` re-reads the manifest).

    Keys: "dir" (the preset's cache folder, loadable by export.runtime.Runtime for onnx), "manifest",
    then per format: onnx -> "encoder", "decoder", "autoencoder" (.onnx files); savedmodel ->
    "savedmodel" (the extracted folder, for tf.saved_model.load) and "savedmodel_archive" (.tar.gz);
    keras -> "keras" (model.keras, for keras.models.load_model after `import zoo`).
    """
    _check_preset(preset)
    _check_format(format)
    root = cache_root(cache_dir)
    preset_dir = root / preset
    source = _source(source)
    say = print if verbose else (lambda *a, **k: None)

    source_file = preset_dir / SOURCE_FILE
    cached_source = source_file.read_text().strip() if source_file.is_file() else None
    if not refresh and (preset_dir / MANIFEST).is_file() and source in (None, cached_source):
        try:
            manifest = _parse_manifest(preset_dir / MANIFEST, preset, preset_dir / MANIFEST)
            entries = _entries(manifest, format, cached_source or preset_dir)
        except WeightsError:
            entries = None  # damaged, or without this format: ask the source
        if entries and all(_is_valid(preset_dir / e["file"], e) for e in entries):
            say("Using cached {} {} weights in {} (sha256 verified)".format(preset, format, preset_dir))
            return _result(preset_dir, entries, format)
        # Anything to download means the manifest is read afresh too, in case the release changed.
        source = source or cached_source
    if source is None:
        raise WeightsError(_no_source_message(preset, root))

    try:
        staging = _staging(root)
    except OSError as exc:
        raise WeightsError("Cannot write to the weights cache {}: {}. Set {} or pass cache_dir= (--cache-dir)."
                           .format(root, exc, ENV_CACHE)) from None
    base = "{}/{}/".format(source, preset)
    try:
        try:
            new_manifest = _download(base + MANIFEST, staging / MANIFEST, staging / "get", verbose=verbose)
        except _NotFound:
            raise _unknown_preset(preset, source, root) from None
        manifest = _parse_manifest(new_manifest, preset, base + MANIFEST)
        entries = _entries(manifest, format, source)
        for entry in entries:
            dest = preset_dir / entry["file"]
            if _is_valid(dest, entry):
                say("Using cached {} (sha256 verified)".format(dest))
                continue
            try:
                _download(base + entry["file"], dest, staging / "get", entry=entry, verbose=verbose)
            except _NotFound:
                raise WeightsError("{} lists {}, but {} is missing from the release.".format(
                    base + MANIFEST, entry["file"], base + entry["file"])) from None
        # The manifest goes last: a cached manifest always describes files that were checked against it.
        os.replace(new_manifest, preset_dir / MANIFEST)
        if cached_source != source:
            fileio.write_text(source_file, source + "\n")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    say("{} {} weights in {}".format(preset, format, preset_dir))
    return _result(preset_dir, entries, format)


# --- command line ------------------------------------------------------------------------------------


def main(argv=None):
    from zoo.cli import make_parser

    parser = make_parser("zoo.weights", "Download released aezoo weights into a sha256-checked cache.", [
        "list --source https://example.org/aezoo/v0.1",
        "fetch dae_mnist --format onnx          # source from $ZOO_WEIGHTS_URL",
        "fetch conv_ae_fashion_mnist --format keras --source dist/ --cache-dir /tmp/w",
        "fetch conv_ae_fashion_mnist --run-dir runs/conv_ae_fashion_mnist   # then python -m export.release ..."])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fetch", help="download (or reuse from the cache) one preset's weights")
    p.add_argument("preset", help="preset name, e.g. dae_mnist")
    p.add_argument("--format", default="onnx", choices=FORMATS, help="default %(default)s")
    p.add_argument("--source", help="release base URL (https://, http://, file://) or folder; default ${}".format(
        ENV_SOURCE))
    p.add_argument("--cache-dir", help="default ${} or {}".format(ENV_CACHE, DEFAULT_CACHE))
    p.add_argument("--refresh", action="store_true", help="download the manifest again even if cached")
    p.add_argument("--quiet", action="store_true", help="no progress output; print only the paths")
    p.add_argument("--run-dir", help="also write a run dir holding these weights (model.keras, config.json, "
                                     "metrics.json), which python -m export and python -m export.release take: "
                                     "released weights exported again by this aezoo")
    p = sub.add_parser("list", help="list the presets a release holds (its index.json)")
    p.add_argument("--source")
    p.add_argument("--cache-dir")
    args = parser.parse_args(argv)

    def body():
        if args.command == "list":
            released = list_released(args.source, args.cache_dir)
            width = max((len(n) for n in released), default=0)
            for name, info in sorted(released.items()):
                error = (info.get("metrics") or {}).get("sq_error_per_image")
                extra = [] if info.get("size") is None else ["{:.1f} MB".format(info["size"] / 1e6)]
                extra += [] if error is None else ["test sq. error {:.2f}".format(error)]
                print("{}  {} on {}{}".format(name.ljust(width), info.get("model"), info.get("dataset"),
                                            "  ({})".format(", ".join(extra)) if extra else ""))
            return 0
        paths = fetch(args.preset, format=args.format, source=args.source, cache_dir=args.cache_dir,
                      refresh=args.refresh, verbose=not args.quiet)
        if args.run_dir:
            from zoo import pretrained

            paths["run_dir"] = pretrained.write_run_dir(args.preset, args.run_dir, source=args.source,
                                                        cache_dir=args.cache_dir)
        for name, path in paths.items():
            print("{}: {}".format(name, path))
        return 0

    return run_cli(body, interrupted="Interrupted; nothing partial was kept in the cache. Run the command again.")


if __name__ == "__main__":
    sys.exit(main())
