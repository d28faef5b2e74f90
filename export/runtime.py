"""Run exported aezoo ONNX models with numpy and onnxruntime only (no TensorFlow, Keras or `zoo`; one file
to copy to a device). Shapes and normalization come from the ONNX metadata: `Runtime(path).encode(images)`;
`Runtime(path, device="cuda")` runs on a GPU (onnxruntime-gpu), `precision="int8"` picks a variant's files."""

import argparse
import ctypes
import functools
import json
import math
import os
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

#: File name of each role in a bundle folder (an export dir, a release bundle, a fetched cache dir).
FILES = {"encoder": "encoder.onnx", "decoder": "decoder.onnx", "autoencoder": "autoencoder.onnx"}
#: Precision variants of those files: fp32 is the plain name, the others add theirs (encoder.int8.onnx). Every
#: variant keeps float32 inputs and outputs. (zoo.schema defines both; this file keeps copies to stay alone.)
PRECISIONS = ("fp32", "fp16", "int8")
NORMALIZATION = "float32 in [0, 1], NHWC"
DEVICES = ("cpu", "cuda")
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
#: onnxruntime's name for where each device's OrtValues live (tests map "cuda" to "cpu" to run the CUDA paths).
ORT_DEVICE = {"cpu": "cpu", "cuda": "cuda"}
#: Rows per session call when a batch is larger (the `batch_size` argument's default). In
#: benchmarks/results/throughput.md (2-core CPU) a batch of 4096 ran faster per image as four calls of 1024 rows
#: than as one call at 49 of 55 points (median +13%, up to +61%; the activations of a piece stay in the caches);
#: the one-layer encoders gain least or lose (contractive_ae's fp32 encoder 0.70x, still 1.9x TensorFlow).
DEFAULT_BATCH_SIZE = 1024
#: numpy dtype of each ONNX output type the CPU path writes straight into (aezoo outputs: float32, int32 indices).
_OUTPUT_DTYPES = {"tensor(float)": np.float32, "tensor(int32)": np.int32, "tensor(int64)": np.int64}

# metadata_props written by export.exporter; the JSON ones hold lists, dicts or numbers.
META_PREFIX = "aezoo."
META_KEYS = ("format_version", "preset", "family", "role", "dataset", "latent_dim", "input_shape", "normalization",
             "variational", "inputs", "outputs", "metrics", "versions", "sampling", "precision", "layout",
             "rows_per_call")
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


class DeviceError(InferenceError):
    """The asked-for device cannot be used: onnxruntime lacks its provider, or the provider did not start."""


def variant_file(role, precision="fp32"):
    """The file name of `role` ("encoder", "decoder", "autoencoder") at `precision` (zoo.schema.onnx_file)."""
    if precision not in PRECISIONS:
        raise BundleError("Unknown precision {!r}; choose one of {}.".format(precision, ", ".join(PRECISIONS)))
    name = FILES[role]
    return name if precision == "fp32" else name.replace(".onnx", ".{}.onnx".format(precision))


def file_precision(path):
    """The precision a file's name says (encoder.int8.onnx -> "int8"; encoder.onnx -> "fp32")."""
    name = Path(path).name
    for precision in PRECISIONS[1:]:
        if name.endswith(".{}.onnx".format(precision)):
            return precision
    return "fp32"


def bundle_precisions(folder):
    """The precisions of which `folder` holds at least one file."""
    folder = Path(folder)
    return [p for p in PRECISIONS if any((folder / variant_file(role, p)).is_file() for role in FILES)]


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


def rows_per_call(session):
    """Rows one call of `session` takes at most when a batch is larger: the file's aezoo.rows_per_call where its
    export names one (a VQ-VAE encoder, whose nearest-entry search is blocked like FAISS's), else
    DEFAULT_BATCH_SIZE."""
    rows = decode_metadata(session.get_modelmeta().custom_metadata_map).get("rows_per_call")
    return int(rows) if rows is not None else DEFAULT_BATCH_SIZE


# --- serving a file: the output Reshape --------------------------------------------------------------
# A few fields of ONNX's protobuf messages (onnx.proto), read and written on the wire so that this file needs
# neither the onnx package (whose import costs about 0.5 s) nor generated code.
_MODEL_GRAPH = 7
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT, _GRAPH_VALUE_INFO = 1, 5, 11, 12, 13
_NODE_INPUT, _NODE_OUTPUT, _NODE_OP_TYPE, _NODE_DOMAIN = 1, 2, 4, 7
_VALUE_NAME, _VALUE_TYPE, _TYPE_TENSOR, _TENSOR_ELEM_TYPE, _TENSOR_SHAPE, _SHAPE_DIM, _DIM_VALUE = 1, 2, 1, 1, 2, 1, 1
_INITIALIZER_NAME = 8


def _varint(buf, i):
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def _fields(buf):
    """[(field number, value, encoded field)] of a serialized message (a memoryview): value is an int (varint)
    or a memoryview of the payload, the encoded field a memoryview of its bytes (no copies)."""
    fields, i = [], 0
    while i < len(buf):
        start = i
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i:i + size], i + size
        elif wire in (1, 5):
            value, i = buf[i:i + (8 if wire == 1 else 4)], i + (8 if wire == 1 else 4)
        else:
            raise ValueError("unsupported protobuf wire type {}".format(wire))
        if i > len(buf):
            raise ValueError("truncated protobuf message")
        fields.append((number, value, buf[start:i]))
    return fields


def _encode_varint(value):
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _field(number, payload):
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


def _strings(fields, number):
    return [bytes(v).decode() for n, v, _ in fields if n == number]


def _payload(message, *numbers):
    """The payload of the first field numbers[0] of `message`, then of its first field numbers[1], and so on;
    None where one is missing."""
    for number in numbers:
        message = next((v for n, v, _ in _fields(message) if n == number), None)
        if message is None:
            return None
    return message


def _dims(value_info):
    """[(payload, encoded field)] of each dim of a ValueInfoProto's tensor shape."""
    shape = _payload(value_info, _VALUE_TYPE, _TYPE_TENSOR, _TENSOR_SHAPE)
    return [] if shape is None else [(v, raw) for n, v, raw in _fields(shape) if n == _SHAPE_DIM]


def _tensor_type(value_info):
    """(element type, per-example dims or None where one is not a static number) of a ValueInfoProto."""
    dims = [_payload(dim, _DIM_VALUE) for dim, _ in _dims(value_info)]
    elem = _payload(value_info, _VALUE_TYPE, _TYPE_TENSOR, _TENSOR_ELEM_TYPE)
    static = len(dims) >= 2 and all(isinstance(d, int) and d > 0 for d in dims[1:])
    return elem, tuple(dims[1:]) if static else None


def _edit(message, number, change):
    """`message` with the payload of each field `number` replaced by change(payload)."""
    return b"".join(_field(n, change(v)) if n == number else raw for n, v, raw in _fields(message))


def _with_dims(value_info, dims):
    """A ValueInfoProto whose tensor shape has the encoded dim fields `dims` instead of its own."""
    def shape(old):
        return b"".join(dims) + b"".join(raw for n, _, raw in _fields(old) if n != _SHAPE_DIM)
    return _edit(value_info, _VALUE_TYPE, lambda t: _edit(t, _TYPE_TENSOR, lambda x: _edit(x, _TENSOR_SHAPE, shape)))


def flat_output_model(data):
    """`data` (a serialized ONNX model) with each graph output that a trailing Reshape makes served flat, and
    {output name: the per-example shape it declares}; (data, {}) where none can be.

    onnxruntime runs a Reshape that makes a graph output as a copy of every value into the output's buffer (the
    caller's, with IOBinding); one between two nodes is an alias. Such a Reshape is dropped and the node before
    it writes the output, under the output's name, in the shape the graph records for the Reshape's input
    (value_info): the same values in the same order, rows of the same size. Only where that shape is recorded
    with static per-example dims of as many elements as the output's (so row n stays row n), the target shape is
    a constant (an initializer) and nothing else reads the Reshape's input."""
    top = _fields(memoryview(data))
    graphs = [v for n, v, _ in top if n == _MODEL_GRAPH]
    if len(graphs) != 1:
        return data, {}
    graph = _fields(graphs[0])
    first = lambda message, number: next(iter(_strings(_fields(message), number)), "")
    named = {(n, first(v, _VALUE_NAME)): (i, v) for i, (n, v, _) in enumerate(graph)
             if n in (_GRAPH_INPUT, _GRAPH_OUTPUT, _GRAPH_VALUE_INFO)}
    initializers = {first(v, _INITIALIZER_NAME): i for i, (n, v, _) in enumerate(graph) if n == _GRAPH_INITIALIZER}
    outputs = {tensor for kind, tensor in named if kind == _GRAPH_OUTPUT}
    nodes = [(i, _fields(v)) for i, (n, v, _) in enumerate(graph) if n == _GRAPH_NODE]
    nodes = [(i, _strings(f, _NODE_OP_TYPE), _strings(f, _NODE_DOMAIN), _strings(f, _NODE_INPUT),
              _strings(f, _NODE_OUTPUT)) for i, f in nodes]
    reads, producer = {}, {}
    for i, _, _, ins, outs in nodes:
        for tensor in ins:
            reads[tensor] = reads.get(tensor, 0) + 1
        producer.update((tensor, i) for tensor in outs)
    replaced, dropped, flat = {}, set(), {}
    for i, op, domain, ins, outs in nodes:
        if op != ["Reshape"] or domain not in ([], [""], ["ai.onnx"]) or len(ins) != 2 or len(outs) != 1:
            continue
        (source, shape), out = ins, outs[0]
        if (out not in outputs or (_GRAPH_VALUE_INFO, source) not in named or source in outputs
                or producer.get(source) is None or producer[source] in replaced or reads.get(source) != 1
                or shape not in initializers or reads.get(shape) != 1):
            continue
        out_at, out_info = named[(_GRAPH_OUTPUT, out)]
        info_at, info = named[(_GRAPH_VALUE_INFO, source)]
        (elem, declared), (fed_elem, given) = _tensor_type(out_info), _tensor_type(info)
        if declared is None or given is None or elem != fed_elem or math.prod(declared) != math.prod(given):
            continue
        at = producer[source]
        replaced[at] = _field(_GRAPH_NODE, b"".join(
            _field(_NODE_OUTPUT, out.encode()) if n == _NODE_OUTPUT and v == source.encode() else raw
            for n, v, raw in _fields(graph[at][1])))
        # The output keeps its name, type and batch axis, with the per-example dims of the Reshape's input.
        dims = [raw for _, raw in _dims(out_info)[:1] + _dims(info)[1:]]
        replaced[out_at] = _field(_GRAPH_OUTPUT, _with_dims(out_info, dims))
        dropped.update({i, info_at, initializers[shape]})
        flat[out] = declared
    if not flat:
        return data, {}
    body = b"".join(replaced.get(i, raw) for i, (n, v, raw) in enumerate(graph) if i not in dropped)
    return b"".join(_field(_MODEL_GRAPH, body) if n == _MODEL_GRAPH else raw for n, v, raw in top), flat


def serving_model(file):
    """What onnxruntime loads for `file`, and the per-example shape of each output served flat:
    (path or ONNX bytes, {output name: shape}).

    A graph output made by a Reshape that only changes the per-example shape (a dense layer's (batch, 784) to
    the images' (batch, 28, 28, 1)) costs a full copy of the output at every call (flat_output_model). The
    Runtime loads the file without that Reshape and views the flat rows in the declared shape, which is the same
    memory. On a 2-core EPYC this took linear_ae's int8 decoder at batch 4096 from 2.5M to 3.0M images/s on one
    thread, and ae's float32 decoder from 1.2M to 1.3M. A file that cannot be read is left to onnxruntime,
    whose error the caller sees."""
    try:
        served, flat = flat_output_model(Path(file).read_bytes())
    except Exception:  # not readable, or not a protobuf this reader follows: onnxruntime's load says what is wrong
        return str(file), {}
    return (served, flat) if flat else (str(file), {})


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


def check_batch_size(batch_size):
    """`batch_size` as a positive int, or InputError."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError("batch_size must be a positive integer (rows per onnxruntime call); got {!r}.".format(
            batch_size))
    return int(batch_size)


# --- devices, providers and host memory ----------------------------------------------------------------


def check_device(device):
    """Raise DeviceError unless this onnxruntime can run on `device` ("cpu" or "cuda")."""
    if device not in DEVICES:
        raise InferenceError("device must be one of {}; got {!r}.".format(", ".join(map(repr, DEVICES)), device))
    available = ort.get_available_providers()
    if PROVIDERS[device] not in available:
        raise DeviceError(
            "device={!r} needs onnxruntime's {}, but this onnxruntime {} offers only {}: install the GPU build "
            "(pip uninstall onnxruntime && pip install onnxruntime-gpu; both provide the same module).".format(
                device, PROVIDERS[device], ort.__version__, ", ".join(available)))
    if device == "cuda" and hasattr(ort, "preload_dlls"):
        # onnxruntime-gpu finds CUDA and cuDNN from pip's nvidia-* packages only when preloaded.
        try:
            ort.preload_dlls()
        except Exception as exc:  # a library still missing is reported when the session falls back to the CPU
            warnings.warn("onnxruntime.preload_dlls() failed: {}".format(exc))


def providers_for(device, providers=None, cuda_graph=False):
    """The providers list for onnxruntime: `providers` as given, else the device's (CUDA, then the CPU for what
    CUDA lacks); `cuda_graph` adds enable_cuda_graph=1 to the CUDA provider's options."""
    if providers:
        result = [p if isinstance(p, str) else (p[0], dict(p[1])) for p in providers]
    elif device == "cuda":
        result = [(PROVIDERS["cuda"], {"device_id": "0"}), PROVIDERS["cpu"]]
    else:
        result = [PROVIDERS["cpu"]]
    if cuda_graph:
        for i, entry in enumerate(result):
            name, options = (entry, {}) if isinstance(entry, str) else entry
            if name == PROVIDERS["cuda"]:
                result[i] = (name, dict(options, enable_cuda_graph="1"))
                break
        else:
            raise InferenceError("cuda_graph_batch needs the CUDAExecutionProvider among the providers; got {}.".format(
                ", ".join(e if isinstance(e, str) else e[0] for e in result)))
    return result


class PinnedHost:
    """Page-locked host memory from the CUDA runtime (libcudart, which onnxruntime-gpu loads): a copy between it
    and the GPU is one DMA transfer, where pageable memory is first staged through a driver buffer.

    `PinnedHost.load()` returns None where there is no CUDA runtime; `empty(shape)` gives a numpy array whose
    memory is freed with the last view of it."""

    LIBRARIES = ("libcudart.so.13", "libcudart.so.12", "libcudart.so", "cudart64_13.dll", "cudart64_12.dll")
    PORTABLE = 1  # cudaHostAllocPortable: pinned for every CUDA context, onnxruntime's too

    def __init__(self, library):
        self._lib = library
        self._lib.cudaHostAlloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_uint]
        self._lib.cudaHostAlloc.restype = ctypes.c_int
        self._lib.cudaFreeHost.argtypes = [ctypes.c_void_p]
        self._lib.cudaFreeHost.restype = ctypes.c_int

    @classmethod
    def load(cls):
        """A PinnedHost over the first CUDA runtime library found, or None (the reason is in `load_error`)."""
        errors = []
        for name in cls.LIBRARIES:
            try:
                host = cls(ctypes.CDLL(name))
            except (OSError, AttributeError) as exc:
                errors.append(str(exc))
                continue
            try:
                host.empty((1,))  # a CUDA runtime without a usable GPU loads, but cannot pin
            except MemoryError as exc:
                cls.load_error = "{}: {}".format(name, exc)
                return None
            return host
        cls.load_error = "no CUDA runtime library ({}): {}".format(", ".join(cls.LIBRARIES), errors[-1])
        return None

    def _alloc(self, nbytes):
        ptr = ctypes.c_void_p()
        status = self._lib.cudaHostAlloc(ctypes.byref(ptr), ctypes.c_size_t(nbytes), self.PORTABLE)
        if status != 0 or not ptr.value:
            raise MemoryError("cudaHostAlloc of {} bytes failed (CUDA error {})".format(nbytes, status))
        return ptr.value

    def _free(self, ptr):
        self._lib.cudaFreeHost(ctypes.c_void_p(ptr))

    def empty(self, shape, dtype=np.float32):
        """An uninitialized C-contiguous numpy array in page-locked memory."""
        shape = tuple(int(d) for d in shape)
        dtype = np.dtype(dtype)
        return np.asarray(_HostBlock(self, self._alloc(max(1, math.prod(shape) * dtype.itemsize)), shape, dtype))


class _HostBlock:
    """Owns one PinnedHost allocation; numpy keeps it as the array's base, so it lives as long as any view."""

    def __init__(self, host, ptr, shape, dtype):
        self._host, self._ptr = host, ptr
        self.__array_interface__ = {"data": (ptr, False), "shape": shape, "typestr": dtype.str, "version": 3}

    def __del__(self):
        self._host._free(self._ptr)


class _Staging:
    """A reusable host buffer per role, page-locked when `host` is given: inputs are copied into it before
    onnxruntime copies them to the device."""

    def __init__(self, host):
        self.host, self._buffers = host, {}

    def put(self, key, x):
        buffer = self._buffers.get(key)
        if buffer is None or buffer.shape[0] < len(x) or buffer.shape[1:] != x.shape[1:]:
            buffer = self.host.empty(x.shape) if self.host is not None else np.empty(x.shape, np.float32)
            self._buffers[key] = buffer
        view = buffer[:len(x)]
        np.copyto(view, x)
        return view


class FixedBatch:
    """One session run at a fixed batch N on OrtValues allocated once and bound once, as CUDA graphs need: each
    call copies the batch into the bound input in place (OrtValue.update_inplace) and runs the binding, which on
    a session made with enable_cuda_graph=1 captures the graph on the first runs and replays it after.

    Other batch sizes are cut into pieces of N, the last one padded with zeros (results of the padding are
    dropped): every call replays the one captured graph, with no second session and no new allocation.
    Works on any device, so that the logic is tested on the CPU."""

    def __init__(self, session, batch, item_shape, output_shapes, device, host=None, warmup_runs=2):
        self.session, self.batch, self.device = session, int(batch), device
        self.ort_device = ORT_DEVICE[device]
        self.input_name = session.get_inputs()[0].name
        self.output_names = [o.name for o in session.get_outputs()]
        shape = (self.batch,) + tuple(int(d) for d in item_shape)
        self.staging = host.empty(shape) if host is not None else np.empty(shape, np.float32)
        self.staging[...] = 0
        self.input = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, self.ort_device, 0)
        self.input.update_inplace(self.staging)
        self.outputs = [ort.OrtValue.ortvalue_from_shape_and_type((self.batch,) + tuple(int(d) for d in s),
                                                                  np.float32, self.ort_device, 0)
                        for s in output_shapes]
        self.binding = session.io_binding()
        self.binding.bind_ortvalue_input(self.input_name, self.input)
        for name, value in zip(self.output_names, self.outputs):
            self.binding.bind_ortvalue_output(name, value)
        self._lock = threading.Lock()
        for _ in range(warmup_runs):  # the CUDA provider captures the graph within these
            self.replay()

    def replay(self):
        """Run the bound session on whatever the bound input holds; outputs stay on the device."""
        self.session.run_with_iobinding(self.binding)
        if self.ort_device != "cpu":
            self.binding.synchronize_outputs()

    def run(self, x):
        """Outputs (numpy, on the host) for inputs `x` of any batch size, N at a time."""
        results = []
        with self._lock:
            for start in range(0, len(x), self.batch):
                piece = x[start:start + self.batch]
                n = len(piece)
                self.staging[:n] = piece
                if n < self.batch:
                    self.staging[n:] = 0
                self.input.update_inplace(self.staging)
                self.replay()
                # OrtValue.numpy() copies a device tensor to the host but may share a CPU one: copy then.
                results.append([np.array(o.numpy()[:n], copy=self.ort_device == "cpu") for o in self.outputs])
        return [np.concatenate([r[k] for r in results]) for k in range(len(self.output_names))]


def output_buffers(session, rows):
    """Empty numpy outputs of `session` for `rows` examples, or None where a graph output's per-example shape is
    not static or its type is not one _OUTPUT_DTYPES names."""
    buffers = []
    for arg in session.get_outputs():
        dims = arg.shape[1:]
        if arg.type not in _OUTPUT_DTYPES or not all(isinstance(d, int) and d > 0 for d in dims):
            return None
        buffers.append(np.empty((int(rows),) + tuple(dims), _OUTPUT_DTYPES[arg.type]))
    return buffers


def run_bindings(session, bindings):
    """Run `session` on each IOBinding in turn (the pieces bind_pieces made)."""
    for binding in bindings:
        session.run_with_iobinding(binding)


def bind_pieces(session, x, rows, outputs):
    """One CPU IOBinding per piece of `rows` rows: the piece's input is a view of `x` and its outputs are views of
    `outputs` (numpy, C-contiguous, batch first), so running the bindings in turn fills `outputs` with no copy."""
    name = session.get_inputs()[0].name
    names = [arg.name for arg in session.get_outputs()]
    bindings = []
    for start in range(0, len(x), rows):
        binding = session.io_binding()
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(x[start:start + rows]))
        for out_name, out in zip(names, outputs):
            binding.bind_ortvalue_output(out_name, ort.OrtValue.ortvalue_from_numpy(out[start:start + rows]))
        bindings.append(binding)
    return bindings


# --- CPU serving plans (Runtime.tune) ------------------------------------------------------------------

#: Piece sizes Runtime.tune tries besides the file's rows_per_call. On a 2-core AMD EPYC (Zen 4, 1 MB of L2 a
#: core), conv_ae_fashion_mnist's float32 decoder ran 1,983 images/s as one call of 1024 rows and 2,265 in pieces
#: of 32, whose 28x28x48 activations (150 KB an image) stay in the caches; its encoder was fastest in one call;
#: the one-layer int8 decoders at batch 4096 were fastest on two one-thread workers in pieces of 512 (ae 3.48M
#: images/s, against 3.15M in pieces of 1024 and 2.75M on one two-thread session).
TUNE_ROWS = (32, 128, 512)
#: Rows Runtime.tune times each candidate on at most: no plan's piece is larger, and a batch of 4096 would cost
#: four times as long to rank the candidates the same way.
TUNE_MAX_ROWS = 1024
#: Each candidate is timed for about TUNE_SECONDS (at least one call) in each of TUNE_ROUNDS rounds that take the
#: candidates in turn, so that a change in the machine's speed falls on all of them; its figure is its median.
TUNE_SECONDS = 0.05
TUNE_ROUNDS = 3


@dataclass(frozen=True)
class Plan:
    """How a CPU call of a large batch is served: pieces of `rows` rows, on one session whose intra-op threads
    share each piece (`workers` 1), or on `workers` sessions of one thread each, every one taking its own
    contiguous slice of the batch in pieces of `rows` at the same time.

    Why workers: onnxruntime splits each node over its threads and joins them after it. For a node with little
    work per output, such as the int8 decoders' QGemm (30 inputs to 784 float pixels), that join dominated: on a
    2-core AMD EPYC ae_fashion_mnist's int8 decoder at batch 1024 ran 1.0M images/s on 2 threads in some minutes
    (2.7M in others) and 1.9M on one; two one-thread sessions on the two halves ran 2.6-2.9M, and at batch 4096
    3.2M against 2.7M."""
    rows: int
    workers: int = 1

    def __str__(self):
        return "{} rows a call{}".format(self.rows, ", {} one-thread workers".format(self.workers)
                                         if self.workers > 1 else "")

    def to_dict(self):
        return {"rows": int(self.rows), "workers": int(self.workers)}


def plan_candidates(batch_size, file_rows, threads):
    """The plans Runtime.tune times for a serving batch of `batch_size`: pieces of the file's rows_per_call (the
    untuned default, first) and of each smaller TUNE_ROWS size, each on one session of `threads` threads and, where
    the batch gives every one of `threads` workers at least one piece, on that many one-thread workers."""
    batch_size, first = int(batch_size), min(int(file_rows), int(batch_size))
    rows = [first] + sorted(r for r in TUNE_ROWS if r < first)
    plans = [Plan(r) for r in rows]
    if threads > 1:
        plans += [Plan(min(r, -(-batch_size // threads)), int(threads)) for r in rows if batch_size >= threads * r
                  or r == first and batch_size >= threads]
    return list(dict.fromkeys(plans))


def usable_cpus():
    """CPUs this process may run on (its affinity mask where the OS has one), at least 1."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def slice_bounds(n, workers):
    """[(start, stop)] of `workers` contiguous slices of n rows, as equal as whole rows allow (none empty when
    n >= workers)."""
    edges = [n * i // workers for i in range(workers + 1)]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]


class SlicedRun:
    """A CPU call of `x` on one-thread `sessions` at once (Plan.workers): session i runs its contiguous slice of
    the rows in pieces of `rows`, each piece bound to views of `x` and of `outputs` (no copies). The caller's
    thread runs the first slice, `executor` the others; onnxruntime releases the GIL while a session runs."""

    def __init__(self, sessions, x, rows, outputs, executor):
        self.executor, self._outputs = executor, outputs
        self.work = [(session, bind_pieces(session, x[a:b], rows, [o[a:b] for o in outputs]))
                     for session, (a, b) in zip(sessions, slice_bounds(len(x), len(sessions)))]

    def __call__(self):
        others = [self.executor.submit(run_bindings, *w) for w in self.work[1:]]
        try:
            run_bindings(*self.work[0])
        finally:
            for future in others:
                future.result()

    def outputs(self):
        """Copies of the output buffers the slices write into."""
        return [np.array(o) for o in self._outputs]


def tune_session(session, x, file_rows, threads, workers, executor, seconds=TUNE_SECONDS, batch_size=None):
    """(the fastest Plan, {Plan: images/s} in plan_candidates' order, the untuned plan first) for serving batches
    of `batch_size` (default len(x)) with `session`, timed on `x` (plan_candidates, choose_plan); (None, {}) where
    there is one candidate or an output has no static per-example shape. `workers(k)` gives k one-thread sessions
    of the same file, `executor(k)` a ThreadPoolExecutor with at least k - 1 threads."""
    batch_size = int(batch_size or len(x))
    outputs = output_buffers(session, len(x))
    candidates = plan_candidates(batch_size, file_rows, threads)
    if outputs is None or len(candidates) == 1:
        return None, {}
    runs = {}
    for plan in candidates:
        if plan.workers == 1:
            bindings = bind_pieces(session, x, plan.rows, outputs)
            runs[plan] = functools.partial(run_bindings, session, bindings)
        else:
            runs[plan] = SlicedRun(workers(plan.workers), x, plan.rows, outputs, executor(plan.workers))
    best, speeds = choose_plan(runs, seconds)
    return best, {plan: calls * len(x) for plan, calls in speeds.items()}


def choose_plan(runs, seconds=TUNE_SECONDS, rounds=TUNE_ROUNDS):
    """(the fastest plan, {plan: calls a second}) of `runs` ({Plan: a callable that runs the batch once}),
    timing each for about `seconds` in each of `rounds` rounds that take them in turn (each figure the median
    round) after one warm-up call each."""
    for run in runs.values():
        run()
    speeds = {plan: [] for plan in runs}
    clock = time.perf_counter
    for _ in range(rounds):
        for plan, run in runs.items():
            start, n = clock(), 0
            while True:
                run()
                n += 1
                elapsed = clock() - start
                if elapsed >= seconds:
                    break
            speeds[plan].append(n / elapsed)
    median = {plan: float(np.median(v)) for plan, v in speeds.items()}
    return max(median, key=median.get), median


# --- the runtime ---------------------------------------------------------------------------------------


class Runtime:
    """An exported autoencoder: a bundle folder (encoder/decoder/autoencoder .onnx) or one .onnx file.

    `device`: "cpu" (the default) or "cuda" (onnxruntime-gpu: the CUDA provider, with the CPU for any node it
    lacks); `providers` overrides the list given to onnxruntime (the device then follows its first entry).
    `precision`: "fp32" (default), "fp16" or "int8" picks the variant files of a bundle folder
    (encoder.int8.onnx, ...); for a single file its name says it. `intra_op_threads` caps the threads one call
    may use (default: onnxruntime's, all cores).

    Every call runs through an IOBinding, `batch_size` rows at a time (default: the file's rows_per_call, which is
    DEFAULT_BATCH_SIZE unless its export names fewer, as a VQ-VAE encoder's does; after `tune`, the plan it
    chose, which may also split the batch over one-thread sessions). On the CPU
    each piece reads a view of the input and writes into its rows of the result: no copies. On CUDA the inputs
    are first copied into page-locked host buffers (`pinned_memory`, when the CUDA runtime library is found) so
    that the copy to the GPU is one DMA transfer, and the outputs come back with copy_outputs_to_cpu. A Runtime
    on CUDA serves one call at a time per role.

    `cuda_graph_batch=N` (device="cuda" only): sessions are made with the CUDA provider's enable_cuda_graph=1,
    and each role gets device input and output buffers for exactly N examples, bound once; a call copies its
    batch in place and replays the captured graph. A batch of any other size is cut into pieces of N and the
    last piece padded with zeros, so the one graph serves every call (a batch of 1 costs as much as a batch of
    N: choose N as the serving batch). `batch_size` arguments are then ignored.

    `encode` gives the code (for a VAE the posterior mean; `encode_distribution` gives mean and log
    variance); `decode` maps codes to images; `reconstruct` is decode(encode(x)).
    """

    def __init__(self, path, device=None, precision=None, providers=None, intra_op_threads=None,
                 inter_op_threads=None, cuda_graph_batch=None, io_binding=True, pinned_memory=True):
        self.path = Path(path)
        if device is None:
            first = providers[0] if providers else PROVIDERS["cpu"]
            device = "cuda" if (first if isinstance(first, str) else first[0]) == PROVIDERS["cuda"] else "cpu"
        if device not in DEVICES:
            raise InferenceError("device must be one of {}; got {!r}.".format(", ".join(map(repr, DEVICES)), device))
        if cuda_graph_batch is not None:
            if device != "cuda":
                raise InferenceError("cuda_graph_batch needs device='cuda' (CUDA graphs are a feature of the CUDA "
                                     "provider); got device={!r}.".format(device))
            if int(cuda_graph_batch) < 1 or int(cuda_graph_batch) != cuda_graph_batch:
                raise InferenceError("cuda_graph_batch must be a positive integer; got {!r}.".format(cuda_graph_batch))
            cuda_graph_batch = int(cuda_graph_batch)
        self.device, self.cuda_graph_batch, self.io_binding = device, cuda_graph_batch, bool(io_binding)
        if providers is None or device == "cuda":
            check_device(device)
        options = ort.SessionOptions()
        if intra_op_threads is not None:
            options.intra_op_num_threads = int(intra_op_threads)
        if inter_op_threads is not None:
            options.inter_op_num_threads = int(inter_op_threads)
        self.providers = providers_for(device, providers, cuda_graph=cuda_graph_batch is not None)
        self.precision, files = self._files(precision)
        self.sessions = {}
        self.metadata = {}
        # {role: {output name: per-example shape}} of the outputs served flat (serving_model).
        self.flat_outputs = {}
        for role, file in files:
            session, meta, flat = self._open(file, options)
            if role is not None and meta["role"] != role:
                raise BundleError("{} says it is the {} (aezoo.role), but its file name says {}.".format(
                    file, meta["role"], role))
            self.sessions[meta["role"]], self.metadata[meta["role"]] = session, meta
            self.flat_outputs[meta["role"]] = flat
        self._check_consistent()
        # Read once: onnxruntime's metadata map costs about 20 us a read, four times a batch-1 call of a dense model.
        self.rows_per_call = {role: rows_per_call(session) for role, session in self.sessions.items()}
        first = next(iter(self.metadata.values()))
        self.image_shape = tuple(int(d) for d in first["input_shape"])
        self.latent_dim = int(first["latent_dim"])
        self.preset = first.get("preset")
        self.family = first.get("family")
        self.variational = bool(first.get("variational", False))
        self.normalization = first.get("normalization", NORMALIZATION)
        self.layout = first.get("layout", "nhwc")  # nchw exports say so; input_shape is then (C, H, W)
        self.metrics = first.get("metrics")
        self.versions = first.get("versions")
        host = None
        self.pinned_memory, self.pinned_memory_note = False, "not used on {}".format(device)
        if device == "cuda" and pinned_memory:
            host = PinnedHost.load()
            self.pinned_memory = host is not None
            self.pinned_memory_note = "page-locked (cudaHostAlloc)" if host else (
                "pageable: " + getattr(PinnedHost, "load_error", "no CUDA runtime library"))
        elif device == "cuda":
            self.pinned_memory_note = "pageable: pinned_memory=False"
        self._staging = _Staging(host)
        self._lock = threading.Lock()
        self.graphs = {}
        # Runtime.tune's choices: {role: Plan}, the one-thread sessions of plans with workers, and their threads.
        self.intra_op_threads = None if intra_op_threads is None else int(intra_op_threads)
        self.plans, self._workers, self._executor, self._executor_threads = {}, {}, None, 0
        if cuda_graph_batch is not None:
            for role, session in self.sessions.items():
                try:
                    self.graphs[role] = FixedBatch(session, cuda_graph_batch, self._input_shape(role),
                                                   self._output_shapes(role, session), device, host)
                except Exception as exc:  # onnxruntime's own error classes
                    raise DeviceError("Cannot capture a CUDA graph of {} at batch {}: {}".format(
                        self._file_of(role), cuda_graph_batch, str(exc).splitlines()[0] if str(exc) else exc)) from None

    @classmethod
    def from_preset(cls, name, *, source=None, cache_dir=None, refresh=False, verbose=False, **kwargs):
        """The released ONNX files of preset `name` (e.g. "deep_ae_fashion_mnist"), fetched into the sha256-checked
        cache by zoo.weights: from the release bundled with aezoo by default, else `source` or $ZOO_WEIGHTS_URL.
        `kwargs` go to Runtime (device, precision, providers, intra_op_threads, cuda_graph_batch). Needs the aezoo
        package, not TensorFlow."""
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

    def _files(self, precision):
        """(precision, [(role or None, path)]): a folder names its files by role and precision; a lone file
        declares its role in its metadata and its precision in its name."""
        if precision is not None and precision not in PRECISIONS:
            raise BundleError("Unknown precision {!r}; choose one of {}.".format(precision, ", ".join(PRECISIONS)))
        if self.path.is_dir():
            precision = precision or "fp32"
            files = [(role, self.path / variant_file(role, precision)) for role in FILES
                     if (self.path / variant_file(role, precision)).is_file()]
            if files:
                return precision, files
            have = bundle_precisions(self.path)
            if have:
                raise BundleError("{} has no {} files ({}); it has {}: pass precision= one of those.".format(
                    self.path, precision, ", ".join(variant_file(r, precision) for r in FILES), ", ".join(
                        "{} ({})".format(p, ", ".join(variant_file(r, p) for r in FILES
                                                      if (self.path / variant_file(r, p)).is_file()))
                        for p in have)))
            raise BundleError("{} holds none of {}: not an exported model folder (export one with "
                              "`python -m export RUN_DIR`).".format(self.path, ", ".join(FILES.values())))
        if self.path.is_file():
            if self.path.suffix != ".onnx":
                raise BundleError("{} is not an .onnx file; pass a bundle folder or one of {}.".format(
                    self.path, ", ".join(FILES.values())))
            named = file_precision(self.path)
            if precision is not None and precision != named:
                raise BundleError("{} is the {} variant (by its name), not {}; pass its folder with precision={!r} "
                                  "instead.".format(self.path, named, precision, precision))
            return named, [(None, self.path)]
        raise BundleError("No such model file or folder: {}".format(self.path))

    def _file_of(self, role):
        return self.path if self.path.is_file() else self.path / variant_file(role, self.precision)

    def _open(self, file, options):
        """(session, metadata, the outputs served flat) of `file` (see serving_model)."""
        source, flat = serving_model(file)
        try:
            session = ort.InferenceSession(source, sess_options=options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... classes
            raise BundleError("Cannot load {} with onnxruntime: {}".format(file, exc)) from None
        if self.device == "cuda" and session.get_providers()[0] != PROVIDERS["cuda"]:
            raise DeviceError(
                "onnxruntime did not start the CUDA provider for {} (active: {}); it falls back to the CPU when the "
                "CUDA or cuDNN libraries are not found (its warning names the library): install "
                "onnxruntime-gpu[cuda,cudnn] or put them on LD_LIBRARY_PATH.".format(
                    file, ", ".join(session.get_providers())))
        meta = decode_metadata(session.get_modelmeta().custom_metadata_map)
        missing = [k for k in REQUIRED_KEYS if k not in meta]
        if missing:
            raise BundleError("{} is not an aezoo export: its ONNX metadata lacks {}.".format(
                file, ", ".join(META_PREFIX + k for k in missing)))
        if meta["role"] not in FILES:
            raise BundleError("{} has an unknown aezoo.role {!r}.".format(file, meta["role"]))
        return session, meta, flat

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

    def _input_shape(self, role):
        return (self.latent_dim,) if role == "decoder" else self.image_shape

    def _output_shapes(self, role, session):
        """Per-example shape of each output: from the graph where it is static, else what the role gives."""
        default = (self.latent_dim,) if role == "encoder" else self.image_shape
        shapes = []
        for arg in session.get_outputs():
            if arg.type != "tensor(float)":
                raise BundleError("{}: output {} is {}; aezoo files have float32 outputs.".format(
                    self._file_of(role), arg.name, arg.type))
            dims = arg.shape[1:]
            shapes.append(tuple(dims) if all(isinstance(d, int) and d > 0 for d in dims) else default)
        return shapes

    # --- inference --------------------------------------------------------------------------------

    def _session(self, role, what):
        session = self.sessions.get(role)
        if session is None:
            raise BundleError("{} has no {} ({}), which {} needs; it has: {}.".format(
                self.path, role, FILES[role], what, ", ".join(FILES[r] for r in self.sessions)))
        return session

    def _run(self, role, what, x, batch_size):
        """The outputs of `role`'s file for `x`, each in the shape the file declares."""
        session = self._session(role, what)
        results = self._run_session(role, session, x, batch_size)
        flat = self.flat_outputs.get(role)
        if not flat:
            return results
        # Outputs served flat (serving_model): the same rows, viewed in the declared shape (no copy).
        return [r.reshape((len(r),) + flat[arg.name]) if arg.name in flat else r
                for r, arg in zip(results, session.get_outputs())]

    def _run_session(self, role, session, x, batch_size):
        graph = self.graphs.get(role)
        if graph is not None:
            return graph.run(x)
        plan = self.plans.get(role) if batch_size is None else None
        batch_size = check_batch_size(plan.rows if plan else self.rows_per_call[role] if batch_size is None
                                      else batch_size)
        if self.io_binding and self.device == "cpu":
            outputs = output_buffers(session, len(x))
            if outputs is not None:
                if plan and plan.workers > 1 and len(x) > batch_size:
                    SlicedRun(self._workers[role], x, batch_size, outputs, self._executor)()
                    return outputs
                run_bindings(session, bind_pieces(session, x, batch_size, outputs))
                return outputs
        run = self._run_bound if self.io_binding else self._run_plain
        chunks = [run(role, session, x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        return [np.concatenate([c[k] for c in chunks]) for k in range(len(chunks[0]))]

    @staticmethod
    def _run_plain(role, session, x):
        return session.run(None, {session.get_inputs()[0].name: x})

    def _run_bound(self, role, session, x):
        """One call through an IOBinding: inputs from host memory (page-locked on CUDA), outputs allocated on
        the device by onnxruntime and copied back. (On the CPU, _run writes each piece straight into its rows of
        the result instead, where the graph's output shapes are static.)"""
        binding = session.io_binding()
        if self.device == "cpu":
            return self._finish(session, binding, x)
        with self._lock:
            return self._finish(session, binding, self._staging.put(role, x))

    def _finish(self, session, binding, x):
        binding.bind_cpu_input(session.get_inputs()[0].name, x)
        for arg in session.get_outputs():
            binding.bind_output(arg.name, ORT_DEVICE[self.device], 0)
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def tune(self, batch_size, roles=None, seconds=TUNE_SECONDS):
        """Choose, for each role (default: every file), the CPU plan that serves a batch of `batch_size` fastest on
        this machine, and use it from now on for every call that passes no `batch_size`. The candidates
        (plan_candidates) are pieces of the file's rows_per_call, 512, 128 and 32 rows, on one session or on one
        one-thread session per core (Plan), each timed on synthetic inputs of min(batch_size, TUNE_MAX_ROWS)
        rows for about 3 x `seconds`. Returns {role: {"plan": {...}, "candidates": {plan: images/s}}}.

        The best plan depends on the machine's caches and on what else runs on it: tune on the serving machine,
        at the serving batch. Outputs do not depend on the plan (the same per-row computation), up to the
        float rounding of a different thread split."""
        if self.device != "cpu" or not self.io_binding:
            raise InferenceError("tune() chooses how CPU calls are cut into pieces and threads; it needs "
                                 "device='cpu' and io_binding=True (this Runtime has device={!r}, io_binding={})."
                                 .format(self.device, self.io_binding))
        batch_size = check_batch_size(batch_size)
        threads = self.intra_op_threads or usable_cpus()
        rng = np.random.default_rng(0)
        report = {}
        for role in (self.sessions if roles is None else roles):
            session = self._session(role, "tune()")
            # Codes standard normal, images uniform in [0, 1), as the throughput benchmark's inputs.
            draw = rng.standard_normal if role == "decoder" else rng.random
            x = draw((min(batch_size, TUNE_MAX_ROWS),) + tuple(self._input_shape(role))).astype(np.float32)
            best, speeds = tune_session(session, x, self.rows_per_call[role], threads,
                                        lambda k, r=role: self._worker_sessions(r, k), self._pool, seconds,
                                        batch_size)
            if best is None:
                self.plans.pop(role, None)
            else:
                self.plans[role] = best
            if best is None or best.workers == 1:
                self._workers.pop(role, None)
            report[role] = {"plan": best and best.to_dict(), "batch_size": batch_size,
                            "candidates": {str(p): round(v) for p, v in speeds.items()}}
        return report

    def _worker_sessions(self, role, workers):
        sessions = self._workers.get(role, [])
        if len(sessions) != workers:
            options = ort.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = 1
            sessions = self._workers[role] = [self._open(self._file_of(role), options)[0] for _ in range(workers)]
        return sessions

    def _pool(self, workers):
        if self._executor is None or self._executor_threads < workers - 1:
            self._executor_threads = max(1, workers - 1)
            self._executor = ThreadPoolExecutor(self._executor_threads, thread_name_prefix="aezoo-runtime")
        return self._executor

    def encode_distribution(self, images, batch_size=None):
        """(z_mean, z_log_var) of a VAE's posterior for each image."""
        if not self.variational:
            raise InferenceError("{} is not variational ({}); use encode().".format(self.path, self.family))
        z_mean, z_log_var = self._run("encoder", "encode_distribution", check_images(images, self.image_shape),
                                      batch_size)
        return z_mean, z_log_var

    def _encoder_output(self, images, name, batch_size):
        """The encoder's output `name` for `images`; None: the code (z_mean for a VAE, else the first output)."""
        have = [o.name for o in self._session("encoder", "encode").get_outputs()]
        if name is None:
            found = have.index("z_mean") if "z_mean" in have else 0
        elif name in have:
            found = have.index(name)
        else:
            raise InferenceError("{} ({}) has no encoder output {!r}: it has {}.{}".format(
                self.path, self.family, name, ", ".join(have),
                " Only a VQ-VAE has indices; use encode()." if name == "indices" else ""))
        return self._run("encoder", "encode", check_images(images, self.image_shape), batch_size)[found]

    def encode(self, images, batch_size=None):
        """Codes (batch, latent_dim) of float32 NHWC images in [0, 1]; the posterior mean for a VAE."""
        return self._encoder_output(images, None, batch_size)

    def encode_indices(self, images, batch_size=None):
        """A VQ-VAE's discrete code: the codebook entry of each token (batch, tokens), int32. decode() takes the
        quantised code that encode() gives for the same images."""
        return self._encoder_output(images, "indices", batch_size)

    def decode(self, latents, batch_size=None):
        """Images (batch, H, W, C) in [0, 1] decoded from codes (batch, latent_dim)."""
        return self._run("decoder", "decode", check_latents(latents, self.latent_dim), batch_size)[0]

    def reconstruct(self, images, batch_size=None):
        """decode(encode(images)), with the autoencoder file when there is one."""
        x = check_images(images, self.image_shape)
        if "autoencoder" in self.sessions or not {"encoder", "decoder"} <= set(self.sessions):
            return self._run("autoencoder", "reconstruct", x, batch_size)[0]
        return self.decode(self.encode(x, batch_size), batch_size)

    def sample(self, n, seed=None, batch_size=None):
        """n images from a VAE: codes from the N(0, I) prior through the decoder."""
        if not self.variational:
            raise InferenceError("{} is not variational ({}); only VAEs have a prior to sample.".format(
                self.path, self.family))
        z = np.random.default_rng(seed).standard_normal((int(n), self.latent_dim)).astype(np.float32)
        return self.decode(z, batch_size)

    def describe(self):
        """A JSON-able summary: what the model expects and what it is."""
        return {
            "path": str(self.path), "files": {r: str(self._file_of(r).name) for r in self.sessions},
            "preset": self.preset, "family": self.family, "input_shape": list(self.image_shape),
            "latent_dim": self.latent_dim, "normalization": self.normalization, "layout": self.layout,
            "variational": self.variational,
            "metrics": self.metrics, "device": self.device, "precision": self.precision,
            "providers": next(iter(self.sessions.values())).get_providers(),
            "cuda_graph_batch": self.cuda_graph_batch, "host_memory": self.pinned_memory_note,
            "rows_per_call": dict(self.rows_per_call),
            "plans": {role: plan.to_dict() for role, plan in self.plans.items()},
            "flat_outputs": {role: {name: list(shape) for name, shape in flat.items()}
                             for role, flat in self.flat_outputs.items() if flat},
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


def run_command(command, model, inputs, out, log_var_out=None, providers=None, threads=None, device=None,
                precision=None, tune=False):
    """What the CLI does: load, read, run, save. Returns the array written to `out`. `tune`: first choose the
    CPU plan for this many inputs (Runtime.tune) for the files the command runs."""
    runtime = Runtime(model, device=device, precision=precision, providers=providers, intra_op_threads=threads)
    roles = {"encode": ["encoder"], "decode": ["decoder"],
             "reconstruct": ["autoencoder"] if "autoencoder" in runtime.sessions else ["encoder", "decoder"]}
    if command == "decode":
        latents = inputs if isinstance(inputs, np.ndarray) else _read_latents(inputs)
        if tune:
            runtime.tune(len(latents), roles=roles[command])
        result = runtime.decode(latents)
    else:
        images = read_images(inputs, runtime.image_shape) if not isinstance(inputs, np.ndarray) else inputs
        if tune:
            runtime.tune(len(images), roles=roles[command])
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
        p.add_argument("--device", choices=DEVICES, help="cpu (default) or cuda (needs onnxruntime-gpu)")
        p.add_argument("--precision", choices=PRECISIONS, help="which files of a bundle folder: fp32 (default), "
                                                               "fp16 or int8 (encoder.int8.onnx, ...)")
        p.add_argument("--providers", help="comma-separated onnxruntime providers, e.g. CPUExecutionProvider")
        p.add_argument("--tune", action="store_true", help="CPU: first time the ways of cutting this batch into "
                       "pieces and threads and keep the fastest (Runtime.tune; a few seconds, worth it for large "
                       "inputs)")
    p = sub.add_parser("info", help="print what a model expects (from its ONNX metadata)")
    p.add_argument("model")
    p.add_argument("--precision", choices=PRECISIONS)
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            print(json.dumps(Runtime(args.model, precision=args.precision).describe(), indent=2))
            return 0
        providers = args.providers.split(",") if args.providers else None
        result = run_command(args.command, args.model, args.inputs, args.out,
                             log_var_out=getattr(args, "log_var_out", None), providers=providers,
                             threads=args.threads, device=args.device, precision=args.precision,
                             tune=args.tune)
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
