"""Training throughput of the presets under each Keras backend: `python -m zoo.train` in a fresh process per
(preset, backend), images/s from the run's own epoch timing (median over the epochs after the first, which
includes tracing and compilation), and the test error reached, on this machine.

`python -m benchmarks.training_speed --epochs 3 --limit 6000 --out benchmarks/results/` writes training.{json,md}.
A GPU column is filled by `bash benchmarks/gpu_train.sh` runs (their metrics.json), passed with --gpu-runs.
"""

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from zoo import schema

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("tensorflow", "jax")


def presets_of(dataset):
    from zoo.presets import PRESETS

    return sorted(name for name, p in PRESETS.items() if p.dataset == dataset)


def versions():
    import importlib.metadata

    result = {}
    for package in ("keras", "tensorflow", "jax", "jaxlib"):
        try:
            result[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return result


def train_once(preset, backend, epochs, limit, work):
    out = Path(work) / backend / preset
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "zoo.train", preset, "--epochs", str(epochs), "--out", str(out), "--quiet"]
    if limit:
        command += ["--limit", str(limit)]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "exit {}".format(
            proc.returncode)}
    return run_figures(out)


def run_figures(run_dir):
    metrics = schema.RunMetrics.load(run_dir)
    config = schema.RunConfig.load(run_dir)
    timing = metrics.timing
    return {"images_per_second": timing.get("train_images_per_second"),
            "seconds_per_epoch": timing.get("seconds_per_epoch"),
            "first_epoch_seconds": timing.get("first_epoch_seconds"), "load_average": timing.get("load_average"),
            "sq_error_per_image": metrics.metrics["sq_error_per_image"],
            "batch_size": config.training["batch_size"], "num_train": config.num_train}


def measure(presets, backends=BACKENDS, epochs=3, limit=6000, gpu_runs=None):
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for preset in presets:
            row = {"preset": preset}
            for backend in backends:
                print("{} on {} ...".format(preset, backend), file=sys.stderr, flush=True)
                row[backend] = train_once(preset, backend, epochs, limit, work)
            if gpu_runs and (Path(gpu_runs) / preset / schema.METRICS).is_file():
                row["gpu"] = run_figures(Path(gpu_runs) / preset)
            rows.append(row)
    from benchmarks.throughput import _cpu_model

    return {"machine": {"cpu": _cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()},
            "versions": versions(), "epochs": epochs, "limit": limit, "backends": list(backends), "rows": rows,
            "unit": "training images/s: median over the epochs after the first (zoo.train's metrics.json timing)"}


def _cell(result):
    if not result:
        return "not measured"
    if "error" in result:
        return "failed: " + result["error"][:60]
    return "{:,.0f}".format(result["images_per_second"])


def to_markdown(result):
    machine = result["machine"]
    lines = ["# Training throughput by Keras backend", "",
             "{} ({} cores), Python {}; {}. Each preset trained {} epochs on the first {} training images "
             "at its own batch size, one fresh process per preset and backend.".format(
                 machine["cpu"], machine["cores"], machine["python"],
                 ", ".join("{} {}".format(k, v) for k, v in result["versions"].items()), result["epochs"],
                 result["limit"] or "all"), "",
             "| preset | batch | " + " | ".join("{} (images/s)".format(b) for b in result["backends"])
             + " | jax / tensorflow | GPU, JAX (images/s) | " + " | ".join(
                 "test sq. error, {}".format(b) for b in result["backends"]) + " |",
             "| --- | ---: | " + " | ".join("---:" for _ in result["backends"]) + " | ---: | ---: | "
             + " | ".join("---:" for _ in result["backends"]) + " |"]
    for row in result["rows"]:
        cells = [row.get(b) for b in result["backends"]]
        batch = next((c["batch_size"] for c in cells if c and "batch_size" in c), "")
        ratio = ""
        tf_run, jax_run = row.get("tensorflow"), row.get("jax")
        if tf_run and jax_run and "images_per_second" in tf_run and "images_per_second" in jax_run:
            ratio = "{:.2f}x".format(jax_run["images_per_second"] / tf_run["images_per_second"])
        errors = ["{:.2f}".format(c["sq_error_per_image"]) if c and "sq_error_per_image" in c else "" for c in cells]
        lines.append("| {} | {} | {} | {} | {} | {} |".format(
            row["preset"], batch, " | ".join(_cell(c) for c in cells), ratio,
            _cell(row.get("gpu")) if row.get("gpu") else "not measured", " | ".join(errors)))
    lines += ["", "Images/s is the median over the epochs after the first (the first includes tracing and XLA "
                  "compilation). The test errors come from short runs and only show that both backends train; "
                  "they are not the presets' results. The GPU column is filled from `benchmarks/gpu_train.sh` "
                  "run dirs (`--gpu-runs`); no GPU was available when this table was made unless it shows figures."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.training_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("presets", nargs="*", help="default: every fashion_mnist preset")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=6000, help="training images per epoch (0: all)")
    parser.add_argument("--gpu-runs", help="folder of run dirs trained on a GPU by benchmarks/gpu_train.sh")
    parser.add_argument("--out", help="folder for training.json and training.md (default: print only)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other presets' rows of OUT/training.json (same epochs and limit only)")
    args = parser.parse_args(argv)
    result = measure(args.presets or presets_of("fashion_mnist"), tuple(args.backends.split(",")), args.epochs,
                     args.limit or None, args.gpu_runs)
    old_file = Path(args.out or ".") / "training.json"
    if args.merge and old_file.is_file():
        old = json.loads(old_file.read_text())
        if (old["epochs"], old["limit"], old["backends"]) != (result["epochs"], result["limit"], result["backends"]):
            parser.error("--merge: {} was measured with other epochs, limit or backends".format(old_file))
        measured = {row["preset"] for row in result["rows"]}
        result["rows"] = sorted([r for r in old["rows"] if r["preset"] not in measured] + result["rows"],
                                key=lambda r: r["preset"])
    text = to_markdown(result)
    print(text)
    if args.out:
        from zoo import fileio

        fileio.write_json(Path(args.out) / "training.json", result)
        fileio.write_text(Path(args.out) / "training.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
