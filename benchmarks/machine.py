"""The machine a benchmark ran on: CPU model, flags, threads, memory, GPUs, library versions, load, and the
device's measured float32 MatMul peak through onnxruntime (the yardstick for "fraction of peak")."""

import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from benchmarks.sessions import BoundRun, make_session
from benchmarks.timing import DEFAULT_MAX_SECONDS, time_calls

DEFAULT_PEAK_SIZES = {"cpu": (1024, 2048), "cuda": (4096, 8192)}
# Many CPU threads need bigger matrices to be kept busy: 2048 leaves a 16-core Xeon short of its peak.
MANY_THREADS_PEAK_SIZES = (2048, 4096)
MANY_THREADS = 8
PEAK_DEFINITION = ("best of onnxruntime MatMul on float32 square matrices {sizes} (2*n^3 operations per run, median "
                   "time), same device, provider, session options and threads as the models, inputs and output bound "
                   "on the device (IOBinding); measured before and after the models, best taken{extra}")
CUDA_PEAK_NOTE = ("; on CUDA float32 MatMul runs on TF32 tensor cores (the CUDA provider's default use_tf32=1), so "
                  "this is the TF32 peak")


def peak_sizes_for(device, threads):
    if device == "cpu" and threads >= MANY_THREADS:
        return MANY_THREADS_PEAK_SIZES
    return DEFAULT_PEAK_SIZES[device]


def peak_definition(device, sizes):
    return PEAK_DEFINITION.format(sizes=list(sizes), extra=CUDA_PEAK_NOTE if device == "cuda" else "")


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


def ort_distribution():
    for name in ("onnxruntime-gpu", "onnxruntime"):
        try:
            return "{}=={}".format(name, importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(f for f in flags if f in {"avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni",
                                                          "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "neon",
                                                          "asimd"})
    except OSError:
        pass
    return []


def memory_gib():
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2 ** 20, 1)
    except (OSError, ValueError):
        pass
    return None


def gpus():
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found = []
    for line in out.strip().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) >= 3:
            found.append({"name": fields[0], "driver": fields[1], "memory": fields[2],
                          "max_sm_clock": fields[3] if len(fields) > 3 else None})
    return found


def load_average():
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
                "onnxruntime": ort.__version__, "onnxruntime_package": ort_distribution(),
                "tensorflow": version("tensorflow"), "keras": version("keras"), "jax": version("jax"),
                "matplotlib": version("matplotlib")}
    if device == "cuda":
        versions["cuda_libraries"] = {d.metadata["Name"]: d.version for d in importlib.metadata.distributions()
                                      if (d.metadata["Name"] or "").lower().startswith("nvidia-")}
        versions["onnxruntime_cuda"] = getattr(ort, "cuda_version", None)
    return {"cpu_model": cpu_model(), "cpu_flags": cpu_flags(), "logical_cpus": os.cpu_count(),
            "usable_cpus": usable_cpus(), "memory_gib": memory_gib(), "platform": platform.platform(),
            "hostname": platform.node(), "gpus": gpus(), "onnxruntime_providers": ort.get_available_providers(),
            "versions": versions}
