"""Run exported aezoo ONNX models with numpy and onnxruntime only (no TensorFlow, Keras or `zoo`; one file
to copy to a device). Shapes and normalization come from the ONNX metadata: `Runtime(path).encode(images)`."""

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

#: File name of each role in a bundle folder (an export dir, a release bundle, a fetched cache dir).
FILES = {"encoder": "encoder.onnx", "decoder": "decoder.onnx", "autoencoder": "autoencoder.onnx"}
NORMALIZATION = "float32 in [0, 1], NHWC"

# metadata_props written by export.exporter; the JSON ones hold lists, dicts or numbers.
META_PREFIX = "aezoo."
META_KEYS = ("format_version", "preset", "family", "role", "dataset", "latent_dim", "input_shape", "normalization",
             "variational", "inputs", "outputs", "metrics", "versions", "sampling")
JSON_KEYS = {"format_version", "latent_dim", "input_shape", "variational", "inputs", "outputs", "metrics", "versions"}
REQUIRED_KEYS = ("role", "latent_dim", "input_shape", "inputs", "outputs")

SAMPLING_DOC = ("The encoder gives the Gaussian posterior q(z|x) = N(z_mean, exp(z_log_var)). Sample a code as "
                "z = z_mean + exp(0.5 * z_log_var) * eps with eps ~ N(0, I) (numpy: rng.standard_normal), or draw "
                "z ~ N(0, I) from the prior, and run the decoder on z to generate images.")


class InferenceError(Exception):
    """Base of the runtime's errors; the message says what was wrong and what is expected."""


class BundleError(InferenceError):
    """The model file or folder is missing, unreadable, or not an aezoo export."""


class InputError(InferenceError, ValueError):
    """Images or codes have the wrong shape, dtype or range for the model."""


class OutputError(InferenceError):
    """The result cannot be written where it was asked to go."""


def encode_metadata(values):
    """{short key: value} -> ONNX metadata_props strings (used by the exporter)."""
    props = {}
    for key, value in values.items():
        if key not in META_KEYS:
            raise KeyError("unknown aezoo metadata key {!r}".format(key))
        props[META_PREFIX + key] = json.dumps(value, sort_keys=True) if key in JSON_KEYS else str(value)
    return props


def decode_metadata(props):
    """ONNX metadata_props {name: string} -> {short key: value}, JSON values parsed."""
    values = {}
    for name, text in props.items():
        if not name.startswith(META_PREFIX):
            continue
        key = name[len(META_PREFIX):]
        values[key] = json.loads(text) if key in JSON_KEYS else text
    return values


# --- input checks ------------------------------------------------------------------------------------


def _shape_text(shape):
    return "(batch, {})".format(", ".join(str(d) for d in shape))


def _as_float32(array, what, expected):
    array = np.asarray(array)
    if array.dtype.kind in "biu":
        raise InputError(
            "{} must be float32 {}; got dtype {}. Convert 8-bit data with x.astype('float32') / 255.".format(
                what, expected, array.dtype))
    if array.dtype.kind != "f":
        raise InputError("{} must be a float32 array {}; got dtype {}.".format(what, expected, array.dtype))
    return np.ascontiguousarray(array, dtype=np.float32)


def check_images(images, image_shape):
    """Return `images` as float32 (batch, H, W, C) in [0, 1], or raise InputError saying what is expected."""
    image_shape = tuple(int(d) for d in image_shape)
    expected = "in [0, 1], NHWC, shape {}".format(_shape_text(image_shape))
    x = _as_float32(images, "images", expected)
    if x.ndim != len(image_shape) + 1 or x.shape[1:] != image_shape:
        hint = ""
        if x.shape == image_shape:
            hint = " For a single image add a batch axis: x[None]."
        elif x.ndim == len(image_shape) + 1 and x.shape[1:] == (image_shape[-1],) + image_shape[:-1]:
            hint = " These look like NCHW images; transpose them: x.transpose(0, 2, 3, 1)."
        elif x.ndim == len(image_shape) and x.shape[1:] == image_shape[:-1] and image_shape[-1] == 1:
            hint = " Add the channel axis: x[..., None]."
        elif x.ndim >= 2 and math.prod(x.shape[1:]) == math.prod(image_shape):
            hint = " Reshape them: x.reshape((-1,) + {}).".format(image_shape)
        raise InputError("images must have shape {}; got {}.{}".format(_shape_text(image_shape), x.shape, hint))
    if x.shape[0] == 0:
        raise InputError("images is an empty batch (shape {}); pass at least one image.".format(x.shape))
    if not np.isfinite(x).all():
        raise InputError("images contain NaN or infinite values; the model expects float32 {}.".format(expected))
    low, high = float(x.min()), float(x.max())
    if low < 0.0 or high > 1.0:
        hint = " Pixel values in 0..255? Divide by 255." if high > 1.0 and low >= 0.0 else ""
        raise InputError("images must be float32 {}; got values from {:.4g} to {:.4g}.{}".format(
            expected, low, high, hint))
    return x


def check_latents(latents, latent_dim):
    """Return `latents` as float32 (batch, latent_dim), or raise InputError saying what is expected."""
    expected = "of shape (batch, {})".format(latent_dim)
    z = _as_float32(latents, "latents", expected)
    if z.ndim != 2 or z.shape[1] != latent_dim:
        hint = " For a single code add a batch axis: z[None]." if z.shape == (latent_dim,) else ""
        raise InputError("latents must have shape (batch, {}); got {}.{}".format(latent_dim, z.shape, hint))
    if z.shape[0] == 0:
        raise InputError("latents is an empty batch (shape {}); pass at least one code.".format(z.shape))
    if not np.isfinite(z).all():
        raise InputError("latents contain NaN or infinite values.")
    return z


# --- the runtime ---------------------------------------------------------------------------------------


class Runtime:
    """An exported autoencoder: a bundle folder (encoder/decoder/autoencoder .onnx) or one .onnx file.

    `providers` is passed to onnxruntime (default: every available provider, GPU first);
    `intra_op_threads` caps the threads one call may use (default: onnxruntime's, all cores).
    `encode` gives the code (for a VAE the posterior mean; `encode_distribution` gives mean and log
    variance); `decode` maps codes to images; `reconstruct` is decode(encode(x)).
    """

    def __init__(self, path, providers=None, intra_op_threads=None, inter_op_threads=None):
        self.path = Path(path)
        options = ort.SessionOptions()
        if intra_op_threads is not None:
            options.intra_op_num_threads = int(intra_op_threads)
        if inter_op_threads is not None:
            options.inter_op_num_threads = int(inter_op_threads)
        # The Azure provider calls remote endpoints; it has no place in local inference.
        self.providers = list(providers) if providers else [
            p for p in ort.get_available_providers() if p != "AzureExecutionProvider"]
        self.sessions = {}
        self.metadata = {}
        for role, file in self._files():
            session, meta = self._open(file, options)
            if role is not None and meta["role"] != role:
                raise BundleError("{} says it is the {} (aezoo.role), but its file name says {}.".format(
                    file, meta["role"], role))
            self.sessions[meta["role"]], self.metadata[meta["role"]] = session, meta
        self._check_consistent()
        first = next(iter(self.metadata.values()))
        self.image_shape = tuple(int(d) for d in first["input_shape"])
        self.latent_dim = int(first["latent_dim"])
        self.preset = first.get("preset")
        self.family = first.get("family")
        self.variational = bool(first.get("variational", False))
        self.normalization = first.get("normalization", NORMALIZATION)
        self.metrics = first.get("metrics")
        self.versions = first.get("versions")

    @classmethod
    def from_preset(cls, name, *, source=None, cache_dir=None, refresh=False, verbose=False, **kwargs):
        """The released ONNX files of preset `name` (e.g. "deep_ae_fashion_mnist"), fetched into the sha256-checked
        cache by zoo.weights: from the release bundled with aezoo by default, else `source` or $ZOO_WEIGHTS_URL.
        `kwargs` go to Runtime (providers, intra_op_threads). Needs the aezoo package, not TensorFlow."""
        try:
            from zoo import weights
            from zoo.errors import ZooError
        except ImportError:
            raise BundleError("Runtime.from_preset needs the aezoo package (pip install aezoo); this runtime.py was "
                              "copied alone. Use Runtime(PATH) with a folder of .onnx files instead.") from None
        try:
            paths = weights.fetch(name, format="onnx", source=source, cache_dir=cache_dir, refresh=refresh,
                                  verbose=verbose)
        except ZooError as exc:  # no such preset, a bad source, a checksum that does not match
            raise BundleError(str(exc)) from None
        return cls(paths["dir"], **kwargs)

    def _files(self):
        """[(role or None, path)]: a folder names its files by role; a lone file declares its role."""
        if self.path.is_dir():
            files = [(role, self.path / name) for role, name in FILES.items() if (self.path / name).is_file()]
            if not files:
                raise BundleError("{} holds none of {}: not an exported model folder (export one with "
                                  "`python -m export RUN_DIR`).".format(self.path, ", ".join(FILES.values())))
            return files
        if self.path.is_file():
            if self.path.suffix != ".onnx":
                raise BundleError("{} is not an .onnx file; pass a bundle folder or one of {}.".format(
                    self.path, ", ".join(FILES.values())))
            return [(None, self.path)]
        raise BundleError("No such model file or folder: {}".format(self.path))

    def _open(self, file, options):
        try:
            session = ort.InferenceSession(str(file), sess_options=options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... classes
            raise BundleError("Cannot load {} with onnxruntime: {}".format(file, exc)) from None
        meta = decode_metadata(session.get_modelmeta().custom_metadata_map)
        missing = [k for k in REQUIRED_KEYS if k not in meta]
        if missing:
            raise BundleError("{} is not an aezoo export: its ONNX metadata lacks {}.".format(
                file, ", ".join(META_PREFIX + k for k in missing)))
        if meta["role"] not in FILES:
            raise BundleError("{} has an unknown aezoo.role {!r}.".format(file, meta["role"]))
        return session, meta

    def _check_consistent(self):
        seen = {}
        for role, meta in self.metadata.items():
            for key in ("preset", "input_shape", "latent_dim", "variational"):
                value = meta.get(key)
                if key in seen and seen[key][1] != value:
                    raise BundleError("{}: the {} and the {} disagree on {} ({!r} vs {!r}); the files come from "
                                      "different exports.".format(self.path, seen[key][0], role, key,
                                                                  seen[key][1], value))
                seen.setdefault(key, (role, value))

    # --- inference --------------------------------------------------------------------------------

    def _session(self, role, what):
        session = self.sessions.get(role)
        if session is None:
            raise BundleError("{} has no {} ({}), which {} needs; it has: {}.".format(
                self.path, role, FILES[role], what, ", ".join(FILES[r] for r in self.sessions)))
        return session

    @staticmethod
    def _run(session, x, batch_size):
        name = session.get_inputs()[0].name
        chunks = [session.run(None, {name: x[i:i + batch_size]}) for i in range(0, len(x), batch_size)]
        return [np.concatenate([c[k] for c in chunks]) for k in range(len(chunks[0]))]

    def encode_distribution(self, images, batch_size=256):
        """(z_mean, z_log_var) of a VAE's posterior for each image."""
        if not self.variational:
            raise InferenceError("{} is not variational ({}); use encode().".format(self.path, self.family))
        z_mean, z_log_var = self._run(self._session("encoder", "encode_distribution"),
                                      check_images(images, self.image_shape), batch_size)
        return z_mean, z_log_var

    def encode(self, images, batch_size=256):
        """Codes (batch, latent_dim) of float32 NHWC images in [0, 1]; the posterior mean for a VAE."""
        session = self._session("encoder", "encode")
        names = [o.name for o in session.get_outputs()]
        outputs = self._run(session, check_images(images, self.image_shape), batch_size)
        return outputs[names.index("z_mean") if "z_mean" in names else 0]

    def decode(self, latents, batch_size=256):
        """Images (batch, H, W, C) in [0, 1] decoded from codes (batch, latent_dim)."""
        return self._run(self._session("decoder", "decode"), check_latents(latents, self.latent_dim), batch_size)[0]

    def reconstruct(self, images, batch_size=256):
        """decode(encode(images)), with the autoencoder file when there is one."""
        x = check_images(images, self.image_shape)
        if "autoencoder" in self.sessions or not {"encoder", "decoder"} <= set(self.sessions):
            return self._run(self._session("autoencoder", "reconstruct"), x, batch_size)[0]
        return self.decode(self.encode(x, batch_size), batch_size)

    def sample(self, n, seed=None, batch_size=256):
        """n images from a VAE: codes from the N(0, I) prior through the decoder."""
        if not self.variational:
            raise InferenceError("{} is not variational ({}); only VAEs have a prior to sample.".format(
                self.path, self.family))
        z = np.random.default_rng(seed).standard_normal((int(n), self.latent_dim)).astype(np.float32)
        return self.decode(z, batch_size)

    def describe(self):
        """A JSON-able summary: what the model expects and what it is."""
        return {
            "path": str(self.path), "files": {r: str(FILES[r]) for r in self.sessions}, "preset": self.preset,
            "family": self.family, "input_shape": list(self.image_shape), "latent_dim": self.latent_dim,
            "normalization": self.normalization, "variational": self.variational, "metrics": self.metrics,
            "providers": next(iter(self.sessions.values())).get_providers(),
        }


def load(path, **kwargs):
    """Runtime(path, **kwargs)."""
    return Runtime(path, **kwargs)


# --- files and the command line ----------------------------------------------------------------------


def read_images(path, image_shape):
    """Images from an .npy file, one PNG, or a folder of PNGs (sorted by name, scaled to [0, 1])."""
    path = Path(path)
    if path.suffix == ".npy" and path.is_file():
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise InputError("Cannot read {} as a numpy array: {}".format(path, exc)) from None
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".png" and p.is_file())
        if not files:
            raise InputError("{} holds no .png files.".format(path))
    elif path.is_file() and path.suffix.lower() == ".png":
        files = [path]
    elif path.exists():
        raise InputError("{}: expected an .npy file, a .png file or a folder of PNGs.".format(path))
    else:
        raise InputError("No such file or folder: {}".format(path))
    return read_pngs(files, image_shape)


def read_pngs(files, image_shape):
    """Decode PNGs to float32 (n, H, W, C) in [0, 1]; sizes must match, channels are converted."""
    try:
        from PIL import Image  # only PNG input needs Pillow; encode/decode of arrays does not
    except ImportError:
        raise InputError("Reading PNGs needs Pillow (pip install pillow); or pass an .npy array.") from None
    height, width, channels = image_shape
    mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(channels)
    if mode is None:
        raise InputError("The model expects {} channels; PNG input supports 1, 3 or 4.".format(channels))
    images = []
    for file in files:
        try:
            with Image.open(file) as image:
                image = image.convert(mode)
                pixels = np.asarray(image, dtype=np.uint8)
        except OSError as exc:
            raise InputError("Cannot read {} as an image: {}".format(file, exc)) from None
        if pixels.shape[:2] != (height, width):
            raise InputError("{} is {}x{} pixels (HxW); the model expects {}x{}. Resize it first.".format(
                file, pixels.shape[0], pixels.shape[1], height, width))
        images.append(pixels.reshape(height, width, channels))
    return np.stack(images).astype(np.float32) / np.float32(255)


def save_array(path, array):
    """np.save, atomically: a partial file never appears under the final name. The file gets the permissions
    a plain open() would give (mkstemp's are private)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError("--out {} is a folder; give a file name, e.g. {}.".format(path, path / "codes.npy"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".partial-", suffix=".npy")
    except OSError as exc:
        raise OutputError("Cannot write {}: {}. Choose an --out in a folder you can write to.".format(
            path, exc.strerror or exc)) from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError("Cannot write {}: {}; nothing was written there. Free some space or choose another --out."
                          .format(path, exc.strerror or exc)) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def run_command(command, model, inputs, out, log_var_out=None, providers=None, threads=None):
    """What the CLI does: load, read, run, save. Returns the array written to `out`."""
    runtime = Runtime(model, providers=providers, intra_op_threads=threads)
    if command == "decode":
        latents = inputs if isinstance(inputs, np.ndarray) else _read_latents(inputs)
        result = runtime.decode(latents)
    else:
        images = read_images(inputs, runtime.image_shape) if not isinstance(inputs, np.ndarray) else inputs
        if command == "reconstruct":
            result = runtime.reconstruct(images)
        elif log_var_out is not None:
            result, log_var = runtime.encode_distribution(images)
            save_array(log_var_out, log_var)
        else:
            result = runtime.encode(images)
    save_array(out, result)
    return result


def _read_latents(path):
    path = Path(path)
    if not path.is_file():
        raise InputError("No such file: {}".format(path))
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError("Cannot read {} as a numpy array (.npy): {}".format(path, exc)) from None


def main(argv=None, prog="python -m export.runtime"):
    examples = ["info runs/dae_mnist/export",
                "encode runs/dae_mnist/export images.npy --out codes.npy     # or a .png, or a folder of PNGs",
                "decode runs/dae_mnist/export codes.npy --out images.npy"]
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run an exported aezoo model with onnxruntime (no TensorFlow). Images are float32 in [0, 1], "
                    "NHWC (.npy), or PNG files (scaled by 1/255).",
        epilog="examples:\n" + "\n".join("  {} {}".format(prog, e) for e in examples))
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text, source in (
            ("encode", "images -> codes (a VAE gives the posterior mean)", "images .npy, a .png or a folder of PNGs"),
            ("decode", "codes -> images", "codes .npy, shape (batch, latent_dim)"),
            ("reconstruct", "images -> reconstructed images", "images .npy, a .png or a folder of PNGs")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("model", help="bundle folder (encoder.onnx, decoder.onnx, autoencoder.onnx) or one .onnx")
        p.add_argument("inputs", help=source)
        p.add_argument("--out", required=True, help="output .npy")
        if name == "encode":
            p.add_argument("--log-var-out", help="VAE only: also save z_log_var here")
        p.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: all cores)")
        p.add_argument("--providers", help="comma-separated onnxruntime providers, e.g. CPUExecutionProvider")
    p = sub.add_parser("info", help="print what a model expects (from its ONNX metadata)")
    p.add_argument("model")
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            print(json.dumps(Runtime(args.model, providers=["CPUExecutionProvider"]).describe(), indent=2))
            return 0
        providers = args.providers.split(",") if args.providers else None
        result = run_command(args.command, args.model, args.inputs, args.out,
                             log_var_out=getattr(args, "log_var_out", None), providers=providers,
                             threads=args.threads)
    except InferenceError as exc:
        print("error: {}".format(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nInterrupted; nothing was written.", file=sys.stderr)
        return 130
    print("wrote {} {} to {}".format(result.dtype, result.shape, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
