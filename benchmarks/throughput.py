"""onnxruntime throughput of exported encoders, decoders and autoencoders on CPU or CUDA, against the
device's measured MatMul peak and TensorFlow running the exported SavedModel on the same inputs.

    python -m benchmarks.throughput runs/*_fashion_mnist --out benchmarks/results/
    python -m benchmarks.throughput EXPORT_DIR --device cuda   # needs onnxruntime-gpu; never imports TensorFlow

This module needs numpy, onnx and onnxruntime only (matplotlib for the plot, if installed): the
TensorFlow baseline runs in a worker process (benchmarks.tf_baseline), timed right after onnxruntime on
each point, so that TensorFlow's thread settings take effect and the CUDA process never loads TensorFlow.
"""

import argparse
import csv
import datetime
import importlib.metadata
import importlib.util
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from benchmarks.flops import count_flops
from zoo import schema

PARTS = schema.ONNX_FILES
ENDPOINTS = {part: endpoint for endpoint, part in schema.ENDPOINTS.items()}  # part -> SavedModel endpoint
SAVEDMODEL_DIR = schema.SAVEDMODEL_DIR
DEVICES = ("cpu", "cuda")
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
DEFAULT_BATCH_SIZES = (1, 8, 64, 256, 1024, 4096)
DEFAULT_PEAK_SIZES = {"cpu": (1024, 2048), "cuda": (4096, 8192)}
# Many CPU threads need bigger matrices to be kept busy: 2048 leaves a 16-core Xeon short of its peak.
MANY_THREADS_PEAK_SIZES = (2048, 4096)
MANY_THREADS = 8
DEFAULT_OUT = Path(schema.RESULTS_DIR)
RUNS_DIR = Path(schema.RUNS_DIR)
SCHEMA = "aezoo.throughput/1"
# A point is timed for at most `max_seconds`, but never fewer than MIN_RUNS times (unless --repeats is lower).
DEFAULT_REPEATS = 200
DEFAULT_MAX_SECONDS = 1.0
DEFAULT_WARMUP_SECONDS = 0.2
MIN_RUNS = 5
MIN_WARMUP_RUNS = 1
MAX_WARMUP_RUNS = 100
# The targets of issue #5, evaluated on every CPU result.
TARGET_FRACTION_OF_PEAK = 0.75
TARGET_FRACTION_MIN_BATCH = 256
TARGET_BATCH1_ENCODER_US = 100.0

PEAK_DEFINITION = ("best of onnxruntime MatMul on float32 square matrices {sizes} (2*n^3 operations per run, median "
                   "time), same device, provider, session options and threads as the models, inputs and output bound "
                   "on the device (IOBinding); measured before and after the models, best taken")

CSV_COLUMNS = (
    "model", "family", "part", "device", "provider", "batch_size", "threads", "runs",
    "latency_us_p50", "latency_us_p90", "latency_us_p99", "latency_us_mean", "images_per_s",
    "flops_per_image", "gflops_per_s", "fraction_of_peak", "peak_gflops_per_s",
    "copy_latency_us_p50", "copy_latency_us_p90", "copy_latency_us_p99", "copy_images_per_s",
    "tf_latency_us_p50", "tf_latency_us_p90", "tf_latency_us_p99", "tf_images_per_s",
    "ort_tf_ratio", "ort_tf_ratio_copy",
)


class BenchmarkError(Exception):
    """The benchmark cannot run as asked; the message says why and what to do."""


class ModelNotFoundError(BenchmarkError):
    """No exported model where the command line points."""


class DeviceUnavailableError(BenchmarkError):
    """The asked-for device (the CUDA provider) is not available or not active."""


def log(message, quiet=False):
    if not quiet:
        print(message, file=sys.stderr, flush=True)


# --- finding the models ------------------------------------------------------------------------------


class ExportedModel:
    """An export dir: its ONNX parts, its SavedModel (if any), and what its ONNX metadata says."""

    def __init__(self, directory, parts=tuple(PARTS)):
        self.dir = Path(directory)
        self.parts = {p: self.dir / PARTS[p] for p in parts}
        self.metadata = read_metadata(next(iter(self.parts.values())))
        folder = self.dir.parent if self.dir.name == "export" else self.dir
        self.name = self.metadata.get("preset") or folder.name
        self.family = self.metadata.get("family") or ""
        savedmodel = self.dir / SAVEDMODEL_DIR
        self.savedmodel = savedmodel if (savedmodel / "saved_model.pb").is_file() else None

    def describe(self):
        return {"name": self.name, "dir": str(self.dir), "family": self.family,
                "latent_dim": self.metadata.get("latent_dim"), "input_shape": self.metadata.get("input_shape"),
                "files": {p: str(f) for p, f in self.parts.items()},
                "savedmodel": str(self.savedmodel) if self.savedmodel else None}


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


def resolve_model(arg, parts=tuple(PARTS), runs_dir=RUNS_DIR):
    """An export dir, a run dir holding export/, or a preset name meaning runs/<preset>/export/."""
    path = Path(arg)
    candidates = [path, path / "export"]
    if not path.is_absolute() and len(path.parts) == 1:
        candidates.append(Path(runs_dir) / arg / "export")
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
        "No exported model at {!r}: looked for {} in {}. Pass an export dir, a run dir, or a preset name with "
        "runs/<preset>/export/ (train with `python -m zoo.train PRESET`, then `python -m export runs/PRESET`)."
        .format(str(arg), ", ".join(PARTS[p] for p in parts), ", ".join(str(c) for c in candidates)))


def find_all(parts=tuple(PARTS), runs_dir=RUNS_DIR):
    found = [ExportedModel(d, parts) for d in sorted(Path(runs_dir).glob("*/export")) if _has_parts(d, parts)]
    if not found:
        raise ModelNotFoundError("--all found no exported runs under {}/ (each needs export/ with {}). Export one "
                                 "with `python -m export runs/PRESET`.".format(runs_dir, ", ".join(PARTS.values())))
    return found


# --- onnxruntime sessions ----------------------------------------------------------------------------


def check_device(device):
    """Raise DeviceUnavailableError unless onnxruntime can run on `device`."""
    if device not in DEVICES:
        raise BenchmarkError("--device must be one of {}; got {!r}.".format(", ".join(DEVICES), device))
    if device == "cuda":
        available = ort.get_available_providers()
        if PROVIDERS["cuda"] not in available:
            raise DeviceUnavailableError(
                "--device cuda needs onnxruntime's CUDAExecutionProvider, but this onnxruntime {} ({}) offers only "
                "{}. Install the GPU build, `pip install .[gpu]` (onnxruntime-gpu; uninstall the CPU package "
                "`onnxruntime` first, both provide the same module).".format(
                    ort.__version__, _ort_distribution() or "unknown package", ", ".join(available)))
        if hasattr(ort, "preload_dlls"):
            # onnxruntime-gpu finds CUDA and cuDNN from pip's nvidia-* packages only when preloaded.
            try:
                ort.preload_dlls()
            except Exception as exc:  # a missing library is reported below when the session falls back
                warnings.warn("onnxruntime.preload_dlls() failed: {}".format(exc))


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


def providers_for(device):
    if device == "cuda":
        return [(PROVIDERS["cuda"], {"device_id": 0}), PROVIDERS["cpu"]]
    return [PROVIDERS["cpu"]]


def make_session(model, device, threads, spin=True):
    """An InferenceSession with ORT_ENABLE_ALL, explicit providers and threads; the provider must be active."""
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    try:
        session = ort.InferenceSession(source, session_options(threads, spin), providers=providers_for(device))
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... classes
        raise BenchmarkError("onnxruntime {} cannot load {}: {}".format(
            ort.__version__, "the MatMul model" if isinstance(model, onnx.ModelProto) else model, exc)) from None
    active = session.get_providers()
    if active[0] != PROVIDERS[device]:
        raise DeviceUnavailableError(
            "onnxruntime did not activate {} for {} (active: {}); it falls back to the CPU silently, usually "
            "because CUDA 13 or cuDNN 9 libraries were not found (its warning above names the library). Install "
            "onnxruntime-gpu[cuda,cudnn] or put the libraries on LD_LIBRARY_PATH.".format(
                PROVIDERS[device], "the MatMul model" if isinstance(model, onnx.ModelProto) else model,
                ", ".join(active)))
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


class BoundRun:
    """One call of a session with inputs and outputs resident on the device (IOBinding): no copies timed."""

    def __init__(self, session, feeds, device):
        self.session, self.device = session, device
        self._arrays = feeds  # OrtValues made from numpy on the CPU share its memory: keep it alive
        self.binding = session.io_binding()
        self._inputs = {n: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x), device, 0)
                        for n, x in feeds.items()}
        for name, value in self._inputs.items():
            self.binding.bind_ortvalue_input(name, value)
        names = [o.name for o in session.get_outputs()]
        for name in names:
            self.binding.bind_output(name, device, 0)
        # The first run allocates the outputs on the device; later runs write into the same buffers.
        session.run_with_iobinding(self.binding)
        self._outputs = self.binding.get_outputs()
        self.binding.clear_binding_outputs()
        for name, value in zip(names, self._outputs):
            self.binding.bind_ortvalue_output(name, value)

    def __call__(self):
        self.session.run_with_iobinding(self.binding)
        if self.device != "cpu":
            self.binding.synchronize_outputs()

    def outputs(self):
        return self.binding.copy_outputs_to_cpu()


# --- timing ------------------------------------------------------------------------------------------


def time_calls(fn, repeats=DEFAULT_REPEATS, max_seconds=DEFAULT_MAX_SECONDS, warmup_seconds=DEFAULT_WARMUP_SECONDS,
               min_runs=MIN_RUNS):
    """Warm up, then time up to `repeats` calls (at least `min_runs`, else about `max_seconds` in all); ns each."""
    clock = time.perf_counter_ns
    start, n = clock(), 0
    while True:
        t0 = clock()
        fn()
        last = clock() - t0
        n += 1
        if n >= MIN_WARMUP_RUNS and (clock() - start >= warmup_seconds * 1e9 or n >= MAX_WARMUP_RUNS):
            break
    runs = int(min(repeats, max(min_runs, max_seconds * 1e9 // max(last, 1))))
    times = np.empty(max(runs, 1), dtype=np.int64)
    for i in range(len(times)):
        t0 = clock()
        fn()
        times[i] = clock() - t0
    return times


def latency_stats(times_ns, batch_size, prefix="latency_us"):
    us = np.asarray(times_ns, dtype=np.float64) / 1e3
    p50, p90, p99 = np.percentile(us, [50, 90, 99])
    return {"runs": int(len(us)), prefix + "_p50": float(p50), prefix + "_p90": float(p90),
            prefix + "_p99": float(p99), prefix + "_mean": float(us.mean()), prefix + "_min": float(us.min()),
            "images_per_s": float(batch_size / (p50 / 1e6))}


def make_input(name, item_shape, batch_size, seed=0):
    """The benchmark's inputs, identical in every process: images uniform in [0, 1), codes standard normal."""
    rng = np.random.default_rng([int(seed), int(batch_size)])
    shape = (int(batch_size),) + tuple(int(d) for d in item_shape)
    if name == "latent" or len(item_shape) == 1:
        return rng.standard_normal(shape, dtype=np.float32)
    return rng.random(shape, dtype=np.float32)


def item_shape(session, model):
    """Per-example input shape, from the graph or else from the aezoo metadata."""
    arg = session.get_inputs()[0]
    dims = arg.shape[1:]
    if all(isinstance(d, int) and d > 0 for d in dims):
        return tuple(dims)
    if arg.name == "latent" and "latent_dim" in model.metadata:
        return (int(model.metadata["latent_dim"]),)
    if "input_shape" in model.metadata:
        return tuple(int(d) for d in model.metadata["input_shape"])
    raise BenchmarkError("{}: input {} has shape {}, and no aezoo metadata gives the missing sizes.".format(
        model.dir, arg.name, arg.shape))


# --- the measurements --------------------------------------------------------------------------------


def matmul_model(n):
    """C = A @ B for float32 (n, n) inputs; both are inputs, so nothing is constant-folded."""
    h = onnx.helper
    a = h.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [n, n])
    b = h.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [n, n])
    c = h.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [n, n])
    graph = h.make_graph([h.make_node("MatMul", ["a", "b"], ["c"])], "matmul_{}".format(n), [a, b], [c])
    # IR 8 (the one opset 17 came with): onnx's newest IR is often newer than an installed onnxruntime reads.
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], producer_name="aezoo.benchmarks", ir_version=8)


def measure_peak(device, threads, sizes, max_seconds=DEFAULT_MAX_SECONDS, when="start", spin=True):
    """GFLOP/s of onnxruntime MatMul at each size (see PEAK_DEFINITION)."""
    results = []
    for n in sizes:
        session = make_session(matmul_model(n), device, threads, spin)
        rng = np.random.default_rng(n)
        feeds = {k: rng.standard_normal((n, n), dtype=np.float32) for k in ("a", "b")}
        bound = BoundRun(session, feeds, device)
        times = time_calls(bound, repeats=50, max_seconds=max_seconds, min_runs=3)
        p50 = float(np.median(times))
        results.append({"n": int(n), "when": when, "runs": int(len(times)), "latency_us_p50": p50 / 1e3,
                        "gflops_per_s": 2.0 * n ** 3 / p50})
        del bound, session
    return results


def numpy_matmul_gflops(n=2048, max_seconds=0.5):
    """numpy's float32 matmul, for reference only: its BLAS picks its own thread count."""
    rng = np.random.default_rng(n)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    out = np.empty((n, n), np.float32)
    times = time_calls(lambda: np.matmul(a, b, out=out), repeats=20, max_seconds=max_seconds, min_runs=3)
    return {"n": n, "gflops_per_s": 2.0 * n ** 3 / float(np.median(times))}


def bench_part(model, part, device, threads, batch_sizes, repeats, max_seconds, warmup_seconds, seed,
               copy_inclusive=True, tf=None, spin=True, quiet=False):
    """Rows for one ONNX file at every batch size: bound (IOBinding) latency, copy-inclusive latency, and
    TensorFlow's latency on the same inputs when `tf` (a TFBaseline) is given, each timed right after the other."""
    session = make_session(model.parts[part], device, threads, spin)
    arg = session.get_inputs()[0]
    shape = item_shape(session, model)
    output_names = [o.name for o in session.get_outputs()]
    info = {"provider": session.get_providers()[0], "node_placement": node_placement(session),
            "input": arg.name, "outputs": output_names}
    rows = []
    for batch_size in batch_sizes:
        x = make_input(arg.name, shape, batch_size, seed)
        bound = BoundRun(session, {arg.name: x}, device)
        row = {"model": model.name, "family": model.family, "part": part, "device": device,
               "provider": info["provider"], "batch_size": int(batch_size), "threads": int(threads)}
        row.update(latency_stats(time_calls(bound, repeats, max_seconds, warmup_seconds), batch_size))
        del bound
        if copy_inclusive:
            copy = latency_stats(time_calls(lambda: session.run(output_names, {arg.name: x}), repeats, max_seconds,
                                            warmup_seconds), batch_size, prefix="copy_latency_us")
            row.update({k: v for k, v in copy.items() if k.startswith("copy_")})
            row["copy_images_per_s"] = copy["images_per_s"]
            row["copy_runs"] = copy["runs"]
        message = "  {:<12} batch {:>5}: p50 {:>10.1f} us {:>12,.0f} images/s".format(
            part, batch_size, row["latency_us_p50"], row["images_per_s"])
        if tf is not None and model.savedmodel is not None:
            stats = tf.measure(model, part, batch_size, repeats, max_seconds, warmup_seconds, seed)
            for key in ("latency_us_p50", "latency_us_p90", "latency_us_p99", "latency_us_mean", "runs"):
                row["tf_" + key] = stats[key]
            row["tf_images_per_s"] = stats["images_per_s"]
            row["ort_tf_ratio"] = row["images_per_s"] / stats["images_per_s"]
            if "copy_images_per_s" in row:
                row["ort_tf_ratio_copy"] = row["copy_images_per_s"] / stats["images_per_s"]
            message += "  TensorFlow {:>12,.0f} images/s  ORT/TF {:.2f}".format(
                stats["images_per_s"], row["ort_tf_ratio"])
        rows.append(row)
        log(message, quiet)
    return rows, info


# --- the TensorFlow baseline (in a subprocess) -------------------------------------------------------


def tensorflow_installed():
    return importlib.util.find_spec("tensorflow") is not None


class TFBaseline:
    """A benchmarks.tf_baseline worker process: TensorFlow timed on the same points, right after onnxruntime."""

    def __init__(self, device, threads, quiet=False):
        root = Path(__file__).resolve().parent.parent
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join(
            [str(root)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        if device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = "-1"
        # Its stderr (TensorFlow's start-up chatter) goes to a file, shown only if the worker fails.
        self._log = tempfile.TemporaryFile(mode="w+")
        log("TensorFlow baseline: starting a worker process ({} threads)".format(threads), quiet)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.tf_baseline", "--threads", str(int(threads)), "--device", device],
            cwd=str(root), env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True)
        self.info = self._reply()["info"]

    def _reply(self):
        line = self._proc.stdout.readline()
        reply = json.loads(line) if line.strip() else None
        if reply is None or not reply.get("ok"):
            self._log.seek(0)
            tail = self._log.read()[-3000:]
            self.close()
            raise BenchmarkError("The TensorFlow baseline failed{}; rerun with --no-tf to skip it.\n{}".format(
                ": " + reply["error"] if reply else " (its worker exited)", tail))
        return reply

    def measure(self, model, part, batch_size, repeats, max_seconds, warmup_seconds, seed):
        request = {"savedmodel": str(model.savedmodel.resolve()), "endpoint": ENDPOINTS[part],
                   "input": "latent" if part == "decoder" else "image",
                   "item_shape": list(_part_item_shape(model, part)), "batch_size": int(batch_size),
                   "repeats": int(repeats), "max_seconds": float(max_seconds),
                   "warmup_seconds": float(warmup_seconds), "seed": int(seed)}
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        return self._reply()["stats"]

    def close(self):
        if self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()


def _part_item_shape(model, part):
    meta = model.metadata
    if part == "decoder":
        return (int(meta["latent_dim"]),)
    return tuple(int(d) for d in meta["input_shape"])


# --- the machine -------------------------------------------------------------------------------------


def _ort_distribution():
    for name in ("onnxruntime-gpu", "onnxruntime"):
        try:
            return "{}=={}".format(name, importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(f for f in flags if f in {"avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni",
                                                          "amx_tile", "amx_bf16", "neon", "asimd"})
    except OSError:
        pass
    return []


def _memory_gib():
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2 ** 20, 1)
    except (OSError, ValueError):
        pass
    return None


def _gpus():
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) >= 3:
            gpus.append({"name": fields[0], "driver": fields[1], "memory": fields[2],
                         "max_sm_clock": fields[3] if len(fields) > 3 else None})
    return gpus


def _load_average():
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def usable_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_info(device):
    versions = {"python": platform.python_version(), "numpy": np.__version__, "onnx": onnx.__version__,
                "onnxruntime": ort.__version__, "onnxruntime_package": _ort_distribution(),
                "tensorflow": _version("tensorflow"), "matplotlib": _version("matplotlib")}
    if device == "cuda":
        versions["cuda_libraries"] = {d.metadata["Name"]: d.version for d in importlib.metadata.distributions()
                                      if (d.metadata["Name"] or "").lower().startswith("nvidia-")}
        versions["onnxruntime_cuda"] = getattr(ort, "cuda_version", None)
    return {"cpu_model": _cpu_model(), "cpu_flags": _cpu_flags(), "logical_cpus": os.cpu_count(),
            "usable_cpus": usable_cpus(), "memory_gib": _memory_gib(), "platform": platform.platform(),
            "hostname": platform.node(), "gpus": _gpus(), "onnxruntime_providers": ort.get_available_providers(),
            "versions": versions}


# --- the benchmark -----------------------------------------------------------------------------------


def run_benchmark(models, device="cpu", batch_sizes=DEFAULT_BATCH_SIZES, parts=tuple(PARTS), threads=None,
                  repeats=DEFAULT_REPEATS, max_seconds=DEFAULT_MAX_SECONDS, warmup_seconds=DEFAULT_WARMUP_SECONDS,
                  tf_baseline=None, peak_sizes=None, copy_inclusive=True, spin=True, seed=0, runs_dir=RUNS_DIR,
                  quiet=False, command=None):
    """Benchmark `models` (ExportedModels, export dirs or preset names) and return the result dict."""
    check_device(device)
    parts = tuple(parts)
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise BenchmarkError("Unknown part(s) {}; choose from {}.".format(", ".join(unknown) or "(none)",
                                                                           ", ".join(PARTS)))
    batch_sizes = [int(b) for b in batch_sizes]
    if not batch_sizes or min(batch_sizes) < 1:
        raise BenchmarkError("Batch sizes must be positive integers; got {}.".format(batch_sizes))
    models = [m if isinstance(m, ExportedModel) else resolve_model(m, parts, runs_dir) for m in models]
    if not models:
        raise ModelNotFoundError("No model to benchmark: name export dirs or presets, or pass --all.")
    threads = int(threads or usable_cpus())
    if tf_baseline is None:
        tf_baseline = device == "cpu"
    if tf_baseline and not tensorflow_installed():
        raise BenchmarkError("The TensorFlow baseline needs tensorflow, which is not installed here; pass --no-tf.")
    if not peak_sizes:
        many = device == "cpu" and threads >= MANY_THREADS
        peak_sizes = MANY_THREADS_PEAK_SIZES if many else DEFAULT_PEAK_SIZES[device]
    peak_sizes = tuple(int(n) for n in peak_sizes)
    load_before = _load_average()
    if device == "cpu" and load_before is not None and load_before > max(0.5, 0.25 * usable_cpus()):
        log("warning: the machine is busy (load average {:.1f} over the last minute, {} usable CPUs): other "
            "processes share the cores, so every figure will be low and noisy (--no-spin helps onnxruntime "
            "there).".format(load_before, usable_cpus()),
            quiet)

    for model in models:
        if tf_baseline and model.savedmodel is None:
            log("warning: {} has no {}/: no TensorFlow baseline for it.".format(model.dir, SAVEDMODEL_DIR), quiet)
    tf = TFBaseline(device, threads, quiet) if tf_baseline and any(m.savedmodel for m in models) else None
    try:
        log("Peak: onnxruntime MatMul on {}, {} threads, sizes {}".format(device, threads, list(peak_sizes)), quiet)
        peak_runs = measure_peak(device, threads, peak_sizes, when="start", spin=spin)
        flops, infos, rows = {}, {}, []
        for model in models:
            log("{} ({})".format(model.name, model.dir), quiet)
            flops[model.name], infos[model.name] = {}, {}
            for part in parts:
                flops[model.name][part] = count_flops(model.parts[part]).to_dict()
                part_rows, infos[model.name][part] = bench_part(
                    model, part, device, threads, batch_sizes, repeats, max_seconds, warmup_seconds, seed,
                    copy_inclusive, tf, spin, quiet)
                for row in part_rows:
                    row["flops_per_image"] = flops[model.name][part]["flops"]
                rows.extend(part_rows)
        peak_runs += measure_peak(device, threads, peak_sizes, when="end", spin=spin)
    finally:
        if tf is not None:
            tf.close()
    tf_info = tf.info if tf is not None else None
    peak = max(r["gflops_per_s"] for r in peak_runs)
    for row in rows:
        row["gflops_per_s"] = row["flops_per_image"] * row["images_per_s"] / 1e9
        row["peak_gflops_per_s"] = peak
        row["fraction_of_peak"] = row["gflops_per_s"] / peak
    if device == "cuda" and "tensorflow" in sys.modules:
        raise BenchmarkError("TensorFlow was imported into the CUDA benchmark process; it must not be.")

    providers = [p if isinstance(p, str) else p[0] for p in providers_for(device)]
    settings = {"device": device, "provider": PROVIDERS[device], "providers": providers,
                "threads": threads, "inter_op_threads": 1, "graph_optimization_level": "ORT_ENABLE_ALL",
                "execution_mode": "ORT_SEQUENTIAL", "allow_spinning": bool(spin), "batch_sizes": batch_sizes,
                "parts": list(parts),
                "repeats": int(repeats), "max_seconds_per_point": float(max_seconds), "min_runs": MIN_RUNS,
                "warmup_seconds": float(warmup_seconds), "seed": int(seed), "copy_inclusive": bool(copy_inclusive),
                "tf_baseline": bool(tf_baseline),
                "inputs": "images uniform in [0, 1), codes standard normal, float32, numpy default_rng([seed, batch])",
                "timing": "time.perf_counter_ns around each call; latency percentiles per call; "
                          "images_per_s = batch_size / median latency",
                "bound": "IOBinding: inputs and outputs resident on the device, output buffers reused",
                "copy": "InferenceSession.run with numpy inputs and outputs: host-device copies and output "
                        "allocation included",
                "tf": "the SavedModel endpoint in a TensorFlow worker process with the same intra-op threads (inter-op "
                      "1), timed the same way right after onnxruntime on each point, so both see the same load"}
    machine = machine_info(device)
    machine["load_average_1min"] = {"start": load_before, "end": _load_average()}
    return {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "device": device,
        "machine": machine,
        "settings": settings,
        "peak": {"definition": PEAK_DEFINITION.format(sizes=list(peak_sizes)), "gflops_per_s": peak,
                 "runs": peak_runs, "numpy_reference": numpy_matmul_gflops() if device == "cpu" else None},
        "flops_definition": "counted from the ONNX graph at batch 1 by benchmarks.flops (see its docstring)",
        "models": [dict(m.describe(), parts_info=infos[m.name], flops=flops[m.name]) for m in models],
        "tensorflow": tf_info,
        "rows": rows,
        "targets": evaluate_targets(rows, flops) if device == "cpu" else None,
    }


def evaluate_targets(rows, flops):
    """The issue's CPU targets, as facts about this run (they are benchmark figures, not tests)."""
    ratios = [r for r in rows if r.get("ort_tf_ratio") is not None]
    slower = [{"model": r["model"], "part": r["part"], "batch_size": r["batch_size"], "ort_tf_ratio": r["ort_tf_ratio"]}
              for r in ratios if r["ort_tf_ratio"] < 1.0]
    deep = [r for r in rows if r["family"] == "deep_ae" and r["part"] in ("encoder", "decoder")
            and r["batch_size"] >= TARGET_FRACTION_MIN_BATCH]
    dense = {m for m, parts in flops.items()
             if not any(op in p["by_op"] for p in parts.values() for op in ("Conv", "ConvTranspose"))}
    batch1 = [{"model": r["model"], "latency_us_p50": r["latency_us_p50"]} for r in rows
              if r["model"] in dense and r["part"] == "encoder" and r["batch_size"] == 1]
    return {
        "ort_at_least_tf_everywhere": {"met": (not slower) if ratios else None, "points": len(ratios),
                                       "slower_points": slower},
        "deep_ae_fraction_of_peak": {
            "target": TARGET_FRACTION_OF_PEAK, "min_batch_size": TARGET_FRACTION_MIN_BATCH,
            "met": all(r["fraction_of_peak"] >= TARGET_FRACTION_OF_PEAK for r in deep) if deep else None,
            "points": [{"model": r["model"], "part": r["part"], "batch_size": r["batch_size"],
                        "fraction_of_peak": r["fraction_of_peak"]} for r in deep]},
        "dense_batch1_encoder_latency": {
            "target_us": TARGET_BATCH1_ENCODER_US,
            "met": all(p["latency_us_p50"] < TARGET_BATCH1_ENCODER_US for p in batch1) if batch1 else None,
            "points": batch1},
    }


# --- output ------------------------------------------------------------------------------------------


def _atomic_write(path, data):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".partial-{}-".format(path.stem), suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode("utf-8"))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def to_csv(rows):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("{:.6g}".format(v) if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def _fmt(value, spec):
    return "" if value is None else format(value, spec)


def to_markdown(result):
    machine, settings, peak = result["machine"], result["settings"], result["peak"]
    gpu = ", ".join(g["name"] for g in machine["gpus"]) or "none"
    lines = [
        "# onnxruntime throughput ({})".format(result["device"]),
        "",
        "{} ({} usable CPUs), GPU: {}; onnxruntime {} ({}), {} threads, {}. MatMul peak {:.1f} GFLOP/s ({}).".format(
            machine["cpu_model"], machine["usable_cpus"], gpu, machine["versions"]["onnxruntime"],
            settings["provider"], settings["threads"], settings["graph_optimization_level"], peak["gflops_per_s"],
            peak["definition"]),
        "",
        "Latency is per call at the batch size (IOBinding, no copies); images/s = batch / median latency; "
        "'copy' includes host-device copies and output allocation; ORT/TF = onnxruntime images/s over TensorFlow's "
        "(SavedModel endpoint, same inputs and threads){}.".format(
            "" if settings["tf_baseline"] else " (TensorFlow baseline not run)"),
        "",
    ]
    for model in result["models"]:
        lines += ["## {}".format(model["name"]), "",
                  "| part | batch | p50 us | p90 us | p99 us | images/s | MFLOP/image | GFLOP/s | % of peak | "
                  "copy images/s | TF images/s | ORT/TF |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in (r for r in result["rows"] if r["model"] == model["name"]):
            lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                r["part"], r["batch_size"], _fmt(r["latency_us_p50"], ".1f"), _fmt(r["latency_us_p90"], ".1f"),
                _fmt(r["latency_us_p99"], ".1f"), _fmt(r["images_per_s"], ",.0f"),
                _fmt(r["flops_per_image"] / 1e6, ".3f"), _fmt(r["gflops_per_s"], ".1f"),
                _fmt(100 * r["fraction_of_peak"], ".0f"), _fmt(r.get("copy_images_per_s"), ",.0f"),
                _fmt(r.get("tf_images_per_s"), ",.0f"), _fmt(r.get("ort_tf_ratio"), ".2f")))
        lines.append("")
    targets = result.get("targets")
    if targets:
        t1, t2, t3 = (targets[k] for k in ("ort_at_least_tf_everywhere", "deep_ae_fraction_of_peak",
                                             "dense_batch1_encoder_latency"))
        lines += ["## Targets", "",
                  "- onnxruntime at least as fast as TensorFlow everywhere: {}{}".format(
                      _met(t1["met"]), "" if not t1["slower_points"] else " (slower: {})".format(", ".join(
                          "{model} {part} b{batch_size} {ort_tf_ratio:.2f}".format(**p) for p in t1["slower_points"]))),
                  "- deep_ae encoder/decoder at batch >= {} reach {:.0%} of the MatMul peak: {}{}".format(
                      t2["min_batch_size"], t2["target"], _met(t2["met"]), " (min {:.0%})".format(
                          min(p["fraction_of_peak"] for p in t2["points"])) if t2["points"] else ""),
                  "- dense models' batch-1 encoder latency under {:.0f} us: {}{}".format(
                      t3["target_us"], _met(t3["met"]), " (max {:.1f} us)".format(
                          max(p["latency_us_p50"] for p in t3["points"])) if t3["points"] else ""),
                  ""]
    return "\n".join(lines)


def _met(met):
    return {True: "met", False: "NOT met", None: "not measured"}[met]


def plot_model(result, model_name, path):
    """Throughput and fraction of peak against batch size, per part, for one model; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed: no plot written ({}).".format(path))
        return False
    rows = [r for r in result["rows"] if r["model"] == model_name]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"encoder": "tab:blue", "decoder": "tab:orange", "autoencoder": "tab:green"}
    for part in dict.fromkeys(r["part"] for r in rows):
        pr = sorted((r for r in rows if r["part"] == part), key=lambda r: r["batch_size"])
        b = [r["batch_size"] for r in pr]
        c = colors.get(part)
        left.plot(b, [r["images_per_s"] for r in pr], "o-", color=c, label="{} onnxruntime".format(part))
        if any(r.get("tf_images_per_s") for r in pr):
            left.plot(b, [r.get("tf_images_per_s") or np.nan for r in pr], "s--", color=c, alpha=0.7,
                      label="{} TensorFlow".format(part))
        right.plot(b, [100 * r["fraction_of_peak"] for r in pr], "o-", color=c, label=part)
    batch_sizes = sorted({r["batch_size"] for r in rows})
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
        ax.minorticks_off()
        ax.set_xlabel("batch size")
        ax.grid(True, which="both", alpha=0.3)
    left.set_yscale("log")
    left.set_ylabel("images/s")
    left.legend(fontsize=8)
    right.set_ylabel("% of MatMul peak ({:.0f} GFLOP/s)".format(result["peak"]["gflops_per_s"]))
    right.axhline(100 * TARGET_FRACTION_OF_PEAK, color="gray", lw=0.8, ls=":",
                  label="{:.0%} target (deep_ae, batch >= {})".format(
                      TARGET_FRACTION_OF_PEAK, TARGET_FRACTION_MIN_BATCH))
    right.set_ylim(bottom=0)
    right.legend(fontsize=8)
    machine = result["machine"]
    where = machine["gpus"][0]["name"] if result["device"] == "cuda" and machine["gpus"] else machine["cpu_model"]
    fig.suptitle("{}: onnxruntime {} on {} ({} threads)".format(
        model_name, result["device"], where, result["settings"]["threads"]), fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    _atomic_write(path, buffer.getvalue())
    return True


def output_stem(device):
    return "throughput" if device == "cpu" else "throughput_{}".format(device)


def write_results(result, out, plot=True):
    """throughput[_cuda].json/.csv/.md and one PNG per model in `out`; returns {kind: path}."""
    out = Path(out)
    stem = output_stem(result["device"])
    files = {"json": _atomic_write(out / (stem + ".json"), json.dumps(result, indent=2) + "\n"),
             "csv": _atomic_write(out / (stem + ".csv"), to_csv(result["rows"])),
             "md": _atomic_write(out / (stem + ".md"), to_markdown(result))}
    if plot:
        for model in result["models"]:
            path = out / "{}_{}.png".format(stem, model["name"])
            if plot_model(result, model["name"], path):
                files["png:" + model["name"]] = path
    return files


# --- the command line --------------------------------------------------------------------------------


def _int_list(text):
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("expected comma-separated integers, e.g. 1,8,64; got {!r}".format(text))


def _name_list(text):
    return [v.strip() for v in text.split(",") if v.strip()]


def build_parser():
    from zoo.cli import make_parser

    parser = make_parser(
        "benchmarks.throughput", "onnxruntime throughput of exported encoders/decoders/autoencoders against the "
                                 "device's MatMul peak and TensorFlow (SavedModel).", [
            "runs/dae_mnist/export --batch-sizes 1,64,1024 --out /tmp/bench",
            "--all --parts encoder,decoder --max-seconds 0.5",
            "runs/*_fashion_mnist --batch-sizes 1,8,64,256,1024,4096 --out benchmarks/results/"])
    parser.add_argument("models", nargs="*", metavar="EXPORT_DIR_OR_PRESET",
                        help="export dirs, run dirs (with export/), or preset names (= runs/<preset>/export/)")
    parser.add_argument("--all", action="store_true", help="every exported run under --runs-dir")
    parser.add_argument("--runs-dir", default=str(RUNS_DIR), help="where preset names and --all look (default runs)")
    parser.add_argument("--device", choices=DEVICES, default="cpu")
    parser.add_argument("--batch-sizes", type=_int_list, default=",".join(map(str, DEFAULT_BATCH_SIZES)),
                        help="comma-separated (default %(default)s)")
    parser.add_argument("--parts", type=_name_list, default=list(PARTS), help="comma-separated subset of "
                        "encoder,decoder,autoencoder (default all)")
    parser.add_argument("--threads", type=int, help="onnxruntime intra-op threads, and TensorFlow's "
                        "(default: the usable CPUs, {})".format(usable_cpus()))
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS,
                        help="timed runs per point, at most (default %(default)s)")
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS,
                        help="time budget per point: fewer runs, but at least {}, when calls are slow "
                             "(default %(default)s)".format(MIN_RUNS))
    parser.add_argument("--warmup-seconds", type=float, default=DEFAULT_WARMUP_SECONDS,
                        help="warm-up per point, at least one call (default %(default)s)")
    tf = parser.add_mutually_exclusive_group()
    tf.add_argument("--tf", dest="tf", action="store_true", default=None,
                    help="run the TensorFlow baseline (default on CPU)")
    tf.add_argument("--no-tf", dest="tf", action="store_false", help="skip it (default for --device cuda)")
    parser.add_argument("--no-copy", action="store_true", help="skip the copy-inclusive timing")
    parser.add_argument("--no-spin", action="store_true", help="onnxruntime workers sleep instead of spinning "
                        "between calls: slower on idle cores, far faster when other processes share them")
    parser.add_argument("--peak-sizes", type=_int_list, help="MatMul sizes for the peak (default cpu {}, or {} from "
                        "{} threads; cuda {})".format(",".join(map(str, DEFAULT_PEAK_SIZES["cpu"])),
                                                      ",".join(map(str, MANY_THREADS_PEAK_SIZES)), MANY_THREADS,
                                                      ",".join(map(str, DEFAULT_PEAK_SIZES["cuda"]))))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default %(default)s)")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.all and args.models:
        parser.error("give export dirs/presets or --all, not both")
    try:
        models = find_all(args.parts, args.runs_dir) if args.all else args.models
        if not models:
            parser.error("name at least one export dir or preset, or pass --all")
        command = ["python", "-m", "benchmarks.throughput"] + list(sys.argv[1:] if argv is None else argv)
        result = run_benchmark(models, device=args.device, batch_sizes=args.batch_sizes, parts=args.parts,
                               threads=args.threads, repeats=args.repeats, max_seconds=args.max_seconds,
                               warmup_seconds=args.warmup_seconds, tf_baseline=args.tf, peak_sizes=args.peak_sizes,
                               copy_inclusive=not args.no_copy, spin=not args.no_spin, seed=args.seed,
                               runs_dir=args.runs_dir, quiet=args.quiet, command=command)
        files = write_results(result, args.out, plot=not args.no_plot)
    except BenchmarkError as exc:
        print("error: {}".format(exc), file=sys.stderr)
        return 2
    if not args.quiet:
        print(to_markdown(result))
        print("wrote " + ", ".join(str(p) for p in files.values()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
