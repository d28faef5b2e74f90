"""The throughput benchmark's measurements: every model part at every batch size and precision on onnxruntime
(device-resident; copy-inclusive, pageable and pinned; CUDA-graph replay) and, on the same inputs right after,
its baseline (TensorFlow fp32 and bf16 on the CPU, Keras on JAX on the GPU), into one result dict
(schema aezoo.throughput/1, which benchmarks.cards reads)."""

import dataclasses
import datetime
import importlib.util
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from benchmarks import machine, repeat, rounds as passes, targets
from benchmarks.discovery import PARTS, PRECISIONS, RUNS_DIR, ExportedModel, resolve_model
from benchmarks.errors import BenchmarkError, ModelNotFoundError
from benchmarks.flops import count_flops
from benchmarks.sessions import (PROVIDERS, BoundRun, PiecesRun, PinnedCopyRun, check_device, make_session,
                                 node_placement, provider_names)
from benchmarks.timing import (DEFAULT_MAX_SECONDS, DEFAULT_REPEATS, DEFAULT_WARMUP_SECONDS, DESCRIPTION, MIN_RUNS,
                               latency_stats, make_input, prefixed, time_calls)
from benchmarks.workers import RequestError, Worker
from export import runtime
from zoo import schema

SCHEMA = "aezoo.throughput/1"
DEFAULT_BATCH_SIZES = (1, 8, 64, 256, 1024, 4096)
ENDPOINTS = {part: endpoint for endpoint, part in schema.ENDPOINTS.items()}  # part -> SavedModel endpoint
#: The JAX backends that count as the device (a JAX without its CUDA plugin falls back to the CPU silently).
JAX_BACKENDS = {"cpu": ("cpu",), "cuda": ("gpu", "cuda")}
BF16_FLAGS = ("avx512_bf16", "amx_bf16")

SETTINGS_TEXT = {
    "bound": "IOBinding: inputs and outputs resident on the device, output buffers reused; on the CPU a batch "
             "larger than the file's rows per call (export.runtime.rows_per_call: DEFAULT_BATCH_SIZE unless the "
             "export names fewer) runs as the Runtime serves it, in pieces of that many rows (views of the input "
             "and of the outputs, no copies; chunk_rows), with the one-call figure beside it (single_*)",
    "tuned": "--tune (CPU): at each point export.runtime.tune_session, as Runtime.tune does, times every "
            "candidate plan on the point's first TUNE_MAX_ROWS rows (pieces of the file's rows per call, 512, 128 "
            "or 32 rows, on the session or on one one-thread session per thread, each over its slice of the batch), "
            "keeps the fastest (plan_rows, plan_workers; every candidate's figure in plan_candidates) and times it "
            "on the whole batch for the row's figures; the untuned Runtime's are default_*",
    "copy": "InferenceSession.run with numpy inputs and outputs: host-device copies (pageable memory) and output "
            "allocation included",
    "pinned": "CUDA only: IOBinding with the input in page-locked host memory and the outputs copied back into "
              "page-locked host memory (one DMA transfer each way), as a serving loop that fills pinned buffers",
    "graph": "CUDA only: a session with enable_cuda_graph=1 at this batch size, buffers bound once "
             "(export.runtime.FixedBatch), replay timed with inputs and outputs on the device",
    "graph_copy": "CUDA only: export.runtime's cuda_graph_batch path: copy into page-locked staging, "
                  "OrtValue.update_inplace, replay, outputs copied to the host",
    "tf": "TensorFlow float32: the SavedModel endpoint (else the Keras model in a tf.function) in a worker process "
          "with the same intra-op threads (inter-op 1), timed the same way right after onnxruntime on each point",
    "tf_bf16": "TensorFlow bfloat16: the Keras model built under the mixed_bfloat16 policy (bfloat16 compute through "
               "oneDNN, float32 weights, float32 outputs), same worker and timing",
    "jax": "Keras on JAX (XLA): the same architecture and weights, jax.jit of the part's Keras call, in a worker "
           "process without TensorFlow, timed the same way right after onnxruntime; jax_copy includes "
           "jax.device_put and the copy of the outputs to the host",
    "inputs": "images uniform in [0, 1), codes standard normal, float32, numpy default_rng([seed, batch])",
}


@dataclasses.dataclass
class Timing:
    repeats: int = DEFAULT_REPEATS
    max_seconds: float = DEFAULT_MAX_SECONDS
    warmup_seconds: float = DEFAULT_WARMUP_SECONDS

    def stats(self, fn, batch_size, prefix=None):
        stats = latency_stats(time_calls(fn, self.repeats, self.max_seconds, self.warmup_seconds), batch_size)
        return prefixed(stats, prefix) if prefix else stats

    def request(self):
        return {"repeats": int(self.repeats), "max_seconds": float(self.max_seconds),
                "warmup_seconds": float(self.warmup_seconds)}


def log(message, quiet=False):
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def part_item_shape(model, part):
    """Per-example input shape of `part`, from the aezoo metadata."""
    meta = model.metadata
    if part == "decoder":
        return (int(meta["latent_dim"]),)
    return tuple(int(d) for d in meta["input_shape"])


def _input_name(part):
    return "latent" if part == "decoder" else "image"


def _point_request(model, part, batch_size, timing, seed):
    return dict(timing.request(), part=part, input=_input_name(part), item_shape=list(part_item_shape(model, part)),
                batch_size=int(batch_size), seed=int(seed))


# --- the baselines (worker processes) -----------------------------------------------------------------------


def tensorflow_installed():
    return importlib.util.find_spec("tensorflow") is not None


class TFBaseline:
    """A benchmarks.tf_baseline worker: TensorFlow fp32 (SavedModel, else the Keras model) and bf16 (Keras)."""

    def __init__(self, device, threads, quiet=False):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
        if device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = "-1"
        log("TensorFlow baseline: starting a worker process ({} threads)".format(threads), quiet)
        self.worker = Worker("benchmarks.tf_baseline", ["--threads", str(int(threads)), "--device", device], env,
                             "TensorFlow baseline", "rerun with --no-tf to skip it")
        self.info = self.worker.info

    def measure(self, model, part, batch_size, timing, seed, precision="fp32"):
        """latency_stats of TensorFlow on this point, or None when the model has nothing TensorFlow can run."""
        request = dict(_point_request(model, part, batch_size, timing, seed), precision=precision)
        if precision == "fp32" and model.savedmodel is not None:
            request.update(savedmodel=str(model.savedmodel.resolve()), endpoint=ENDPOINTS[part])
        elif model.keras_source is not None:
            request["keras"] = model.keras_source
        else:
            return None
        return self.worker.request(request)

    def close(self):
        self.worker.close()


class JAXBaseline:
    """A benchmarks.jax_baseline worker: Keras on JAX, the same architecture and weights (from the run or bundle)."""

    def __init__(self, device, quiet=False):
        env = dict(os.environ, KERAS_BACKEND="jax", XLA_PYTHON_CLIENT_PREALLOCATE="false", TF_CPP_MIN_LOG_LEVEL="2")
        if device == "cpu":
            env["JAX_PLATFORMS"] = "cpu"
        log("Keras-on-JAX baseline: starting a worker process", quiet)
        self.worker = Worker("benchmarks.jax_baseline", ["--device", device], env, "Keras-on-JAX baseline",
                             "rerun with --no-jax to skip it")
        self.info = self.worker.info
        if self.info["backend"] not in JAX_BACKENDS[device]:
            self.worker.close()
            raise BenchmarkError("JAX runs on its {} backend, not on the {} device ({}): install JAX with its CUDA "
                                 "plugin (jax[cuda13]) or rerun with --no-jax.".format(
                                     self.info["backend"], device, ", ".join(self.info["devices"])))

    def measure(self, model, part, batch_size, timing, seed, copy=True):
        request = dict(_point_request(model, part, batch_size, timing, seed), keras=model.keras_source, copy=copy)
        return self.worker.request(request)

    def outputs(self, model, part, batch_size, seed):
        with tempfile.TemporaryDirectory() as tmp:
            request = dict(_point_request(model, part, batch_size, Timing(), seed), op="outputs",
                           keras=model.keras_source, path=os.path.join(tmp, "outputs.npz"))
            self.worker.request(request)
            with np.load(request["path"]) as saved:
                return [saved["arr_{}".format(i)] for i in range(len(saved.files))]

    def state(self):
        return self.worker.request({"op": "info"})

    def close(self):
        self.worker.close()


# --- one part ---------------------------------------------------------------------------------------------


def _first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _time_graph(row, session_file, device, threads, spin, batch_size, item_shape, output_shapes, x, host, timing):
    """graph_* (replay, device-resident) and graph_copy_* (the Runtime's cuda_graph_batch path) fields."""
    session = make_session(session_file, device, threads, spin, cuda_graph=True)
    fixed = runtime.FixedBatch(session, batch_size, item_shape, [s[1:] for s in output_shapes], device, host)
    fixed.input.update_inplace(x)
    row.update(timing.stats(fixed.replay, batch_size, "graph"))
    row.update(timing.stats(lambda: fixed.run(x), batch_size, "graph_copy"))


class _Tuner:
    """export.runtime's plan choice (Runtime.tune) for the benchmark's sessions: one-thread worker sessions of
    each file, made once, and one thread pool for their slices."""

    def __init__(self, device, threads, spin):
        self.device, self.threads, self.spin = device, int(threads), spin
        self.sessions, self.executor = {}, None

    def workers(self, file, k):
        if len(self.sessions.get(file, ())) != k:
            self.sessions[file] = [make_session(file, self.device, 1, self.spin) for _ in range(k)]
        return self.sessions[file]

    def pool(self, k):
        if self.executor is None:
            self.executor = ThreadPoolExecutor(max(1, self.threads - 1), thread_name_prefix="benchmark-workers")
        return self.executor

    def run(self, session, file, x, piece):
        """(plan, {plan: images/s}, the callable that serves `x` with the plan) after choosing the plan on the
        first TUNE_MAX_ROWS rows; (None, {}, None) where there is nothing to choose, and no callable where the
        plan is the untuned one (the first candidate), which the point has timed already."""
        plan, speeds = runtime.tune_session(session, x[:runtime.TUNE_MAX_ROWS], piece, self.threads,
                                            lambda k: self.workers(file, k), self.pool, batch_size=len(x))
        if plan is None or plan == next(iter(speeds)):
            return plan, speeds, None
        if plan.workers > 1 and len(x) > plan.rows:
            outputs = runtime.output_buffers(session, len(x))
            serve = runtime.SlicedRun(self.workers(file, plan.workers), x, plan.rows, outputs, self.pool(0))
        elif len(x) > plan.rows:
            serve = PiecesRun(session, x, plan.rows)
        else:
            serve = BoundRun(session, {session.get_inputs()[0].name: x}, self.device)
        return plan, speeds, serve

    def close(self):
        if self.executor is not None:
            self.executor.shutdown()
        self.sessions.clear()


def bench_part(model, part, device, threads, batch_sizes, timing, seed, precisions=("fp32",), copy_inclusive=True,
               tf=None, tf_bf16=False, jax=None, cuda_graphs=False, host=None, spin=True, quiet=False, tune=False):
    """Rows for one part at every batch size and precision, and what was learnt about its sessions.

    On each point onnxruntime runs every precision first, then the baselines on the same inputs, so that all of
    them see the same machine load; a row's ratios compare that precision with the float32 baselines. `tune` (CPU):
    each point's headline figure is the plan export.runtime's Runtime.tune chooses there (plan_*), with the
    untuned Runtime's figure beside it (default_*)."""
    files = {p: model.parts[part] if p == "fp32" else model.variant(part, p) for p in precisions}
    files = {p: f for p, f in files.items() if f is not None}
    sessions = {p: make_session(f, device, threads, spin) for p, f in files.items()}
    tuner = _Tuner(device, threads, spin) if tune and device == "cpu" else None
    try:
        return _bench_part(model, part, device, threads, batch_sizes, timing, seed, files, sessions, copy_inclusive,
                           tf, tf_bf16, jax, cuda_graphs, host, spin, quiet, tuner)
    finally:
        if tuner is not None:
            tuner.close()


def _bench_part(model, part, device, threads, batch_sizes, timing, seed, files, sessions, copy_inclusive, tf,
                tf_bf16, jax, cuda_graphs, host, spin, quiet, tuner):
    rows_per_call = {p: runtime.rows_per_call(s) for p, s in sessions.items()}  # the file's, read once
    info = {p: {"file": str(files[p]), "provider": s.get_providers()[0], "node_placement": node_placement(s),
                "input": s.get_inputs()[0].name, "outputs": [o.name for o in s.get_outputs()]}
            for p, s in sessions.items()}
    shape = part_item_shape(model, part)
    rows, warned = [], set()
    for batch_size in batch_sizes:
        point = []
        x = make_input(_input_name(part), shape, batch_size, seed)
        for precision, session in sessions.items():
            name = session.get_inputs()[0].name
            output_names = [o.name for o in session.get_outputs()]
            row = {"model": model.name, "family": model.family, "part": part, "precision": precision,
                   "device": device, "provider": info[precision]["provider"], "batch_size": int(batch_size),
                   "threads": int(threads)}
            bound = BoundRun(session, {name: x}, device)
            piece = rows_per_call[precision]
            if device == "cpu" and batch_size > piece:
                served = timing.stats(PiecesRun(session, x, piece), batch_size)
                row.update(served, chunk_rows=piece)
                row.update(timing.stats(bound, batch_size, "single"))
            else:
                served = timing.stats(bound, batch_size)
                row.update(served)
            plan, speeds, serve = tuner.run(session, files[precision], x, piece) if tuner else (None, {}, None)
            if plan is not None:
                # The untuned Runtime's figure moves to default_*; the tuned plan's becomes the row's own.
                row.update(prefixed(served, "default"), plan_rows=plan.rows, plan_workers=plan.workers,
                           plan_candidates={str(p): v for p, v in speeds.items()})
                if serve is not None:
                    row.update(timing.stats(serve, batch_size))
                    del serve
            output_shapes = bound.output_shapes()
            if precision == "fp32" and jax is not None and model.keras_source and "jax_parity" not in info[precision]:
                got = bound.outputs()
                try:
                    want = jax.outputs(model, part, batch_size, seed)
                    info[precision]["jax_parity"] = {"batch_size": int(batch_size), "max_abs_diff": float(max(
                        np.max(np.abs(g.reshape(np.shape(w)) - w)) for g, w in zip(got, want)))}
                except RequestError as exc:
                    info[precision]["jax_parity"] = {"error": _first_line(exc)}
            del bound
            if copy_inclusive:
                row.update(timing.stats(lambda: session.run(output_names, {name: x}), batch_size, "copy"))
                if host is not None:
                    pinned = PinnedCopyRun(session, {name: x}, host, output_shapes)
                    row.update(timing.stats(pinned, batch_size, "pinned"))
                    del pinned
            if cuda_graphs:
                try:
                    _time_graph(row, files[precision], device, threads, spin, batch_size, shape, output_shapes, x,
                                host, timing)
                except Exception as exc:  # onnxruntime refuses graphs with CPU nodes; int8 files often have some
                    row["graph_error"] = _first_line(exc)
                    if precision not in warned:
                        warned.add(precision)
                        log("  warning: no CUDA graph for {} {} {}: {}".format(model.name, part, precision,
                                                                                row["graph_error"]), quiet)
            point.append(row)
        _add_baselines(point, model, part, batch_size, timing, seed, tf, tf_bf16, jax, copy_inclusive)
        for row in point:
            log(_progress(row), quiet)
        rows.extend(point)
    return rows, info


def _add_baselines(point, model, part, batch_size, timing, seed, tf, tf_bf16, jax, copy_inclusive):
    if tf is not None:
        stats = tf.measure(model, part, batch_size, timing, seed)
        if stats is not None:
            for row in point:
                row.update({"tf_" + k: v for k, v in stats.items() if k != "source"}, tf_source=stats["source"])
                row["ort_tf_ratio"] = row["images_per_s"] / stats["images_per_s"]
                if "copy_images_per_s" in row:
                    row["ort_tf_ratio_copy"] = row["copy_images_per_s"] / stats["images_per_s"]
        if tf_bf16 and model.keras_source is not None:
            try:
                bf16 = tf.measure(model, part, batch_size, timing, seed, precision="bf16")
            except RequestError as exc:
                bf16 = None
                for row in point:
                    row["tf_bf16_error"] = _first_line(exc)
            if bf16 is not None:
                for row in point:
                    row.update(prefixed({k: v for k, v in bf16.items() if k != "source"}, "tf_bf16"))
                    row["ort_tf_bf16_ratio"] = row["images_per_s"] / bf16["images_per_s"]
    if jax is not None and model.keras_source is not None:
        stats = jax.measure(model, part, batch_size, timing, seed, copy=copy_inclusive)
        for row in point:
            row.update(prefixed(stats["bound"], "jax"))
            row["ort_jax_ratio"] = row["images_per_s"] / stats["bound"]["images_per_s"]
            if row.get("graph_images_per_s"):
                row["ort_graph_jax_ratio"] = row["graph_images_per_s"] / stats["bound"]["images_per_s"]
            if "copy" in stats:
                row.update(prefixed(stats["copy"], "jax_copy"))
                best = best_copy(row)
                if best:
                    row["ort_jax_ratio_copy"] = best[1] / stats["copy"]["images_per_s"]


def best_copy(row):
    """(way, images/s) of the fastest copy-inclusive onnxruntime figure in a row, or None."""
    found = [(way, row[way + "_images_per_s"]) for way in ("copy", "pinned", "graph_copy")
             if row.get(way + "_images_per_s")]
    return max(found, key=lambda f: f[1]) if found else None


def _progress(row):
    message = "  {:<12} {:<5} batch {:>5}: p50 {:>10.1f} us {:>12,.0f} images/s".format(
        row["part"], row["precision"], row["batch_size"], row["latency_us_p50"], row["images_per_s"])
    if row.get("graph_images_per_s"):
        message += "  graph {:>12,.0f}".format(row["graph_images_per_s"])
    if row.get("tf_images_per_s"):
        message += "  TF {:>12,.0f} (ORT/TF {:.2f})".format(row["tf_images_per_s"], row["ort_tf_ratio"])
    if row.get("tf_bf16_images_per_s"):
        message += "  TF bf16 {:>12,.0f}".format(row["tf_bf16_images_per_s"])
    if row.get("jax_images_per_s"):
        message += "  JAX {:>12,.0f} (ORT/JAX {:.2f})".format(row["jax_images_per_s"], row["ort_jax_ratio"])
    return message


# --- the benchmark ----------------------------------------------------------------------------------------


def run_benchmark(models, device="cpu", batch_sizes=DEFAULT_BATCH_SIZES, parts=tuple(PARTS), threads=None,
                  repeats=DEFAULT_REPEATS, max_seconds=DEFAULT_MAX_SECONDS, warmup_seconds=DEFAULT_WARMUP_SECONDS,
                  tf_baseline=None, peak_sizes=None, copy_inclusive=True, spin=True, seed=0, runs_dir=RUNS_DIR,
                  quiet=False, command=None, precisions=("fp32",), tf_bf16=None, jax_baseline=None,
                  cuda_graphs=None, repeat_points=True, repeat_batch=None, rounds=1, tune=False):
    """Benchmark `models` (ExportedModels, export dirs, bundles or preset names) and return the result dict.

    Baselines default by device: TensorFlow fp32 (and bf16 where the CPU has bfloat16 instructions) on the CPU,
    Keras on JAX on CUDA. `precisions` adds rows for the variant files an export has (fp16, int8).
    `repeat_points`: time each model's points at one batch size (`repeat_batch`, else benchmarks.repeat's choice)
    again after every model, to show how steady the machine was (the result's `repeat`). `rounds`: time every
    point in that many passes over all the models and keep each figure's median pass (benchmarks.rounds). `tune`
    (CPU): every point is served with the plan export.runtime's Runtime.tune chooses there (bench_part)."""
    if tune and device != "cpu":
        raise BenchmarkError("--tune chooses CPU plans (pieces and one-thread workers); it needs --device cpu.")
    check_device(device)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise BenchmarkError("--rounds must be a positive integer (1 = one pass); got {!r}.".format(rounds))
    parts = tuple(parts)
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise BenchmarkError("Unknown part(s) {}; choose from {}.".format(", ".join(unknown) or "(none)",
                                                                           ", ".join(PARTS)))
    precisions = tuple(dict.fromkeys(precisions))
    wrong = [p for p in precisions if p not in PRECISIONS]
    if wrong or not precisions:
        raise BenchmarkError("Unknown precision(s) {}; choose from {}.".format(", ".join(wrong) or "(none)",
                                                                                ", ".join(PRECISIONS)))
    precisions = tuple(sorted(precisions, key=PRECISIONS.index))  # fp32 first: cards take a point's first row
    batch_sizes = [int(b) for b in batch_sizes]
    if not batch_sizes or min(batch_sizes) < 1:
        raise BenchmarkError("Batch sizes must be positive integers; got {}.".format(batch_sizes))
    if repeat_points:
        try:
            repeat_batch = repeat.batch_to_repeat(batch_sizes, repeat_batch)
        except ValueError as exc:
            raise BenchmarkError("--repeat-batch: {}.".format(exc)) from None
    models = [m if isinstance(m, ExportedModel) else resolve_model(m, parts, runs_dir) for m in models]
    if not models:
        raise ModelNotFoundError("No model to benchmark: name export dirs or presets, or pass --all.")
    threads = int(threads or machine.usable_cpus())
    timing = Timing(repeats, max_seconds, warmup_seconds)
    flags = machine.cpu_flags()
    if tf_baseline is None:
        tf_baseline = device == "cpu"
    if tf_bf16 is None:
        tf_bf16 = tf_baseline and device == "cpu" and any(f in flags for f in BF16_FLAGS)
    if jax_baseline is None:
        jax_baseline = device == "cuda"
    if cuda_graphs is None:
        cuda_graphs = device == "cuda"
    if cuda_graphs and device != "cuda":
        raise BenchmarkError("CUDA graphs need --device cuda.")
    if tf_baseline and not tensorflow_installed():
        raise BenchmarkError("The TensorFlow baseline needs tensorflow, which is not installed here; pass --no-tf.")
    if jax_baseline and importlib.util.find_spec("jax") is None:
        raise BenchmarkError("The Keras-on-JAX baseline needs jax and keras, which are not installed here; pass "
                             "--no-jax.")
    peak_sizes = tuple(int(n) for n in (peak_sizes or machine.peak_sizes_for(device, threads)))
    load_before = machine.load_average()
    if device == "cpu" and load_before is not None and load_before > max(0.5, 0.25 * machine.usable_cpus()):
        log("warning: the machine is busy (load average {:.1f} over the last minute, {} usable CPUs): other "
            "processes share the cores, so every figure will be low and noisy (--no-spin helps onnxruntime "
            "there).".format(load_before, machine.usable_cpus()), quiet)
    skipped = []
    for model in models:
        if tf_baseline and model.savedmodel is None and model.keras_source is None:
            log("warning: {} has no {}/ and no Keras weights: no TensorFlow baseline for it.".format(
                model.dir, schema.SAVEDMODEL_DIR), quiet)
        if (jax_baseline or tf_bf16) and model.keras_source is None:
            log("warning: {} has no run (config.json, model.keras) or bundle (keras_weights.json) to rebuild the "
                "Keras model from: no {} baseline for it.".format(
                    model.dir, "Keras-on-JAX" if jax_baseline else "bf16"), quiet)
        for part in parts:
            for precision in precisions:
                if model.variant(part, precision) is None:
                    skipped.append({"model": model.name, "part": part, "precision": precision,
                                    "reason": "no {} in {}".format(schema.onnx_file(part, precision), model.dir)})
                    log("  {} {} {}: not measured ({})".format(model.name, part, precision, skipped[-1]["reason"]),
                        quiet)
    host = None
    host_note = "not used on the CPU"
    if device == "cuda":
        host = runtime.PinnedHost.load()
        host_note = "page-locked (cudaHostAlloc)" if host else "pageable ({}): no pinned rows".format(
            getattr(runtime.PinnedHost, "load_error", "no CUDA runtime"))

    tf = jax = None
    try:
        tf = TFBaseline(device, threads, quiet) if tf_baseline and any(
            m.savedmodel or m.keras_source for m in models) else None
        jax = JAXBaseline(device, quiet) if jax_baseline and any(m.keras_source for m in models) else None
        log("Peak: onnxruntime MatMul on {}, {} threads, sizes {}".format(device, threads, list(peak_sizes)), quiet)
        peak_runs = machine.measure_peak(device, threads, peak_sizes, when="start", spin=spin)
        flops, infos, rows = {}, {}, []
        for model in models:
            log("{} ({})".format(model.name, model.dir), quiet)
            flops[model.name], infos[model.name] = {}, {}
            for part in parts:
                flops[model.name][part] = count_flops(model.parts[part]).to_dict()
                part_rows, infos[model.name][part] = bench_part(
                    model, part, device, threads, batch_sizes, timing, seed, precisions, copy_inclusive, tf,
                    tf_bf16, jax, cuda_graphs, host, spin, quiet, tune)
                for row in part_rows:
                    row["flops_per_image"] = flops[model.name][part]["flops"]
                rows.extend(part_rows)
        rows = _more_rounds(models, parts, device, threads, batch_sizes, timing, seed, precisions, tf, jax, host,
                            spin, rows, rounds, quiet, tune)
        repeated = _time_again(models, parts, device, threads, repeat_batch, timing, seed, precisions, tf, jax,
                               host, spin, rows, quiet, tune) if repeat_points else None
        peak_runs += machine.measure_peak(device, threads, peak_sizes, when="end", spin=spin)
        jax_state = jax.state() if jax is not None else None
    finally:
        for worker in (tf, jax):
            if worker is not None:
                worker.close()
    if device == "cuda" and "tensorflow" in sys.modules:
        raise BenchmarkError("TensorFlow was imported into the CUDA benchmark process; it must not be.")
    if jax_state is not None and jax_state["tensorflow_imported"]:
        raise BenchmarkError("The Keras-on-JAX worker imported TensorFlow; it must not.")
    peak = max(r["gflops_per_s"] for r in peak_runs)
    for row in rows:
        row["gflops_per_s"] = row["flops_per_image"] * row["images_per_s"] / 1e9
        row["peak_gflops_per_s"] = peak
        row["fraction_of_peak"] = row["gflops_per_s"] / peak
        if row.get("graph_images_per_s"):
            row["graph_fraction_of_peak"] = row["flops_per_image"] * row["graph_images_per_s"] / 1e9 / peak

    settings = {"device": device, "provider": PROVIDERS[device], "providers": provider_names(device),
                "threads": threads, "inter_op_threads": 1, "graph_optimization_level": "ORT_ENABLE_ALL",
                "execution_mode": "ORT_SEQUENTIAL", "allow_spinning": bool(spin), "batch_sizes": batch_sizes,
                "parts": list(parts), "precisions": list(precisions),
                "repeats": int(repeats), "max_seconds_per_point": float(max_seconds), "min_runs": MIN_RUNS,
                "warmup_seconds": float(warmup_seconds), "rounds": int(rounds), "tune": bool(tune), "seed": int(seed),
                "copy_inclusive": bool(copy_inclusive),
                "tf_baseline": bool(tf is not None), "tf_bf16_baseline": bool(tf is not None and tf_bf16),
                "jax_baseline": bool(jax is not None), "cuda_graphs": bool(cuda_graphs),
                "host_memory": host_note, "timing": DESCRIPTION,
                "precision": "fp32 rows run encoder.onnx etc.; fp16 and int8 rows the variant files "
                             "(encoder.int8.onnx, ...), float32 inputs and outputs; every ratio is to the float32 "
                             "baseline unless its name says bf16"}
    settings.update({k: v for k, v in SETTINGS_TEXT.items() if k in ("bound", "inputs") or (k == "tuned" and tune)
                     or (k in ("copy",) and copy_inclusive) or (k == "pinned" and host is not None and copy_inclusive)
                     or (k in ("graph", "graph_copy") and cuda_graphs) or (k == "tf" and tf is not None)
                     or (k == "tf_bf16" and tf is not None and tf_bf16) or (k == "jax" and jax is not None)})
    info = machine.machine_info(device)
    info["load_average_1min"] = {"start": load_before, "end": machine.load_average()}
    result = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "device": device,
        "machine": info,
        "settings": settings,
        "peak": {"definition": machine.peak_definition(device, peak_sizes), "gflops_per_s": peak, "runs": peak_runs,
                 "numpy_reference": machine.numpy_matmul_gflops() if device == "cpu" else None},
        "flops_definition": "counted from the float32 ONNX graph at batch 1 by benchmarks.flops (see its docstring); "
                            "the same count for every precision",
        "models": [dict(m.describe(), parts_info=infos[m.name], flops=flops[m.name]) for m in models],
        "tensorflow": tf.info if tf is not None else None,
        "jax": jax.info if jax is not None else None,
        "skipped": skipped,
        "rows": rows,
        "repeat": repeated,
        "rounds": passes.summary(rows, rounds, device) if rounds > 1 else None,
    }
    result["targets"] = targets.evaluate(result)
    return result


def _more_rounds(models, parts, device, threads, batch_sizes, timing, seed, precisions, tf, jax, host, spin, rows,
                 rounds, quiet, tune=False):
    """`rows` (the first pass) with every figure from its median of `rounds` passes (benchmarks.rounds); the later
    passes time onnxruntime and the float32 baseline only (no copies, graphs or bf16)."""
    if rounds == 1:
        return rows
    every = [rows]
    for n in range(2, rounds + 1):
        log("Pass {} of {}: timing every point again".format(n, rounds), quiet)
        every.append(_plain_pass(models, parts, device, threads, batch_sizes, timing, seed, precisions, tf, jax,
                                 host, spin, tune))
    return passes.combine(every)


def _plain_pass(models, parts, device, threads, batch_sizes, timing, seed, precisions, tf, jax, host, spin,
                tune=False):
    """Rows of every model and part at `batch_sizes`, onnxruntime and the float32 baseline only (no copies,
    graphs or bf16): what a later pass (--rounds) and the repeat at the end time."""
    rows = []
    for model in models:
        for part in parts:
            rows += bench_part(model, part, device, threads, batch_sizes, timing, seed, precisions, False, tf,
                               False, jax, False, host, spin, quiet=True, tune=tune)[0]
    return rows


def _time_again(models, parts, device, threads, batch_size, timing, seed, precisions, tf, jax, host, spin, rows,
                quiet, tune=False):
    """benchmarks.repeat's section: every model's points at `batch_size` timed again (no copies, graphs or bf16)."""
    log("Timing every model again at batch {}, to see how steady the machine was".format(batch_size), quiet)
    again = _plain_pass(models, parts, device, threads, [batch_size], timing, seed, precisions, tf, jax, host, spin,
                        tune)
    section = repeat.summary(repeat.compare(rows, again), batch_size)
    for point in section["points"]:
        if repeat.moved(point):
            log("  warning: {model} {part} {precision} batch {batch_size}: {images_per_s:,.0f} then "
                "{again_images_per_s:,.0f} images/s ({change:+.0%}){}".format(
                    "; baseline {:+.0%}".format(point["baseline_change"]) if "baseline" in point else "", **point),
                quiet)
    return section
