"""Precision variants of an export's ONNX files: float16 weights and compute for GPUs, static int8 (QDQ) for
CPUs. Each is measured against the float32 files on the run's real test split and kept only within its
tolerance; float32 inputs and outputs throughout, so a caller sees no difference but the numbers.
"""

import dataclasses
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from export import optimize, runtime
from export.layout import ExportError
from zoo import fileio, schema

#: How far a variant may move from float32 (the CPU targets of issue 17): `sq_error_rel` bounds the relative
#: change of the reconstruction's squared error per image (either way: a large "gain" means a broken
#: variant too), `precision_at_10` the drop of its codes' retrieval precision@10.
TOLERANCES = {
    "fp16": {"sq_error_rel": 0.005, "precision_at_10": 0.002},
    "int8": {"sq_error_rel": 0.02, "precision_at_10": 0.005},
}
CALIBRATION_IMAGES = 1024  # first training images int8 calibrates its activation ranges on
DATABASE_IMAGES = 10000  # first training images the test codes query for precision@10
K = 10
METHODS = {
    "fp16": "onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True): float16 weights and "
            "compute, float32 inputs and outputs",
    "int8": "onnxruntime.quantization.quant_pre_process, then quantize_static: QDQ, per-channel QInt8 weights, "
            "QUInt8 activations, MinMax calibration. Two extents, the first that passes the tolerance is kept: "
            "'full': every weight layer computes in int8 (but ConvTranspose, which the CPU provider has no integer "
            "kernel for), and only the tensors a graph output is made from (the code, the reconstruction's logits) "
            "stay float, never rounded to 8 bits; 'inner': the weight layers that write "
            "the code or the reconstruction, and the one that reads the code, compute in float32 from weights "
            "stored as int8 times a per-channel scale",
}
#: The int8 extents, tried in this order (make_variants keeps the first within the tolerance). 'inner' exists
#: because 8-bit activations next to a code cost accuracy: with the logits and the code rounded to 8 bits too,
#: deep_ae_fashion_mnist's sq. error per image grew 3.0%; with them float ('full', as now) 1.0%, and with the
#: boundary layers float ('inner') 0.6%. Calibrating by percentiles did not help.
INT8_EXTENTS = ("full", "inner")
#: Layers with weights.
WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: Weight layers onnxruntime's CPU provider has no integer kernel for: in QDQ form it dequantizes their weights
#: on every call and computes in float anyway (conv_ae_fashion_mnist's decoder: DequantizeLinear, ConvTranspose,
#: QuantizeLinear), so the 'full' extent leaves them float (from int8-stored weights, see int8_weights): the
#: rounding of their inputs and outputs cost accuracy for nothing (decoder sq. error +4.1% -> +1.2%). Lean graphs
#: have none by default: optimize.phase_conv_transpose makes them Convs, which do run as QLinearConv (+1.44%).
FLOAT_KERNEL_OPS = ("ConvTranspose",)
SELECTION_OPS = ("TopK", "ArgMax", "ArgMin")
#: Ops that only rearrange a tensor's values: a pair after one of them, on a weight layer's output, rounds that
#: output all the same (VQ-VAE's tokens are a Reshape of the code).
REARRANGING_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose")
#: The files that get variants: the ones a release ships (autoencoder.onnx is encoder then decoder).
PARTS = ("encoder", "decoder")
IMAGE_INPUT, LATENT_INPUT = "image", "latent"


class PrecisionError(ExportError):
    """An unknown precision was asked for, or a variant cannot be made."""


parse_precisions = schema.parse_precisions  # one definition, shared with export.release


# --- the data ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Data:
    """Float32 NHWC images in [0, 1] (labels may be None) and where each set came from."""

    test: np.ndarray
    test_labels: object
    database: object  # training images the test codes query, or None
    database_labels: object
    calibration: np.ndarray
    sources: dict


def load_data(dataset, data_dir, fallback, fallback_source):
    """The run's test split (all of it), its first DATABASE_IMAGES training images (the first
    CALIBRATION_IMAGES calibrate int8); `fallback` (the parity images) stands in for a split not found."""
    from zoo import data as zoo_data
    from zoo.errors import ZooError

    def load(split, limit=None):
        if not dataset:
            return None, "the run names no dataset"
        try:
            arrays = zoo_data.load_arrays(dataset, split, data_dir=data_dir, limit=limit)
        except (ZooError, OSError, ValueError) as exc:
            return None, str(exc)
        return arrays, None

    test, test_error = load("test")
    train, train_error = load("train", DATABASE_IMAGES)
    sources = {}
    if test is not None:
        test_images, test_labels = zoo_data.normalize(test.images), test.labels
        sources["test"] = {"dataset": dataset, "split": "test", "num_images": len(test_images),
                           "source": test.source}
    else:
        test_images, test_labels = fallback, None
        sources["test"] = {"dataset": None, "split": None, "num_images": len(fallback), "source": fallback_source,
                           "note": "the test split was not found: {}".format(test_error)}
    if train is not None:
        database, database_labels = zoo_data.normalize(train.images), train.labels
        calibration = database[:CALIBRATION_IMAGES]
        sources["database"] = {"dataset": dataset, "split": "train", "num_images": len(database),
                               "source": train.source}
        sources["calibration"] = {"dataset": dataset, "split": "train", "num_images": len(calibration),
                                  "source": train.source}
    else:
        database, database_labels, calibration = None, None, fallback[:CALIBRATION_IMAGES]
        sources["database"] = None
        sources["calibration"] = {"dataset": None, "split": None, "num_images": len(calibration),
                                  "source": fallback_source,
                                  "note": "the training split was not found: {}".format(train_error)}
    return Data(test_images, test_labels, database, database_labels, calibration, sources)


# --- making the variants -----------------------------------------------------------------------------


def _with_metadata(proto, source, precision):
    """`proto` with the float32 file's metadata, doc string and graph name, and aezoo.precision."""
    props = {p.key: p.value for p in source.metadata_props}
    props[runtime.META_PREFIX + "precision"] = precision
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    proto.doc_string = "{} ({})".format(source.doc_string, precision)
    proto.graph.name = source.graph.name
    return proto


def fp16_model(proto):
    """float16 weights and compute; float32 inputs and outputs (Casts at both ends)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = convert_float_to_float16(onnx.ModelProto.FromString(proto.SerializeToString()), keep_io_types=True)
    optimize.topological_sort(half.graph)
    return _with_metadata(half, proto, "fp16")


def _learned(node):
    """A layer with learned weights: a weight op other than the fixed one-hot sum optimize.split_head_conv adds,
    which stays float with the layer it follows."""
    return node.op_type in WEIGHT_OPS and optimize.TAP_SUM_SUFFIX not in node.name


def float_layers(proto, code_input=False):
    """Names of the nodes an int8 file keeps in float ('inner' extent): on each path back from a graph output,
    the nodes up to and including the first weight layer; with `code_input`, the first weight layer on each path
    from the input."""
    graph = proto.graph
    producer = {o: n for n in graph.node for o in n.output}
    keep, stack = [], [o.name for o in graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in keep:
            continue
        keep.append(node.name)
        if not _learned(node):
            stack.extend(i for i in node.input if i in producer)
    if code_input:
        stack = [i.name for i in graph.input]
        while stack:
            name = stack.pop()
            for node in graph.node:
                if name in node.input and node.name not in keep:
                    keep.append(node.name)
                    if not _learned(node):
                        stack.extend(node.output)
    return keep


def output_tail(proto):
    """Names of the nodes after the last weight layers ('full' extent keeps them float): on each path back from
    a graph output, the nodes before the first weight layer (a sigmoid, a reshape), and that weight layer too
    when the path passed a selection (TopK, ArgMax, ArgMin: VQ-VAE's nearest-entry search), whose choices 8-bit
    inputs would change."""
    graph = proto.graph
    producer = {o: n for n in graph.node for o in n.output}
    keep, seen, stack = [], set(), [(o.name, False) for o in graph.output]
    while stack:
        name, selected = stack.pop()
        node = producer.get(name)
        if node is None or (node.name, selected) in seen:
            continue
        seen.add((node.name, selected))
        if _learned(node):
            if selected and node.name not in keep:
                keep.append(node.name)
            continue
        if node.name not in keep:
            keep.append(node.name)
        selected = selected or node.op_type in SELECTION_OPS
        stack.extend((i, selected) for i in node.input if i in producer)
    return keep


def float_outputs(proto, float_nodes=()):
    """Remove each QuantizeLinear -> DequantizeLinear pair on the output of a weight layer (directly or after
    REARRANGING_OPS) whose value reaches no other int8 weight layer (`float_nodes` compute in float; the layer
    writes the code or the logits, or feeds a float search): that layer's integer kernel then writes float32
    (onnxruntime fuses DQ -> Gemm/MatMul/Conv into QGemm/MatMulIntegerToFloat/... with a float output), and the
    value is never rounded to 8 bits. Returns the number of pairs removed."""
    graph = proto.graph
    producer = {o: n for n in graph.node for o in n.output}
    readers = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}

    def reaches_weight_layer(name, seen):
        for node in readers.get(name, []):
            if node.op_type in WEIGHT_OPS and node.name not in float_nodes:
                return True
            if node.name not in seen:
                seen.add(node.name)
                if any(reaches_weight_layer(o, seen) for o in node.output):
                    return True
        return False

    def weight_layer(name):
        node = producer.get(name)
        while node is not None and node.op_type in REARRANGING_OPS:
            node = producer.get(node.input[0])
        return node

    removed, pairs = [], 0
    for q in [n for n in graph.node if n.op_type == "QuantizeLinear"]:
        source, layer = producer.get(q.input[0]), weight_layer(q.input[0])
        dqs = readers.get(q.output[0], [])
        if layer is None or layer.op_type not in WEIGHT_OPS or q.output[0] in outputs \
                or not all(d.op_type == "DequantizeLinear" for d in dqs):
            continue
        if any(reaches_weight_layer(d.output[0], set()) for d in dqs):
            continue
        value = q.input[0]
        for dq in dqs:
            if dq.output[0] in outputs:  # the graph output keeps its name: the weight layer writes it
                source.output[list(source.output).index(value)] = dq.output[0]
                for node in readers.get(value, []):
                    node.input[:] = [dq.output[0] if i == value else i for i in node.input]
                value = dq.output[0]
        for dq in dqs:
            for node in readers.get(dq.output[0], []):
                node.input[:] = [value if i == dq.output[0] else i for i in node.input]
        removed += [q, *dqs]
        pairs += 1
    for node in removed:
        graph.node.remove(node)
    optimize.prune(graph)  # the pairs' scales and zero points
    return pairs


def int8_model(proto, input_name, calibration, batch_size=64, extent="full"):
    """Static int8 in QDQ form (what the CPU provider runs as integer kernels), calibrated on `calibration`,
    the float32 arrays the graph's input takes, to `extent` (INT8_EXTENTS): 'full' keeps only the tensors graph
    outputs are made from float (float_outputs), 'inner' also the layers next to a code or the reconstruction
    (float_layers)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if extent not in INT8_EXTENTS:
        raise PrecisionError("Unknown int8 extent {!r}; choose {}.".format(extent, ", ".join(INT8_EXTENTS)))

    class Feeds(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{input_name: calibration[i:i + batch_size]}
                                 for i in range(0, len(calibration), batch_size)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="aezoo-int8-") as work:
        work = Path(work)
        onnx.save_model(proto, str(work / "fp32.onnx"))
        quant_pre_process(str(work / "fp32.onnx"), str(work / "pre.onnx"), skip_symbolic_shape=True)
        pre = onnx.load(str(work / "pre.onnx"))
        if extent == "full":
            exclude = output_tail(pre) + [n.name for n in pre.graph.node if n.op_type in FLOAT_KERNEL_OPS]
        else:
            exclude = float_layers(pre, code_input=input_name == LATENT_INPUT)
        quantize_static(str(work / "pre.onnx"), str(work / "int8.onnx"), Feeds(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude)
        quantized = onnx.load(str(work / "int8.onnx"))
    if extent == "full":
        float_outputs(quantized, exclude)
    int8_weights(quantized, exclude)  # the weight layers left in float store int8 weights all the same
    optimize.topological_sort(quantized.graph)
    optimize.reshape_last(quantized.graph)
    return _with_metadata(quantized, proto, "int8")


#: The axis of the output channels of each weight layer's weight (input 1), for per-channel scales.
def _channel_axis(node, ndim):
    if node.op_type == "Gemm":
        return 0 if any(a.name == "transB" and a.i for a in node.attribute) else 1
    return {"Conv": 0, "ConvTranspose": 1, "MatMul": ndim - 1}[node.op_type]


def int8_weights(proto, names):
    """Store the float weights of the named weight layers as int8 (symmetric, per output channel) times a
    float scale: a quarter of the bytes, while they compute in float32. Cast and Mul, not DequantizeLinear:
    onnxruntime folds those constants once when the session starts, but keeps a DequantizeLinear for its
    QDQ fusions and ran it on every call (deep_ae decoder at batch 1: 946 images/s, fp32 16,567)."""
    graph = proto.graph
    initializers = {t.name: t for t in graph.initializer}
    readers = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    added = []
    for node in graph.node:
        if node.name not in names or node.op_type not in WEIGHT_OPS or len(node.input) < 2:
            continue
        tensor = initializers.get(node.input[1])
        if tensor is None or readers.get(tensor.name) != 1 or tensor.data_type != onnx.TensorProto.FLOAT:
            continue
        w = onnx.numpy_helper.to_array(tensor)
        axis = _channel_axis(node, w.ndim)
        others = tuple(i for i in range(w.ndim) if i != axis)
        scale = (np.max(np.abs(w), axis=others) / 127.0).astype(np.float32)
        scale[scale == 0] = 1.0
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        base = tensor.name
        graph.initializer.remove(tensor)
        graph.initializer.extend([onnx.numpy_helper.from_array(q, base + "_int8"),
                                  onnx.numpy_helper.from_array(scale.reshape(shape), base + "_scale")])
        added += [onnx.helper.make_node("Cast", [base + "_int8"], [base + "_float"], name=base + "_Cast",
                                        to=onnx.TensorProto.FLOAT),
                  onnx.helper.make_node("Mul", [base + "_float", base + "_scale"], [base], name=base + "_Mul")]
    if added:
        nodes = added + list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes)
    return len(added)


# --- measuring ---------------------------------------------------------------------------------------


def _session(model, provider):
    options = ort.SessionOptions()
    options.intra_op_num_threads = min(2, os.cpu_count() or 1)
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=[provider])


def _run(session, x, batch_size=256):
    name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]
    chunks = [session.run(None, {name: x[i:i + batch_size]}) for i in range(0, len(x), batch_size)]
    return {n: np.concatenate([c[k] for c in chunks]) for k, n in enumerate(outputs)}


def _code(outputs):
    return outputs["z_mean"] if "z_mean" in outputs else outputs["latent"]


def precision_at_k(queries, query_labels, database, database_labels, k=K, chunk=1000):
    """Mean fraction of each query's k nearest database codes (squared L2, exact) that share its label."""
    database = database.astype(np.float64)
    norms = np.sum(database ** 2, axis=1)
    hits = 0
    for start in range(0, len(queries), chunk):
        q = queries[start:start + chunk].astype(np.float64)
        distances = norms[None, :] - 2.0 * q @ database.T  # + |q|^2, the same for every candidate
        nearest = np.argpartition(distances, k - 1, axis=1)[:, :k]
        hits += int(np.sum(database_labels[nearest] == query_labels[start:start + chunk, None]))
    return hits / (len(queries) * k)


def _sq_error(images, reconstructions):
    return float(np.mean(np.sum(np.square(images.astype(np.float64) - reconstructions), axis=(1, 2, 3))))


class _Measure:
    """Codes, reconstructions and retrieval of one encoder and decoder."""

    def __init__(self, models, data, layout, provider):
        encoder, decoder = _session(models["encoder"], provider), _session(models["decoder"], provider)
        self.codes = _code(_run(encoder, optimize.to_layout(data.test, layout)))
        self.reconstruction = optimize.from_layout(_run(decoder, self.codes)["reconstruction"], layout)
        self.sq_error = _sq_error(data.test, self.reconstruction)
        self.precision_at_10 = None
        if data.database is not None and data.test_labels is not None:
            database_codes = _code(_run(encoder, optimize.to_layout(data.database, layout)))
            self.precision_at_10 = precision_at_k(self.codes, data.test_labels, database_codes, data.database_labels)


def _diffs(a, b):
    d = np.abs(a.astype(np.float64) - b)
    return {"max_abs_diff": float(d.max()), "mean_abs_diff": float(d.mean())}


def _relative(reference, value):
    return (value - reference) / reference if reference else None


def judge(reference, measured, tolerance):
    """The accuracy figures of a variant against float32, and the ways it misses `tolerance` (empty: passed)."""
    report = {
        "sq_error_per_image": {"fp32": reference.sq_error, "variant": measured.sq_error,
                               "relative_change": _relative(reference.sq_error, measured.sq_error)},
        "codes": _diffs(measured.codes, reference.codes),
        "reconstruction": _diffs(measured.reconstruction, reference.reconstruction),
        "precision_at_10": None,
    }
    failures = []
    change = report["sq_error_per_image"]["relative_change"]
    if change is None or not abs(change) <= tolerance["sq_error_rel"]:
        failures.append("sq. error per image changed by {} (tolerance {:.2%})".format(
            "an unknown amount" if change is None else "{:+.3%}".format(change), tolerance["sq_error_rel"]))
    if reference.precision_at_10 is not None:
        drop = reference.precision_at_10 - measured.precision_at_10
        report["precision_at_10"] = {"fp32": reference.precision_at_10, "variant": measured.precision_at_10,
                                     "change": -drop}
        if not drop <= tolerance["precision_at_10"]:
            failures.append("precision@10 fell by {:.4f} (tolerance {})".format(drop, tolerance["precision_at_10"]))
    return report, failures


def _provider(precision):
    # float16 is meant for GPUs: measured there when this onnxruntime has one, else on the CPU.
    if precision == "fp16" and "CUDAExecutionProvider" in ort.get_available_providers():
        return "CUDAExecutionProvider"
    return "CPUExecutionProvider"


def variant_models(precision, fp32, calibration, layout, extent=INT8_EXTENTS[0]):
    """{part: ModelProto} at `precision` from the float32 {part: ModelProto}; int8 (to `extent`) calibrates the
    encoder on `calibration` (NHWC images) and the decoder on the float32 encoder's codes of them."""
    if precision == "fp16":
        return {part: fp16_model(model) for part, model in fp32.items()}
    images = optimize.to_layout(calibration, layout)
    models = {}
    for part, model in fp32.items():
        if part == "decoder":
            codes = _code(_run(_session(fp32["encoder"], "CPUExecutionProvider"), images))
            models[part] = int8_model(model, LATENT_INPUT, codes, extent=extent)
        else:
            models[part] = int8_model(model, IMAGE_INPUT, images, extent=extent)
    return models


# --- the whole step --------------------------------------------------------------------------------


def make_variants(export_dir, precisions, data, layout, tolerances=None, say=print):
    """Write the variants of the encoder and decoder in `export_dir`, measure each precision against the float32
    files, and delete the files of a precision that misses its tolerance. int8 tries INT8_EXTENTS in order and
    keeps the first within the tolerance (`extent`; `attempts` lists each try). Returns parity.json's
    `variants`: {precision: report}; `kept` says whether its files stay."""
    export_dir = Path(export_dir)
    tolerances = dict(TOLERANCES, **(tolerances or {}))
    parts = [part for part in PARTS if (export_dir / schema.onnx_file(part)).is_file()]
    fp32 = {part: onnx.load(str(export_dir / schema.onnx_file(part))) for part in parts}
    references = {}
    reports = {}
    for precision in precisions:
        if precision == "fp32":
            continue
        tolerance = tolerances[precision]
        report = {"passed": False, "kept": False, "method": METHODS[precision], "tolerance": dict(tolerance),
                  "files": {}, "evaluation": {"provider": _provider(precision), "k": K,
                                              "test": data.sources["test"], "database": data.sources["database"]}}
        if precision == "int8":
            report["calibration"] = data.sources["calibration"]
            report["attempts"] = []
        reports[precision] = report
        for extent in INT8_EXTENTS if precision == "int8" else (None,):
            if _attempt(precision, extent, fp32, parts, export_dir, data, layout, tolerance, references, report,
                        say):
                break
    return reports


def _attempt(precision, extent, fp32, parts, export_dir, data, layout, tolerance, references, report, say):
    """Make, write and measure one variant (int8 to `extent`); keep its files if within `tolerance`. True if
    kept."""
    label = precision if extent is None else "{} ({} extent)".format(precision, extent)
    written = []
    try:
        models = variant_models(precision, fp32, data.calibration, layout, extent=extent)
        for part, model in models.items():
            onnx.checker.check_model(model, full_check=True)
            path = export_dir / schema.onnx_file(part, precision)
            with fileio.atomic_path(path) as tmp:
                onnx.save_model(model, str(tmp))
            written.append(path)
        provider = report["evaluation"]["provider"]
        if provider not in references:
            references[provider] = _Measure(fp32, data, layout, provider)
        measured = _Measure(models, data, layout, provider)
    except Exception as exc:  # a converter, quantizer or provider that cannot handle this graph
        lines = str(exc).strip().splitlines()
        error = "{}: {}".format(type(exc).__name__, lines[0][:500] if lines else "")
        if extent is not None:
            report["attempts"].append({"extent": extent, "error": error})
        report["error"] = error
        say("  {}: not made ({})".format(label, error))
        _remove(written)
        return False
    figures, failures = judge(references[provider], measured, tolerance)
    if extent is not None:
        report["attempts"].append({"extent": extent, "sq_error_per_image": figures["sq_error_per_image"],
                                   "precision_at_10": figures["precision_at_10"], "failures": failures})
        report["extent"] = extent
    report.pop("error", None)
    report.update(figures)
    report["failures"] = failures
    report["passed"] = not failures
    if failures:
        _remove(written)
    else:
        report["kept"] = True
        report["files"] = {part: path.name for part, path in zip(parts, written)}
        report["sizes"] = {path.name: path.stat().st_size for path in written}
    say("  {}: {} (sq. error per image {:+.3%}{}{})".format(
        label, "kept" if report["kept"] else "NOT kept", figures["sq_error_per_image"]["relative_change"] or 0,
        "" if figures["precision_at_10"] is None else ", precision@10 {:+.4f}".format(
            figures["precision_at_10"]["change"]),
        "; " + "; ".join(failures) if failures else ""))
    return report["kept"]


def _remove(paths):
    for path in paths:
        Path(path).unlink(missing_ok=True)
