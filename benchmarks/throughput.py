"""onnxruntime throughput of exported encoders, decoders and autoencoders on CPU or CUDA, against the device's
measured MatMul peak and a baseline run on the same inputs: TensorFlow (fp32, and bf16 where the CPU has it) on
the CPU, Keras on JAX on the GPU. The command line; the work is in the modules it names below.

    python -m benchmarks.throughput runs/*_fashion_mnist --precision fp32,int8 --out benchmarks/results/
    python -m benchmarks.throughput EXPORT_DIR --device cuda   # needs onnxruntime-gpu; never imports TensorFlow

benchmarks.discovery finds the models, benchmarks.sessions makes and calls the onnxruntime sessions,
benchmarks.timing times calls, benchmarks.tf_baseline and benchmarks.jax_baseline are the baseline workers,
benchmarks.machine describes the machine and its MatMul peak, benchmarks.measure runs the points,
benchmarks.rounds keeps each figure's median of several passes (--rounds), benchmarks.targets checks the
issues' targets and benchmarks.report writes JSON, CSV, Markdown and PNGs.
"""

import argparse
import sys

from benchmarks import machine, merge
from benchmarks.discovery import PARTS, PRECISIONS, RUNS_DIR, ExportedModel, find_all, read_metadata, resolve_model
from benchmarks.errors import BenchmarkError, DeviceUnavailableError, ModelNotFoundError
from benchmarks.measure import DEFAULT_BATCH_SIZES, SCHEMA, bench_part, run_benchmark
from benchmarks.report import CSV_COLUMNS, output_stem, to_csv, to_markdown, write_results
from benchmarks.sessions import DEVICES, BoundRun, check_device, make_session, providers_for
from benchmarks.timing import (DEFAULT_MAX_SECONDS, DEFAULT_REPEATS, DEFAULT_WARMUP_SECONDS, MIN_RUNS,
                               MIN_WARMUP_RUNS, latency_stats, make_input, time_calls)
from zoo import schema

DEFAULT_OUT = schema.RESULTS_DIR
usable_cpus = machine.usable_cpus
_cpu_model = machine.cpu_model  # benchmarks.training_speed reads the CPU's name from here
matmul_model = machine.matmul_model

__all__ = ["BenchmarkError", "BoundRun", "CSV_COLUMNS", "DEVICES", "DeviceUnavailableError", "ExportedModel",
           "ModelNotFoundError", "SCHEMA", "bench_part", "check_device", "find_all", "latency_stats", "main",
           "make_input", "make_session", "output_stem", "providers_for", "read_metadata", "resolve_model",
           "run_benchmark", "time_calls", "to_csv", "to_markdown", "write_results", "MIN_RUNS", "MIN_WARMUP_RUNS"]


def _int_list(text):
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("expected comma-separated integers, e.g. 1,8,64; got {!r}".format(text))


def _name_list(text):
    return [v.strip() for v in text.split(",") if v.strip()]


def _on_off(parser, name, help_on, help_off):
    group = parser.add_mutually_exclusive_group()
    dest = name.replace("-", "_")
    group.add_argument("--" + name, dest=dest, action="store_true", default=None, help=help_on)
    group.add_argument("--no-" + name, dest=dest, action="store_false", help=help_off)


def build_parser():
    from zoo.cli import make_parser

    parser = make_parser(
        "benchmarks.throughput", "onnxruntime throughput of exported encoders/decoders/autoencoders against the "
                                 "device's MatMul peak, TensorFlow on the CPU and Keras on JAX on the GPU.", [
            "runs/dae_mnist/export --batch-sizes 1,64,1024 --out /tmp/bench",
            "--all --parts encoder,decoder --precision fp32,int8 --max-seconds 0.5",
            "deep_ae_fashion_mnist --device cuda --precision fp32,fp16   # the bundled release, on a GPU",
            "runs/*_fashion_mnist --batch-sizes 1,8,64,256,1024,4096 --out benchmarks/results/",
            "runs/*_fashion_mnist --precision fp32,int8 --rounds 3   # each figure the median of 3 passes",
            "runs/*_fashion_mnist --precision fp32,int8 --rounds 3 --tune   # served as Runtime.tune chooses"])
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help="export dirs, run dirs (with export/), release bundles, or preset names "
                             "(runs/<preset>/export/, else the bundled release)")
    parser.add_argument("--all", action="store_true", help="every exported run under --runs-dir")
    parser.add_argument("--runs-dir", default=str(RUNS_DIR), help="where preset names and --all look (default runs)")
    parser.add_argument("--device", choices=DEVICES, default="cpu")
    parser.add_argument("--batch-sizes", type=_int_list, default=",".join(map(str, DEFAULT_BATCH_SIZES)),
                        help="comma-separated (default %(default)s)")
    parser.add_argument("--parts", type=_name_list, default=list(PARTS), help="comma-separated subset of "
                        "encoder,decoder,autoencoder (default all)")
    parser.add_argument("--precision", dest="precisions", type=_name_list, default=["fp32"],
                        help="comma-separated subset of {}: rows for the variant files (encoder.int8.onnx, ...) an "
                             "export has; each compared with the float32 baseline (default fp32)".format(
                                 ",".join(PRECISIONS)))
    parser.add_argument("--threads", type=int, help="onnxruntime intra-op threads, and TensorFlow's "
                        "(default: the usable CPUs, {})".format(usable_cpus()))
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS,
                        help="timed runs per point, at most (default %(default)s)")
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS,
                        help="time budget per point: fewer runs, but at least {}, when calls are slow "
                             "(default %(default)s)".format(MIN_RUNS))
    parser.add_argument("--warmup-seconds", type=float, default=DEFAULT_WARMUP_SECONDS,
                        help="warm-up per point, at least one call (default %(default)s)")
    _on_off(parser, "tf", "run the TensorFlow baseline (default on CPU)", "skip it (default for --device cuda)")
    _on_off(parser, "tf-bf16", "also time TensorFlow with Keras' mixed_bfloat16 policy (default on a CPU with "
                               "AVX-512 BF16 or AMX)", "skip the bf16 baseline")
    _on_off(parser, "jax", "run the Keras-on-JAX baseline in a worker (default for --device cuda)",
            "skip it (default on CPU)")
    _on_off(parser, "cuda-graphs", "time CUDA-graph replay too (default for --device cuda)", "skip CUDA graphs")
    parser.add_argument("--no-copy", action="store_true", help="skip the copy-inclusive timings")
    parser.add_argument("--no-spin", action="store_true", help="onnxruntime workers sleep instead of spinning "
                        "between calls: slower on idle cores, far faster when other processes share them")
    parser.add_argument("--peak-sizes", type=_int_list, help="MatMul sizes for the peak (default cpu {}, or {} from "
                        "{} threads; cuda {})".format(",".join(map(str, machine.DEFAULT_PEAK_SIZES["cpu"])),
                                                      ",".join(map(str, machine.MANY_THREADS_PEAK_SIZES)),
                                                      machine.MANY_THREADS,
                                                      ",".join(map(str, machine.DEFAULT_PEAK_SIZES["cuda"]))))
    parser.add_argument("--repeat-batch", type=int, help="the batch size at which every model is timed again at "
                        "the end of the run, to show how steady the machine was (default: 256 if measured, else "
                        "1024, 64 or the largest)")
    parser.add_argument("--no-repeat", action="store_true", help="do not time any point again")
    parser.add_argument("--rounds", type=int, default=1,
                        help="time every point in this many passes over all the models and keep each figure's "
                             "median pass, so that a slow phase of the machine moves no verdict (each extra pass "
                             "is shorter than the first: no copies, bf16 or one-call timings; default %(default)s)")
    parser.add_argument("--tune", action="store_true",
                        help="CPU: serve every point with the plan export.runtime's Runtime.tune chooses there "
                             "(pieces of the file's rows per call, 512, 128 or 32 rows, on one session or on one "
                             "one-thread session per core); the untuned figure stays beside it (default_*)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default %(default)s)")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other models of the result already in --out (same machine, software and "
                             "settings, else refused) and replace only the models measured now: for a model "
                             "retrained on a new recipe")
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
                               runs_dir=args.runs_dir, quiet=args.quiet, command=command,
                               precisions=args.precisions, tf_bf16=args.tf_bf16, jax_baseline=args.jax,
                               cuda_graphs=args.cuda_graphs, repeat_points=not args.no_repeat,
                               repeat_batch=args.repeat_batch, rounds=args.rounds, tune=args.tune)
        if args.merge:
            result = merge_into(result, args.out)
        files = write_results(result, args.out, plot=not args.no_plot)
    except BenchmarkError as exc:
        print("error: {}".format(exc), file=sys.stderr)
        return 2
    if not args.quiet:
        print(to_markdown(result))
        print("wrote " + ", ".join(str(p) for p in files.values()), file=sys.stderr)
    return 0


def merge_into(result, out):
    """`result` merged into the result of its device already in `out` (benchmarks.merge)."""
    import json
    from pathlib import Path

    path = Path(out) / (output_stem(result["device"]) + ".json")
    try:
        old = json.loads(path.read_text())
    except FileNotFoundError:
        raise BenchmarkError("--merge: there is no {} to merge into; run without --merge first.".format(path)) from None
    except (OSError, ValueError) as exc:
        raise BenchmarkError("--merge: cannot read {}: {}.".format(path, exc)) from None
    return merge.merge(old, result, where=str(path))


if __name__ == "__main__":
    sys.exit(main())
