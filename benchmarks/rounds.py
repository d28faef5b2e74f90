"""Rounds (`--rounds N`): every point of a throughput run timed N times, in N passes over all the models, each
figure of the table taken from its median pass: asv's "rounds", for a machine whose speed drifts over minutes.

On a cloud VM the same file at the same point can run at very different speeds minutes apart (benchmarks.repeat
measured up to 2.4x on a 2-core VM whose MatMul peak did not move), and onnxruntime and its baseline are timed a
second apart, so one pass can put a point on either side of a target line. A pass takes minutes, so N passes see
N phases of the machine; the median of N figures is the one a phase moves least.

Each framework's figure is its own median pass (for an even N the slower of the middle two), with that pass's
latency percentiles; a ratio divides the two medians. The first pass alone also times what the later ones skip
(copies, one call of a batch served in pieces, bf16, CUDA graphs): those figures are of that pass. Every row keeps
the figure of each pass (rounds_*), and the result's `rounds` section says how far the passes spread and which
points' verdicts differ between passes.
"""

import statistics

from benchmarks import targets
from benchmarks.timing import prefixed

#: A point whose passes spread by more than this (fastest / slowest - 1, either framework) is reported.
TOLERANCE = 0.15
DEFINITION = ("every point timed in {n} passes over all the models, one after another; each framework's figure is "
              "its median pass (the slower middle one for an even count), ratios divide the medians; copies, "
              "bf16, CUDA graphs and one-call figures are of the first pass")
#: The figures one timing of a way of running writes (benchmarks.timing.latency_stats), unprefixed.
STATS = ("runs", "latency_us_p50", "latency_us_p90", "latency_us_p99", "latency_us_mean", "latency_us_min",
         "images_per_s")
#: The baselines a pass times again: (name, the ratio of onnxruntime to it).
BASELINES = (("tf", "ort_tf_ratio"), ("jax", "ort_jax_ratio"))
#: What a tuned pass (--tune) chose, kept with the figures of the pass they come from.
PLAN = ("plan_rows", "plan_workers", "plan_candidates")


def _key(row):
    return row["model"], row["part"], row.get("precision", "fp32"), row["batch_size"]


def _median_pass(timings, speed):
    """The timing whose `speed` is the median (median_low: an actual pass, the slower middle one)."""
    values = [t[speed] for t in timings]
    return timings[values.index(statistics.median_low(values))]


def combine(passes):
    """The first pass's rows with each figure from its median pass. `passes`: lists of rows, the first the full
    pass; a point missing from a later pass keeps the passes it has."""
    later = [{_key(r): r for r in rows} for rows in passes[1:]]
    combined = []
    for first in passes[0]:
        timings = [first] + [p[_key(first)] for p in later if _key(first) in p]
        row = dict(first)
        if len(timings) > 1:
            row.update({k: v for k, v in _median_pass(timings, "images_per_s").items() if k in STATS + PLAN})
            row["rounds_images_per_s"] = [t["images_per_s"] for t in timings]
            # The baselines, and the untuned Runtime's figure of a --tune run (no ratio): each its own median pass.
            for name, ratio in BASELINES + (("default", None),):
                speed = name + "_images_per_s"
                have = [t for t in timings if t.get(speed)]
                if not have:
                    continue
                chosen = _median_pass(have, speed)
                row.update({k: chosen[k] for k in prefixed(dict.fromkeys(STATS), name) if k in chosen})
                row["rounds_" + speed] = [t[speed] for t in have]
                if ratio and len(have) == len(timings):
                    row["rounds_" + ratio] = [t["images_per_s"] / t[speed] for t in timings]
            _ratios(row)
        combined.append(row)
    return combined


def _ratios(row):
    """Every ratio of a row again, from the figures it holds now."""
    def ratio(numerator, denominator):
        return row[numerator] / row[denominator] if row.get(numerator) and row.get(denominator) else None

    pairs = {"ort_tf_ratio": ("images_per_s", "tf_images_per_s"),
             "ort_tf_ratio_copy": ("copy_images_per_s", "tf_images_per_s"),
             "ort_tf_bf16_ratio": ("images_per_s", "tf_bf16_images_per_s"),
             "ort_jax_ratio": ("images_per_s", "jax_images_per_s"),
             "ort_graph_jax_ratio": ("graph_images_per_s", "jax_images_per_s")}
    for name, (numerator, denominator) in pairs.items():
        if name in row:
            row[name] = ratio(numerator, denominator)


def target_line(row, device):
    """The ratio a point's verdict is judged at by an issue's target (benchmarks.targets), or None: 2 for int8
    against TensorFlow fp32 at batch >= 64, 1 for fp32 against TensorFlow (CPU) or against Keras on JAX for
    encoders and decoders at batch >= 64 (CUDA)."""
    precision = row.get("precision", "fp32")
    if device == "cpu":
        if precision == "int8" and row["batch_size"] >= targets.INT8_MIN_BATCH:
            return "ort_tf_ratio", targets.INT8_OVER_TF
        return ("ort_tf_ratio", 1.0) if precision == "fp32" else None
    if precision == "fp32" and row["part"] in targets.CODEC_PARTS and row["batch_size"] >= targets.JAX_MIN_BATCH:
        return "ort_jax_ratio", 1.0
    return None


def _spread(values):
    return max(values) / min(values) - 1 if values and min(values) > 0 else None


def undecided(row, device):
    """Whether the passes of a point fall on both sides of its target line."""
    line = target_line(row, device)
    per_pass = row.get("rounds_" + line[0]) if line else None
    return bool(per_pass) and min(per_pass) < line[1] <= max(per_pass)


def summary(rows, rounds, device, tolerance=TOLERANCE):
    """The `rounds` section of a result: how far each point's passes spread, and the points whose verdict
    differs between passes (each with its per-pass ratios)."""
    points = [r for r in rows if r.get("rounds_images_per_s")]
    # Each point's spreads: onnxruntime's and each baseline's it was timed against.
    by_point = [[s for s in (_spread(r.get("rounds_" + speed)) for speed in
                             ("images_per_s",) + tuple(n + "_images_per_s" for n, _ in BASELINES)) if s is not None]
                for r in points]
    spreads = [s for point in by_point for s in point]
    unsteady = [point for point in by_point if any(s > tolerance for s in point)]
    split = []
    for row in points:
        if undecided(row, device):
            name, line = target_line(row, device)
            split.append({"model": row["model"], "part": row["part"], "precision": row.get("precision", "fp32"),
                          "batch_size": row["batch_size"], "line": line, "ratio": row[name],
                          "per_pass": row["rounds_" + name]})
    return {"definition": DEFINITION.format(n=rounds), "rounds": int(rounds), "tolerance": tolerance,
            "points": len(points), "unsteady": len(unsteady),
            "median_spread": statistics.median(spreads) if spreads else None,
            "largest_spread": max(spreads) if spreads else None, "undecided": split}


def merge(old, new, rows, device):
    """The section of a merged result, from its rows (each keeps its passes); None if neither run had rounds."""
    if not old and not new:
        return None
    base = new or old
    return summary(rows, base["rounds"], device, base.get("tolerance", TOLERANCE))


def report_lines(section):
    """Markdown: how far the passes spread, and the points whose passes fall on both sides of a target line."""
    if not section or not section.get("points"):
        return []
    how = section["definition"]
    lines = ["## Rounds", "",
             "{}{}. Over {} points the passes spread (fastest / slowest - 1) by {:.0%} at the median and {:.0%} at "
             "most; {} points spread by more than {:.0%}.".format(
                 how[:1].upper(), how[1:], section["points"], section["median_spread"] or 0.0,
                 section["largest_spread"] or 0.0, section["unsteady"], section["tolerance"]), ""]
    split = section.get("undecided") or []
    if not split:
        return lines + ["No point's passes fall on both sides of its target line.", ""]
    lines += ["{} points' passes fall on both sides of their target line; the table judges them by the medians:"
              .format(len(split)), "",
              "| model | part | precision | batch | line | median ratio | per pass |",
              "| --- | --- | --- | ---: | ---: | ---: | --- |"]
    for p in split:
        lines.append("| {} | {} | {} | {} | {:.0f}x | {:.2f} | {} |".format(
            p["model"], p["part"], p["precision"], p["batch_size"], p["line"], p["ratio"],
            ", ".join("{:.2f}".format(v) for v in p["per_pass"])))
    return lines + [""]
