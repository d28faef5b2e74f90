"""The issues' throughput targets checked against a result of benchmarks.throughput: each one met, missed or not
measured, with the points it rests on. Every figure comes from the result; only the thresholds are written here.

    python -m benchmarks.targets benchmarks/results/throughput.json benchmarks/results/throughput_cuda.json
"""

import json
import math
import sys
from pathlib import Path

# Issue 5 (CPU, kept so that older results read the same).
TARGET_FRACTION_OF_PEAK = 0.75
TARGET_FRACTION_MIN_BATCH = 256
TARGET_BATCH1_ENCODER_US = 100.0
# Issue 17, CPU.
INT8_OVER_TF = 2.0
INT8_MIN_BATCH = 64
TF_POINTS = (170, 180)  # fp32 onnxruntime >= TensorFlow at >= 170 of the 180 points (scaled to the points measured)
# Issue 17, GPU.
JAX_MIN_BATCH = 64
CONV_DECODER_FRACTION = 0.35
CONV_DECODER_BATCH = 1024
GRAPH_BATCH1_ENCODER_US = 40.0
COPY_BATCH = 4096
COPY_BEFORE_IMAGES_PER_S = 3.0e6  # "today's ~3M": deep_ae's copy-inclusive figure on the H200 before issue 17
COPY_FACTOR = 2.0
CODEC_PARTS = ("encoder", "decoder")
CONV_OPS = ("Conv", "ConvTranspose")


def _met(points, ok):
    measured = [p for p in points if p.get("value") is not None]
    return all(ok(p["value"]) for p in measured) if measured else None


def _point(row, value, **extra):
    return dict({"model": row["model"], "part": row["part"], "precision": row.get("precision", "fp32"),
                 "batch_size": row["batch_size"], "value": value}, **extra)


def _conv_parts(result):
    """{model: {part: has Conv/ConvTranspose}} from the FLOP counts in the result."""
    return {m["name"]: {p: any(op in f.get("by_op", {}) for op in CONV_OPS) for p, f in (m.get("flops") or {}).items()}
            for m in result.get("models", [])}


def _best(rows, key):
    """{(model, part, batch): (row, value)} of the largest `key(row)` over the rows of each point."""
    best = {}
    for row in rows:
        value = key(row)
        at = (row["model"], row["part"], row["batch_size"])
        if value is not None and (at not in best or value > best[at][1]):
            best[at] = (row, value)
        best.setdefault(at, (row, None))
    return best


def _device_resident(row):
    """(images/s, how) of onnxruntime's fastest device-resident way in a row: the plain binding or graph replay."""
    ways = [(row.get("images_per_s"), "iobinding"), (row.get("graph_images_per_s"), "cuda graph")]
    ways = [w for w in ways if w[0]]
    return max(ways) if ways else (None, None)


def cpu_targets(result):
    rows = result.get("rows", [])
    fp32 = [r for r in rows if r.get("precision", "fp32") == "fp32"]
    conv = _conv_parts(result)
    dense = {m for m, parts in conv.items() if not any(parts.values())}
    ratios = [r for r in fp32 if r.get("ort_tf_ratio") is not None]
    slower = [_point(r, r["ort_tf_ratio"]) for r in ratios if r["ort_tf_ratio"] < 1.0]
    deep = [_point(r, r["fraction_of_peak"]) for r in fp32 if r["family"] == "deep_ae"
            and r["part"] in CODEC_PARTS and r["batch_size"] >= TARGET_FRACTION_MIN_BATCH]
    batch1 = [_point(r, r["latency_us_p50"]) for r in fp32
              if r["model"] in dense and r["part"] == "encoder" and r["batch_size"] == 1]
    int8 = [_point(r, r.get("ort_tf_ratio")) for r in rows
            if r.get("precision") == "int8" and r["batch_size"] >= INT8_MIN_BATCH]
    needed = math.ceil(len(ratios) * TF_POINTS[0] / TF_POINTS[1]) if ratios else None
    return {
        "ort_at_least_tf_everywhere": {
            "issue": 5, "device": "cpu", "unit": "x",
            "description": "fp32 onnxruntime at least as fast as TensorFlow everywhere",
            "met": (not slower) if ratios else None, "points": len(ratios), "slower_points": slower},
        "deep_ae_fraction_of_peak": {
            "issue": 5, "device": "cpu", "unit": "fraction", "target": TARGET_FRACTION_OF_PEAK,
            "min_batch_size": TARGET_FRACTION_MIN_BATCH,
            "description": "deep_ae encoder/decoder at batch >= {} reach {:.0%} of the MatMul peak".format(
                TARGET_FRACTION_MIN_BATCH, TARGET_FRACTION_OF_PEAK),
            "met": _met(deep, lambda v: v >= TARGET_FRACTION_OF_PEAK), "points": deep},
        "dense_batch1_encoder_latency": {
            "issue": 5, "device": "cpu", "unit": "us", "target_us": TARGET_BATCH1_ENCODER_US,
            "description": "dense models' batch-1 encoder p50 latency under {:.0f} us".format(TARGET_BATCH1_ENCODER_US),
            "met": _met(batch1, lambda v: v < TARGET_BATCH1_ENCODER_US), "points": batch1},
        "int8_over_tf_fp32": {
            "issue": 17, "device": "cpu", "unit": "x", "target": INT8_OVER_TF, "min_batch_size": INT8_MIN_BATCH,
            "description": "int8 onnxruntime >= {:.0f}x TensorFlow fp32 at batch >= {}".format(INT8_OVER_TF,
                                                                                           INT8_MIN_BATCH),
            "met": _met(int8, lambda v: v >= INT8_OVER_TF), "points": int8,
            "not_measured": [p for p in int8 if p["value"] is None]},
        "fp32_at_least_tf_at_most_points": {
            "issue": 17, "device": "cpu", "unit": "x",
            "description": "fp32 onnxruntime >= TensorFlow at >= {} of {} points".format(*TF_POINTS),
            "met": (len(ratios) - len(slower) >= needed) if ratios else None, "points": len(ratios),
            "at_least_tf": len(ratios) - len(slower), "needed": needed, "slower_points": slower},
    }


def gpu_targets(result):
    rows = result.get("rows", [])
    fp32 = [r for r in rows if r.get("precision", "fp32") == "fp32"]
    conv = _conv_parts(result)
    dense = {m for m, parts in conv.items() if not any(parts.values())}
    jax = []
    for row in fp32:
        if row["part"] in CODEC_PARTS and row["batch_size"] >= JAX_MIN_BATCH:
            ort, how = _device_resident(row)
            jax_ips = row.get("jax_images_per_s")
            jax.append(_point(row, ort / jax_ips if ort and jax_ips else None, onnxruntime=how,
                              ort_images_per_s=ort, jax_images_per_s=jax_ips))
    fraction = []
    for (model, part, batch), (row, value) in sorted(_best(
            [r for r in rows if r["part"] == "decoder" and r["batch_size"] == CONV_DECODER_BATCH
             and conv.get(r["model"], {}).get("decoder")],
            lambda r: _device_resident(r)[0]).items()):
        fraction.append(_point(row, value * row["flops_per_image"] / 1e9 / row["peak_gflops_per_s"]
                               if value else None, onnxruntime=_device_resident(row)[1]))
    graph = []
    for (model, part, batch), (row, value) in sorted(_best(
            [r for r in rows if r["part"] == "encoder" and r["batch_size"] == 1],
            lambda r: -r["graph_latency_us_p50"] if r.get("graph_latency_us_p50") else None).items()):
        graph.append(_point(row, -value if value is not None else None))
    copy = []
    for (model, part, batch), (row, value) in sorted(_best(
            [r for r in rows if r["model"] in dense and r["part"] in CODEC_PARTS and r["batch_size"] == COPY_BATCH],
            lambda r: _best_copy(r)[1]).items()):
        copy.append(_point(row, value, way=_best_copy(row)[0]))
    goal = COPY_FACTOR * COPY_BEFORE_IMAGES_PER_S
    return {
        "ort_at_least_jax": {
            "issue": 17, "device": "cuda", "unit": "x", "min_batch_size": JAX_MIN_BATCH,
            "description": "fp32 onnxruntime (IOBinding or CUDA graph, the faster) >= Keras on JAX for every "
                           "encoder/decoder at batch >= {}".format(JAX_MIN_BATCH),
            "met": _met(jax, lambda v: v >= 1.0), "points": jax,
            "not_measured": [p for p in jax if p["value"] is None]},
        "conv_decoder_fraction_of_peak": {
            "issue": 17, "device": "cuda", "unit": "fraction", "target": CONV_DECODER_FRACTION,
            "batch_size": CONV_DECODER_BATCH,
            "description": "conv decoders >= {:.0%} of the TF32 MatMul peak at batch {} (best precision, device-"
                           "resident)".format(CONV_DECODER_FRACTION, CONV_DECODER_BATCH),
            "met": _met(fraction, lambda v: v >= CONV_DECODER_FRACTION), "points": fraction},
        "batch1_encoder_latency_cuda_graphs": {
            "issue": 17, "device": "cuda", "unit": "us", "target_us": GRAPH_BATCH1_ENCODER_US,
            "description": "batch-1 encoder p50 latency <= {:.0f} us with CUDA graphs (replay, device-resident)".format(
                GRAPH_BATCH1_ENCODER_US),
            "met": _met(graph, lambda v: v <= GRAPH_BATCH1_ENCODER_US), "points": graph},
        "copy_inclusive_batch4096": {
            "issue": 17, "device": "cuda", "unit": "images/s", "target_images_per_s": goal, "batch_size": COPY_BATCH,
            "description": "copy-inclusive throughput of the dense encoders/decoders at batch {} >= {:.0f}x the "
                           "{:.1f}M images/s before issue 17".format(COPY_BATCH, COPY_FACTOR,
                                                                     COPY_BEFORE_IMAGES_PER_S / 1e6),
            "met": _met(copy, lambda v: v >= goal), "points": copy},
    }


def _best_copy(row):
    found = [(row[w + "_images_per_s"], w) for w in ("copy", "pinned", "graph_copy") if row.get(w + "_images_per_s")]
    best = max(found) if found else (None, None)
    return best[1], best[0]


def evaluate(result):
    """{target: {issue, device, description, met (True/False/None = not measured), points...}} for the result's
    device."""
    return cpu_targets(result) if result.get("device", "cpu") == "cpu" else gpu_targets(result)


def status(met):
    return {True: "met", False: "MISSED", None: "not measured"}[met]


UNITS = {"x": "{:.2f}x", "fraction": "{:.0%}", "us": "{:.1f} us", "images/s": "{:,.0f} images/s"}


def _worst(target):
    """"; worst <figure> (<where>)" over a target's measured points, or ""."""
    points = [p for p in (target.get("points") if isinstance(target.get("points"), list) else
                          target.get("slower_points", [])) if p.get("value") is not None]
    if not points:
        return ""
    worst = (max if target["unit"] == "us" else min)(points, key=lambda p: p["value"])
    return "; worst {} ({} {} {} b{})".format(UNITS[target["unit"]].format(worst["value"]), worst["model"],
                                              worst["part"], worst["precision"], worst["batch_size"])


def report_lines(targets):
    """One line per target: what it is, met / MISSED / not measured, and the figure it rests on."""
    lines = []
    for name, target in targets.items():
        line = "- [{}] {} (issue {}, {}): {}".format(status(target["met"]), target["description"], target["issue"],
                                                     target["device"], name)
        if "needed" in target and target["points"]:
            line += "; {} of {} points, {} needed".format(target["at_least_tf"], target["points"], target["needed"])
        elif "slower_points" in target and target["slower_points"]:
            line += "; slower at {} of {} points".format(len(target["slower_points"]), target["points"])
        line += _worst(target)
        missing = target.get("not_measured") or []
        if missing and target["met"] is not None:
            line += "; {} points not measured".format(len(missing))
        lines.append(line)
    return lines


def main(argv=None):
    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths or any(p in ("-h", "--help") for p in paths):
        print("usage: python -m benchmarks.targets RESULT.json [RESULT.json ...]\n" + __doc__.split("\n\n")[0])
        return 0 if paths else 2
    for path in paths:
        try:
            result = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            print("error: cannot read {}: {}".format(path, exc), file=sys.stderr)
            return 2
        print("{} ({}, {}):".format(path, result.get("device"), result.get("machine", {}).get(
            "gpus", [{}])[0].get("name") if result.get("device") == "cuda" and result.get("machine", {}).get("gpus")
            else result.get("machine", {}).get("cpu_model")))
        print("\n".join(report_lines(evaluate(result))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
