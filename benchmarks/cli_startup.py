"""How fast the command-line tools answer: wall time of each listing, help and look-up command, several runs
each, min and median, and whether TensorFlow's start-up lines reached the terminal.

`python -m benchmarks.cli_startup --repeats 7 --out benchmarks/results/` writes cli_startup.{json,md};
`--code DIR` times another checkout of the project (e.g. an older commit) with the same interpreter.
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOISE = ("All log messages before absl", "oneDNN custom operations", "Could not find cuda drivers",
         "This TensorFlow binary is optimized", "rebuild TensorFlow")
TARGET_S = 1.0


def commands(release_dir):
    """(label, argv) of the commands that need no TensorFlow."""
    return [
        ("python -m zoo.train --list", ["-m", "zoo.train", "--list"]),
        ("python -m zoo.train --help", ["-m", "zoo.train", "--help"]),
        ("python -m zoo.weights list (no source: the error)", ["-m", "zoo.weights", "list"]),
        ("python -m zoo.weights list --source DIR", ["-m", "zoo.weights", "list", "--source", str(release_dir)]),
        ("python -m zoo.data fashion_mnist", ["-m", "zoo.data", "fashion_mnist"]),
        ("python -m export --help", ["-m", "export", "--help"]),
        ("python -m export.release --help", ["-m", "export.release", "--help"]),
        ("python -m export.runtime --help", ["-m", "export.runtime", "--help"]),
        ("python -m benchmarks.throughput --help", ["-m", "benchmarks.throughput", "--help"]),
        ("aezoo --version", ["-m", "zoo.cli", "--version"]),
        ("aezoo train --list", ["-m", "zoo.cli", "train", "--list"]),
    ]


def time_command(argv, code_dir, repeats):
    env = dict(os.environ, PYTHONPATH=str(code_dir))
    times, noisy, rc = [], False, None
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, *argv], cwd=code_dir, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        rc = proc.returncode
        noisy = noisy or any(n in proc.stdout + proc.stderr for n in NOISE)
    return {"min_s": min(times), "median_s": statistics.median(times), "runs": len(times), "exit_code": rc,
            "tensorflow_startup_lines": noisy}


def measure(code_dir=ROOT, repeats=5):
    with tempfile.TemporaryDirectory() as tmp:
        release_dir = Path(tmp)
        (release_dir / "index.json").write_text(json.dumps({"index_version": 1, "presets": {
            "dae_mnist": {"model": "dae", "dataset": "mnist"}}}))
        rows = [{"command": label, **time_command(argv, code_dir, repeats)} for label, argv in commands(release_dir)]
    return {"code": str(code_dir), "python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "load_average": os.getloadavg()[1], "target_s": TARGET_S, "rows": rows}


def to_markdown(result):
    lines = ["# Command start-up times", "",
             "Wall time of each command, {} runs each, on {} CPUs (load {:.2f}); target under {} s.".format(
                 result["rows"][0]["runs"], result["cpus"], result["load_average"], result["target_s"]), "",
             "| command | min (s) | median (s) | exit code | TensorFlow start-up lines |",
             "| --- | ---: | ---: | ---: | --- |"]
    for row in result["rows"]:
        lines.append("| `{}` | {:.2f} | {:.2f} | {} | {} |".format(
            row["command"], row["min_s"], row["median_s"], row["exit_code"],
            "yes" if row["tensorflow_startup_lines"] else "no"))
    return "\n".join(lines) + "\n"


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.cli_startup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--code", default=str(ROOT), help="the checkout to time (default this one)")
    parser.add_argument("--out", help="folder for cli_startup.json and .md (default: print only)")
    args = parser.parse_args(argv)
    result = measure(Path(args.code).resolve(), args.repeats)
    text = to_markdown(result)
    print(text)
    if args.out:
        from zoo import fileio

        fileio.write_json(Path(args.out) / "cli_startup.json", result)
        fileio.write_text(Path(args.out) / "cli_startup.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
