"""onnxruntime sessions as the benchmark runs them: explicit providers and threads, and the ways of calling one
that it times: device-resident (IOBinding, no copies), copy-inclusive from pinned host buffers, and CUDA-graph
replay. Devices, providers and pinned host memory are export.runtime's, so the runtime and the benchmark agree."""

import numpy as np
import onnx
import onnxruntime as ort

from benchmarks.errors import BenchmarkError, DeviceUnavailableError
from export import runtime

DEVICES = runtime.DEVICES
PROVIDERS = runtime.PROVIDERS


def check_device(device):
    """Raise DeviceUnavailableError unless onnxruntime can run on `device`."""
    if device not in DEVICES:
        raise BenchmarkError("--device must be one of {}; got {!r}.".format(", ".join(DEVICES), device))
    try:
        runtime.check_device(device)
    except runtime.InferenceError as exc:
        raise DeviceUnavailableError(str(exc)) from None


def session_options(threads, spin=True):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    # Spinning workers answer fastest on idle cores but fight other processes for busy ones (--no-spin).
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    # Lets the result say which nodes ran on which provider (onnxruntime >= 1.23; ignored before).
    options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    return options


def providers_for(device, cuda_graph=False):
    return runtime.providers_for(device, cuda_graph=cuda_graph)


def provider_names(device):
    return [p if isinstance(p, str) else p[0] for p in providers_for(device)]


def make_session(model, device, threads, spin=True, cuda_graph=False):
    """An InferenceSession with ORT_ENABLE_ALL, explicit providers and threads; the provider must be active. A file
    is loaded as export.runtime's Runtime serves it (runtime.serving_model: an output made by a trailing Reshape
    comes out flat, the same rows)."""
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else runtime.serving_model(model)[0]
    what = "the MatMul model" if isinstance(model, onnx.ModelProto) else model
    try:
        session = ort.InferenceSession(source, session_options(threads, spin),
                                       providers=providers_for(device, cuda_graph))
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... classes
        raise BenchmarkError("onnxruntime {} cannot load {}{}: {}".format(
            ort.__version__, what, " with CUDA graphs" if cuda_graph else "", exc)) from None
    active = session.get_providers()
    if active[0] != PROVIDERS[device]:
        raise DeviceUnavailableError(
            "onnxruntime did not activate {} for {} (active: {}); it falls back to the CPU silently, usually "
            "because CUDA 13 or cuDNN 9 libraries were not found (its warning above names the library). Install "
            "onnxruntime-gpu[cuda,cudnn] or put the libraries on LD_LIBRARY_PATH.".format(
                PROVIDERS[device], what, ", ".join(active)))
    return session


def node_placement(session):
    """{provider: number of nodes} after optimization, or None where onnxruntime cannot tell."""
    try:
        placement = {}
        for subgraph in session.get_provider_graph_assignment_info():
            placement[subgraph.ep_name] = placement.get(subgraph.ep_name, 0) + len(subgraph.get_nodes())
        return placement
    except Exception:
        return None


def _output_values(session, output_shapes, where):
    return [ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, where, 0) for shape in output_shapes]


class BoundRun:
    """One call of a session with inputs and outputs resident on the device (IOBinding): no copies timed.

    Outputs are allocated by a first run, or up front from `output_shapes` (full shapes, batch included), which a
    session with CUDA graphs needs: its captured graph writes to the addresses it was captured with."""

    def __init__(self, session, feeds, device, output_shapes=None):
        self.session, self.device = session, device
        where = runtime.ORT_DEVICE[device]
        self._arrays = feeds  # OrtValues made from numpy on the CPU share its memory: keep it alive
        self.binding = session.io_binding()
        self._inputs = {n: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x), where, 0)
                        for n, x in feeds.items()}
        for name, value in self._inputs.items():
            self.binding.bind_ortvalue_input(name, value)
        names = [o.name for o in session.get_outputs()]
        if output_shapes is None:
            for name in names:
                self.binding.bind_output(name, where, 0)
            # The first run allocates the outputs on the device; later runs write into the same buffers.
            session.run_with_iobinding(self.binding)
            self._outputs = self.binding.get_outputs()
            self.binding.clear_binding_outputs()
        else:
            self._outputs = _output_values(session, output_shapes, where)
        for name, value in zip(names, self._outputs):
            self.binding.bind_ortvalue_output(name, value)

    def __call__(self):
        self.session.run_with_iobinding(self.binding)
        if runtime.ORT_DEVICE[self.device] != "cpu":
            self.binding.synchronize_outputs()

    def output_shapes(self):
        return [tuple(v.shape()) for v in self._outputs]

    def outputs(self):
        return self.binding.copy_outputs_to_cpu()


class PiecesRun:
    """A CPU call of a batch larger than `rows` as export.runtime.Runtime serves it: pieces of `rows` rows, each
    bound to a view of the input and to its rows of output buffers allocated once (IOBinding, no copies)."""

    def __init__(self, session, x, rows):
        self.session, self.rows = session, int(rows)
        self._x = np.ascontiguousarray(x)
        self._outputs = runtime.output_buffers(session, len(self._x))
        if self._outputs is None:
            raise BenchmarkError("{} has an output without a static per-example shape; it cannot be run in "
                                 "pieces.".format(session.get_outputs()[0].name))
        self._bindings = runtime.bind_pieces(session, self._x, self.rows, self._outputs)

    def __call__(self):
        runtime.run_bindings(self.session, self._bindings)

    def outputs(self):
        return [np.array(o) for o in self._outputs]


class PinnedCopyRun:
    """One call with its inputs in page-locked host memory and its outputs written back to page-locked host
    memory: the host-device copies a serving loop pays, each one DMA transfer (IOBinding; onnxruntime copies
    the bound CPU input to the device and the device results to the bound CPU outputs)."""

    def __init__(self, session, feeds, host, output_shapes):
        self.session = session
        self.binding = session.io_binding()
        self._buffers = []
        for name, x in feeds.items():
            pinned = host.empty(x.shape)
            np.copyto(pinned, x)
            self._buffers.append(pinned)
            self.binding.bind_cpu_input(name, pinned)
        for arg, shape in zip(session.get_outputs(), output_shapes):
            pinned = host.empty(shape)
            self._buffers.append(pinned)
            self.binding.bind_ortvalue_output(arg.name, ort.OrtValue.ortvalue_from_numpy(pinned, "cpu", 0))
        self._outputs = self._buffers[len(feeds):]

    def __call__(self):
        self.session.run_with_iobinding(self.binding)

    def outputs(self):
        return [np.array(o) for o in self._outputs]
