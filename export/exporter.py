"""Export a trained run to SavedModel and ONNX, and check the exported numbers against the Keras model.
`python -m export RUN_DIR` writes RUN_DIR/export/: savedmodel/, {encoder,decoder,autoencoder}.onnx, parity.json."""

import dataclasses
import logging
import os
import platform
import zipfile
from pathlib import Path

import keras
import numpy as np
import onnx
import onnxruntime as ort
import tensorflow as tf
import tf2onnx

import zoo  # registers every family, so load_model finds the classes in model.keras
from export import optimize, runtime
from zoo.fileio import atomic_dir
from zoo import data as zoo_data
from zoo import fileio
from export.layout import (DEFAULT_OPSET, ENDPOINT_FILES, EXPORT_FILES, EXPORT_KIND, FORMATS, ExportError, _train_hint,
                           resolve_run_dir)
from zoo import schema
from zoo.schema import ENDPOINTS as ROLES, PARITY as PARITY_FILE, SAVEDMODEL_DIR
from zoo.errors import ZooError

TOLERANCE = 1e-4
PARITY_BATCH_SIZES = (1, 64)
METADATA_VERSION = 1

logger = logging.getLogger(__name__)


class ParityError(ExportError):
    """An exported model does not reproduce the Keras model's numbers."""


@dataclasses.dataclass
class Run:
    """A run dir as written by zoo.train: the model and what config.json and metrics.json say."""

    dir: Path
    config: schema.RunConfig
    metrics: dict
    model: keras.Model

    @property
    def preset(self):
        return self.config.preset

    @property
    def variational(self):
        return bool(getattr(self.model, "variational", False))


# --- the run dir -------------------------------------------------------------------------------------


def load_run(run_dir):
    """Load a run dir's model, config and metrics."""
    path = resolve_run_dir(run_dir)
    try:
        config = schema.RunConfig.load(path)
        metrics = schema.RunMetrics.load(path).to_dict() if (path / schema.METRICS).is_file() else {}
    except schema.SchemaError as exc:
        raise ExportError("{} Train the run again (`{}`).".format(exc, _train_hint(path))) from None
    if not zipfile.is_zipfile(path / schema.MODEL):
        raise ExportError("{} is not a readable .keras archive: it is truncated or corrupt ({:,d} bytes). Train the "
                          "run again (`{}`) or restore the file from a copy.".format(
                              path / schema.MODEL, (path / schema.MODEL).stat().st_size, _train_hint(path)))
    try:
        model = keras.models.load_model(path / schema.MODEL)
    except Exception as exc:  # Keras raises ValueError, TypeError, OSError, zipfile errors...
        raise ExportError("Cannot load {}: {}".format(path / schema.MODEL, exc)) from None
    for attribute in ("encoder", "decoder", "latent_dim", "image_shape"):
        if not hasattr(model, attribute):
            raise ExportError("{} is not an aezoo autoencoder (it has no .{}).".format(path / schema.MODEL, attribute))
    return Run(path, config, metrics, model)


# --- endpoints: the same three functions for SavedModel and ONNX -----------------------------------------


def encoder_output_names(model):
    return tuple(getattr(model, "encoder_outputs", ("latent",)))


def input_specs(model):
    return {
        "image": tf.TensorSpec((None, *model.image_shape), tf.float32, name="image"),
        "latent": tf.TensorSpec((None, model.latent_dim), tf.float32, name="latent"),
    }


def endpoints(model):
    """{endpoint: (function returning a dict of named outputs, input spec)}.

    `reconstruct` is decoder(encoder(x)) on the posterior mean, not model.call: the corruption and
    sampler layers hold random ops, which neither belong in a served graph nor convert to ONNX.
    """
    encoder, decoder = model.encoder, model.decoder
    names = encoder_output_names(model)
    specs = input_specs(model)

    def codes(image):
        out = encoder(image, training=False)
        out = list(out) if isinstance(out, (list, tuple)) else [out]
        if len(out) != len(names):
            raise ExportError("The encoder has {} outputs; a {} encoder should have {} ({}).".format(
                len(out), model.registry_name, len(names), ", ".join(names)))
        return dict(zip(names, out))

    def encode(image):
        return codes(image)

    def decode(latent):
        return {"reconstruction": decoder(latent, training=False)}

    def reconstruct(image):
        return {"reconstruction": decoder(codes(image)[names[0]], training=False)}

    functions = {"reconstruct": (reconstruct, specs["image"]), "encode": (encode, specs["image"]),
                 "decode": (decode, specs["latent"])}
    return {name: functions[name] for name in ENDPOINT_FILES}


def output_names(model, endpoint):
    return encoder_output_names(model) if endpoint == "encode" else ("reconstruction",)


# --- SavedModel --------------------------------------------------------------------------------------


def write_savedmodel(model, path):
    """A SavedModel with signatures encode, decode, reconstruct (= serving_default); no project code needed."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, (fn, spec) in endpoints(model).items():
        archive.add_endpoint(name, fn, input_signature=[spec])
    archive.write_out(str(path), verbose=False)
    return Path(path)


# --- ONNX --------------------------------------------------------------------------------------------


def _check_opset(opset):
    supported = sorted(v for v in tf2onnx.constants.OPSET_TO_IR_VERSION if v >= 13)
    if opset not in supported:
        raise ExportError("--opset {} is not supported by tf2onnx {}; choose one of {}..{}.".format(
            opset, tf2onnx.__version__, supported[0], supported[-1]))


def _finish_graph(proto, input_name, outputs):
    """Put outputs in a fixed order and call the batch axis `batch` on every graph input and output.

    tf2onnx sorts a dict's outputs by name (z_log_var before z_mean) and names the batch axis
    `unk__N`; consumers read both.
    """
    graph = proto.graph
    by_name = {o.name: o for o in graph.output}
    if sorted(by_name) != sorted(outputs) or [i.name for i in graph.input] != [input_name]:
        raise ExportError("tf2onnx produced inputs {} and outputs {}; expected [{}] and {}.".format(
            [i.name for i in graph.input], sorted(by_name), input_name, list(outputs)))
    ordered = [onnx.ValueInfoProto.FromString(by_name[name].SerializeToString()) for name in outputs]
    del graph.output[:]
    graph.output.extend(ordered)
    for value in list(graph.input) + list(graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = "batch"


def to_onnx(model, endpoint, opset, metadata, layout=optimize.DEFAULT_LAYOUT,
            conv_transpose=optimize.DEFAULT_CONV_TRANSPOSE):
    """One endpoint as a lean ONNX ModelProto (export.optimize) with named inputs/outputs, dynamic batch and
    aezoo metadata. layout="nchw" takes and gives images as NCHW; the metadata then says so (aezoo.layout,
    aezoo.input_shape as (C, H, W)). `conv_transpose` is the form of transposed convolutions
    (optimize.CONV_TRANSPOSE_FORMS)."""
    fn, spec = endpoints(model)[endpoint]
    function = tf.function(fn, input_signature=[spec])
    try:
        proto, _ = tf2onnx.convert.from_function(function, input_signature=[spec], opset=opset)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError("tf2onnx could not convert the {} of {} at opset {}: {}: {}".format(
            ROLES[endpoint], model.registry_name, opset, type(exc).__name__, exc)) from None
    _finish_graph(proto, spec.name, output_names(model, endpoint))
    try:
        proto = optimize.lean(proto, layout=layout, conv_transpose=conv_transpose)
    except optimize.OptimizeError as exc:
        raise ExportError("Cannot make the {} of {} lean: {}".format(
            ROLES[endpoint], model.registry_name, exc)) from None
    role = ROLES[endpoint]
    values = dict(metadata, role=role, inputs=[spec.name], outputs=list(output_names(model, endpoint)))
    rows = model.rows_per_call(role)
    if rows is not None:
        values["rows_per_call"] = int(rows)
    if layout == "nchw":
        height, width, channels = values["input_shape"]
        values["input_shape"] = [channels, height, width]
        values["normalization"] = values["normalization"].replace("NHWC", "NCHW")
    props = runtime.encode_metadata(values)
    # Not one of the runtime's own keys (it reads every aezoo.* key back as text).
    props[runtime.META_PREFIX + "layout"] = layout
    onnx.helper.set_model_props(proto, props)
    proto.graph.name = "{}_{}".format(values.get("preset") or model.registry_name, role)
    shape = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    proto.doc_string = "aezoo {} {} ({}). Input {!r}: {}, shape {}.{}".format(
        values.get("preset"), role, values.get("family"), spec.name, values["normalization"], shape,
        " " + runtime.SAMPLING_DOC if values.get("variational") else "")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError("The exported {} of {} fails onnx.checker: {}".format(
            role, values.get("preset"), exc)) from None
    return proto


def metadata(run, opset):
    """The metadata_props every exported file carries, so a consumer needs nothing else."""
    model, config = run.model, run.config
    values = {
        "format_version": METADATA_VERSION,
        "preset": run.preset,
        "family": config.model or model.registry_name,
        "dataset": config.dataset or "",
        "latent_dim": int(model.latent_dim),
        "input_shape": [int(d) for d in model.image_shape],
        "normalization": config.normalization or schema.NORMALIZATION,
        "variational": run.variational,
        "metrics": {k: run.metrics[k] for k in ("split", "num_images", "metrics", "units") if k in run.metrics},
        "versions": {"training": config.versions, "export": export_versions(opset)},
    }
    if run.variational:
        values["sampling"] = runtime.SAMPLING_DOC
    return values


def export_versions(opset=None):
    versions = {"tensorflow": tf.__version__, "keras": keras.__version__, "tf2onnx": tf2onnx.__version__,
                "onnx": onnx.__version__, "onnxruntime": ort.__version__, "numpy": np.__version__,
                "aezoo": zoo.__version__, "python": platform.python_version()}
    if opset is not None:
        versions["opset"] = int(opset)
    return versions


# --- parity ------------------------------------------------------------------------------------------


def parity_images(run, data_dir=None, n=max(PARITY_BATCH_SIZES)):
    """The first `n` test images of the run's dataset as float32 in [0, 1], and where they came from."""
    dataset = run.config.dataset
    if not dataset:
        raise ExportError("{} names no dataset; pass images for the parity check.".format(run.dir / schema.CONFIG))
    if data_dir is None:
        data_dir = run.config.data_dir
        if data_dir is not None and not Path(data_dir).is_dir():
            data_dir = None  # trained elsewhere: find the data the usual way
    try:
        arrays = zoo_data.load_arrays(dataset, "test", data_dir=data_dir, limit=n)
    except ZooError as exc:
        raise ExportError("The parity check needs test images of {}, and none were found (pass --data-dir DIR "
                          "to name them): {}".format(dataset, exc)) from None
    return zoo_data.normalize(arrays.images), {"dataset": dataset, "split": "test", "source": arrays.source}


def _batches(images):
    if len(images) == 0:
        raise ExportError("The parity check got no images.")
    n = max(PARITY_BATCH_SIZES)
    if len(images) < n:
        images = np.resize(images, (n,) + images.shape[1:])  # repeat: the check needs full batches
    return {b: np.ascontiguousarray(images[:b], dtype=np.float32) for b in PARITY_BATCH_SIZES}


def _keras_outputs(model, endpoint, x):
    fn, _ = endpoints(model)[endpoint]
    return {k: keras.ops.convert_to_numpy(v) for k, v in fn(tf.constant(x)).items()}


def check_parity(run, export_dir, images, formats, tolerance=TOLERANCE, layout=optimize.DEFAULT_LAYOUT):
    """Max abs differences between Keras and each exported file, per output and batch size. ONNX files of
    layout "nchw" get the images transposed, and their images are transposed back before comparing."""
    model = run.model
    batches = _batches(images)
    code_name = encoder_output_names(model)[0]
    checks = []
    sessions, loaded = {}, None
    if "onnx" in formats:
        options = ort.SessionOptions()
        options.intra_op_num_threads = min(2, os.cpu_count() or 1)
        sessions = {e: ort.InferenceSession(str(export_dir / f), options, providers=["CPUExecutionProvider"])
                    for e, f in ENDPOINT_FILES.items()}
    if "savedmodel" in formats:
        loaded = tf.saved_model.load(str(export_dir / SAVEDMODEL_DIR))
    for batch_size, x in batches.items():
        # The decoder is checked on real codes: the Keras encoder's codes of the same test images.
        inputs = {"encode": x, "reconstruct": x, "decode": _keras_outputs(model, "encode", x)[code_name]}
        for endpoint in ENDPOINT_FILES:
            feed = inputs[endpoint]
            expected = _keras_outputs(model, endpoint, feed)
            input_name = "latent" if endpoint == "decode" else "image"
            got = {}
            if endpoint in sessions:
                values = sessions[endpoint].run(None, {input_name: feed if endpoint == "decode"
                                                       else optimize.to_layout(feed, layout)})
                names = [o.name for o in sessions[endpoint].get_outputs()]
                got["onnx", ENDPOINT_FILES[endpoint]] = {
                    name: optimize.from_layout(value, layout) if value.ndim == 4 else value
                    for name, value in zip(names, values)}
            if loaded is not None:
                result = loaded.signatures[endpoint](**{input_name: tf.constant(feed)})
                got["savedmodel", endpoint] = {k: v.numpy() for k, v in result.items()}
            for (fmt, name), outputs in got.items():
                for output, want in expected.items():
                    have = outputs[output]
                    if have.shape != want.shape:
                        raise ParityError("{} {} output {} has shape {}; Keras gives {}.".format(
                            fmt, name, output, have.shape, want.shape))
                    diff = float(np.max(np.abs(have.astype(np.float64) - want.astype(np.float64))))
                    checks.append({"format": fmt, "file": name, "output": output, "batch_size": batch_size,
                                   "max_abs_diff": diff, "passed": bool(diff <= tolerance)})
    summary = {}
    for check in checks:
        key = check["file"] if check["format"] == "onnx" else "savedmodel:" + check["file"]
        summary[key] = max(summary.get(key, 0.0), check["max_abs_diff"])
    return {
        "passed": all(c["passed"] for c in checks),
        "tolerance": tolerance,
        "batch_sizes": list(PARITY_BATCH_SIZES),
        "max_abs_diff": summary,
        "checks": checks,
        "reference": "Keras {} (encoder/decoder called with training=False)".format(keras.__version__),
        "onnxruntime": {"version": ort.__version__, "providers": ["CPUExecutionProvider"]},
    }


# --- the export ------------------------------------------------------------------------------------


def parse_formats(formats):
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    formats = tuple(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError("Unknown export format(s) {}; choose from {} (comma-separated).".format(
            ", ".join(unknown) or "(none given)", ", ".join(FORMATS)))
    return formats


@dataclasses.dataclass
class ExportResult:
    out: Path
    files: dict  # name -> Path, for what was written
    parity: dict


def export_run(run_dir, *, formats=FORMATS, opset=DEFAULT_OPSET, out=None, data_dir=None, images=None,
               tolerance=TOLERANCE, verbose=1, layout=optimize.DEFAULT_LAYOUT, precisions=("fp32",),
               variant_tolerances=None, conv_transpose=optimize.DEFAULT_CONV_TRANSPOSE):
    """Export a run dir (or preset name) and check parity; returns an ExportResult.

    Everything is written to a temporary folder and moved to `out` (default RUN_DIR/export/) only
    when the parity check passes; a failed check raises ParityError and leaves `out` as it was.
    `images` (float32 NHWC in [0, 1]) replaces the dataset's test images in the parity check.
    `layout` "nchw" makes the ONNX files take and give NCHW images (the SavedModel stays NHWC).
    `conv_transpose` "slice" keeps transposed convolutions as ConvTranspose ("phases", the default, makes them
    Convs: faster on the CPU; export.optimize).
    `precisions` beyond "fp32" add variants of the ONNX files (export.precision): each is measured against
    float32 on the test split and kept only within its tolerance (`variant_tolerances` {precision: {...}}
    overrides precision.TOLERANCES); parity.json's `variants` says how each did.
    """
    from export import precision

    formats = parse_formats(formats)
    opset = int(opset)
    _check_opset(opset)
    if layout not in optimize.LAYOUTS:
        raise ExportError("Unknown layout {!r}; choose {} (default {}).".format(
            layout, " or ".join(optimize.LAYOUTS), optimize.DEFAULT_LAYOUT))
    if conv_transpose not in optimize.CONV_TRANSPOSE_FORMS:
        raise ExportError("Unknown ConvTranspose form {!r}; choose {} (default {}).".format(
            conv_transpose, " or ".join(optimize.CONV_TRANSPOSE_FORMS), optimize.DEFAULT_CONV_TRANSPOSE))
    precisions = precision.parse_precisions(precisions)
    if len(precisions) > 1 and "onnx" not in formats:
        raise ExportError("Precision variants ({}) are ONNX files; add onnx to --formats.".format(
            ", ".join(precisions[1:])))
    run = load_run(run_dir)
    default_out = run.dir / "export"
    out = Path(out) if out is not None else default_out
    if out.resolve() != default_out.resolve() and fileio.overlaps(out, run.dir):
        raise ExportError("--out {} overlaps the run dir {} that is being exported; choose a folder outside it (or "
                          "leave --out out: the export then goes to {}).".format(out, run.dir, default_out))
    fileio.check_replaceable(out, EXPORT_KIND, EXPORT_FILES)
    if images is None:
        images, inputs = parity_images(run, data_dir)
    else:
        inputs = {"dataset": "given", "split": None, "source": "array passed to export_run"}
    try:
        images = runtime.check_images(images, run.model.image_shape)
    except runtime.InputError as exc:
        raise ExportError("The parity images from {} do not fit the model: {}".format(inputs["source"], exc)) from None

    def say(message):
        if verbose:
            print(message, flush=True)

    options = {"layout": layout, "conv_transpose": conv_transpose, "precisions": precisions,
               "variant_tolerances": variant_tolerances, "data_dir": data_dir}
    try:
        return _export(run, formats, opset, out, images, inputs, tolerance, say, **options)
    except OSError as exc:
        raise ExportError("Cannot write the export to {}: {}".format(out, exc)) from None


def _export(run, formats, opset, out, images, inputs, tolerance, say, layout, conv_transpose, precisions,
            variant_tolerances, data_dir):
    meta = metadata(run, opset)
    with atomic_dir(out, EXPORT_KIND, EXPORT_FILES) as tmp:
        files = {}
        if "savedmodel" in formats:
            say("SavedModel -> {}".format(out / SAVEDMODEL_DIR))
            files[SAVEDMODEL_DIR] = write_savedmodel(run.model, tmp / SAVEDMODEL_DIR)
        if "onnx" in formats:
            for endpoint, name in ENDPOINT_FILES.items():
                say("ONNX {} (opset {}) -> {}".format(ROLES[endpoint], opset, out / name))
                proto = to_onnx(run.model, endpoint, opset, meta, layout=layout, conv_transpose=conv_transpose)
                with fileio.atomic_path(tmp / name) as path:
                    onnx.save_model(proto, str(path))
                files[name] = tmp / name
        parity = check_parity(run, tmp, images, formats, tolerance, layout=layout)
        parity["inputs"] = dict(inputs, num_images=int(min(len(images), max(PARITY_BATCH_SIZES))), layout=layout)
        parity["preset"] = run.preset
        parity["formats"] = list(formats)
        parity["opset"] = opset if "onnx" in formats else None
        parity["conv_transpose"] = conv_transpose if "onnx" in formats else None
        if not parity["passed"]:
            failed = [c for c in parity["checks"] if not c["passed"]]
            raise ParityError("Parity check failed for {} (tolerance {}); nothing was written to {}:\n{}".format(
                run.preset, tolerance, out, "\n".join(
                    "  {format} {file} {output} batch {batch_size}: max abs diff {max_abs_diff:.3g}".format(**c)
                    for c in failed)))
        if len(precisions) > 1:
            parity["variants"] = _variants(run, tmp, images, inputs, precisions, layout, variant_tolerances, data_dir,
                                           say)
        schema.Parity(**parity).save(tmp)
    files = {name: out / Path(path).name for name, path in files.items()}
    for report in parity.get("variants", {}).values():
        files.update({name: out / name for name in report["files"].values()})
    files[PARITY_FILE] = out / PARITY_FILE
    say("Parity (max abs diff, batch sizes {}): {}".format(
        "/".join(str(b) for b in PARITY_BATCH_SIZES),
        ", ".join("{} {:.2g}".format(k, v) for k, v in parity["max_abs_diff"].items())))
    say("Exported {} to {}".format(run.preset, out))
    return ExportResult(out, files, parity)


def _variants(run, export_dir, images, inputs, precisions, layout, tolerances, data_dir, say):
    """parity.json's `variants`: the precision variants made, measured and kept or dropped (export.precision)."""
    from export import precision

    if data_dir is None:
        data_dir = run.config.data_dir
        if data_dir is not None and not Path(data_dir).is_dir():
            data_dir = None
    say("Precision variants {} (measured against fp32 on the test split)".format(", ".join(precisions[1:])))
    data = precision.load_data(run.config.dataset, data_dir, images, "the parity images ({})".format(inputs["source"]))
    return precision.make_variants(export_dir, precisions, data, layout, tolerances, say)


from export.cli import export_main as main  # noqa: E402,F401  (the command line, light: see export.cli)
