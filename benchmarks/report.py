"""The throughput result written out: JSON (the record), CSV (one row per point), Markdown (tables that say what
ran where, and the targets) and one PNG per model; each file replaced atomically (zoo.fileio)."""

import csv
import io
import json
import warnings
from pathlib import Path

import numpy as np

from benchmarks import merge, repeat, rounds
from benchmarks import targets as target_checks
from zoo import fileio

CSV_COLUMNS = (
    "model", "family", "part", "precision", "device", "provider", "batch_size", "threads", "runs",
    "latency_us_p50", "latency_us_p90", "latency_us_p99", "latency_us_mean", "images_per_s",
    "chunk_rows", "single_latency_us_p50", "single_images_per_s",
    "plan_rows", "plan_workers", "default_latency_us_p50", "default_images_per_s",
    "flops_per_image", "gflops_per_s", "fraction_of_peak", "peak_gflops_per_s",
    "copy_latency_us_p50", "copy_latency_us_p90", "copy_latency_us_p99", "copy_images_per_s",
    "pinned_latency_us_p50", "pinned_images_per_s",
    "graph_latency_us_p50", "graph_latency_us_p90", "graph_images_per_s", "graph_fraction_of_peak",
    "graph_copy_latency_us_p50", "graph_copy_images_per_s",
    "tf_latency_us_p50", "tf_latency_us_p90", "tf_latency_us_p99", "tf_images_per_s",
    "ort_tf_ratio", "ort_tf_ratio_copy",
    "tf_bf16_latency_us_p50", "tf_bf16_images_per_s", "ort_tf_bf16_ratio",
    "jax_latency_us_p50", "jax_latency_us_p90", "jax_images_per_s", "jax_copy_images_per_s",
    "ort_jax_ratio", "ort_graph_jax_ratio", "ort_jax_ratio_copy",
)
#: Columns of a model's table, each shown where some row has it: (heading, row key, format, scale).
TABLE = (("part", "part", None, None), ("precision", "precision", None, None), ("batch", "batch_size", None, None),
         ("p50 us", "latency_us_p50", ".1f", 1), ("p90 us", "latency_us_p90", ".1f", 1),
         ("images/s", "images_per_s", ",.0f", 1), ("in pieces of", "chunk_rows", "d", 1),
         ("one call images/s", "single_images_per_s", ",.0f", 1),
         ("tuned: rows a call", "plan_rows", "d", 1), ("workers", "plan_workers", "d", 1),
         ("untuned images/s", "default_images_per_s", ",.0f", 1), ("MFLOP/image", "flops_per_image", ".3f", 1e-6),
         ("GFLOP/s", "gflops_per_s", ".1f", 1), ("% of peak", "fraction_of_peak", ".0f", 100),
         ("graph p50 us", "graph_latency_us_p50", ".1f", 1), ("graph images/s", "graph_images_per_s", ",.0f", 1),
         ("graph % of peak", "graph_fraction_of_peak", ".0f", 100),
         ("copy images/s", "copy_images_per_s", ",.0f", 1), ("pinned images/s", "pinned_images_per_s", ",.0f", 1),
         ("graph+copy images/s", "graph_copy_images_per_s", ",.0f", 1),
         ("TF fp32 images/s", "tf_images_per_s", ",.0f", 1), ("ORT/TF", "ort_tf_ratio", ".2f", 1),
         ("TF bf16 images/s", "tf_bf16_images_per_s", ",.0f", 1), ("ORT/TF-bf16", "ort_tf_bf16_ratio", ".2f", 1),
         ("JAX images/s", "jax_images_per_s", ",.0f", 1), ("JAX copy images/s", "jax_copy_images_per_s", ",.0f", 1),
         ("ORT/JAX", "ort_jax_ratio", ".2f", 1), ("graph/JAX", "ort_graph_jax_ratio", ".2f", 1))


def to_csv(rows):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("{:.6g}".format(v) if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def _cell(row, key, spec, scale):
    value = row.get(key)
    if value is None:
        return ""
    return str(value) if spec is None else format(value * scale, spec)


def _legend(result):
    settings, device = result["settings"], result["device"]
    where = [("onnxruntime ({})".format(settings["provider"]), settings.get("bound"))]
    for key, label in (("tuned", "tuned"), ("copy", "copy"), ("pinned", "pinned"), ("graph", "graph"),
                       ("graph_copy", "graph+copy"), ("tf", "TF fp32"), ("tf_bf16", "TF bf16"), ("jax", "JAX")):
        if settings.get(key):
            where.append((label, settings[key]))
    lines = ["What runs where (images/s = batch / median latency per call):", ""]
    lines += ["- {}: {}".format(label, text) for label, text in where if text]
    if settings.get("precision"):
        lines.append("- precision: " + settings["precision"])
    if device == "cuda":
        lines.append("- host memory for the copies: " + settings.get("host_memory", "?"))
    baselines = []
    if result.get("tensorflow"):
        baselines.append("TensorFlow {} ({} threads, oneDNN {})".format(
            result["tensorflow"]["tensorflow"], result["tensorflow"]["intra_op_threads"],
            result["tensorflow"]["onednn"]))
    if result.get("jax"):
        baselines.append("Keras {} on JAX {} ({} backend: {})".format(
            result["jax"]["keras"], result["jax"]["jax"], result["jax"]["backend"],
            ", ".join(result["jax"]["devices"])))
    if baselines:
        lines.append("- baselines: " + "; ".join(baselines))
    return lines + merge.legend_lines(result)


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
    ] + _legend(result) + [""]
    for model in result["models"]:
        rows = [r for r in result["rows"] if r["model"] == model["name"]]
        shown = [c for c in TABLE if c[2] is None or any(r.get(c[1]) is not None for r in rows)]
        lines += ["## {}".format(model["name"]), "",
                  "| " + " | ".join(c[0] for c in shown) + " |",
                  "| " + " | ".join("---" if c[2] is None and c[1] != "batch_size" else "---:" for c in shown) + " |"]
        lines += ["| " + " | ".join(_cell(r, *c[1:]) for c in shown) + " |" for r in rows]
        parity = {p: i["fp32"]["jax_parity"] for p, i in (model.get("parts_info") or {}).items()
                  if "jax_parity" in i.get("fp32", {})}
        if parity:
            lines += ["", "Keras on JAX vs onnxruntime fp32, max abs difference: " + ", ".join(
                "{} {}".format(p, "{:.2g} (batch {})".format(v["max_abs_diff"], v["batch_size"]) if "max_abs_diff" in v
                               else "failed: " + v["error"]) for p, v in parity.items())]
        lines.append("")
    if result.get("skipped"):
        lines += ["Not measured: " + "; ".join("{model} {part} {precision} ({reason})".format(**s)
                                               for s in result["skipped"]), ""]
    lines += rounds.report_lines(result.get("rounds"))
    lines += repeat.report_lines(result.get("repeat"))
    if result.get("targets"):
        lines += ["## Targets", ""] + target_checks.report_lines(result["targets"]) + [""]
    return "\n".join(lines)


def plot_model(result, model_name, path):
    """Throughput and fraction of peak against batch size, per part and precision; False without matplotlib."""
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
    styles = {"fp32": "o-", "fp16": "^-", "int8": "v-"}
    baseline = ("jax_images_per_s", "Keras on JAX") if result["device"] == "cuda" else ("tf_images_per_s",
                                                                                          "TensorFlow fp32")
    for part in dict.fromkeys(r["part"] for r in rows):
        c = colors.get(part)
        for precision in dict.fromkeys(r.get("precision", "fp32") for r in rows if r["part"] == part):
            pr = sorted((r for r in rows if r["part"] == part and r.get("precision", "fp32") == precision),
                        key=lambda r: r["batch_size"])
            b = [r["batch_size"] for r in pr]
            style = styles.get(precision, "o-")
            left.plot(b, [r["images_per_s"] for r in pr], style, color=c,
                      label="{} onnxruntime {}".format(part, precision))
            right.plot(b, [100 * r["fraction_of_peak"] for r in pr], style, color=c,
                       label="{} {}".format(part, precision))
            if precision == "fp32" and any(r.get(baseline[0]) for r in pr):
                left.plot(b, [r.get(baseline[0]) or np.nan for r in pr], "s--", color=c, alpha=0.7,
                          label="{} {}".format(part, baseline[1]))
    batch_sizes = sorted({r["batch_size"] for r in rows})
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
        ax.minorticks_off()
        ax.set_xlabel("batch size")
        ax.grid(True, which="both", alpha=0.3)
    left.set_yscale("log")
    left.set_ylabel("images/s")
    left.legend(fontsize=7)
    right.set_ylabel("% of MatMul peak ({:.0f} GFLOP/s)".format(result["peak"]["gflops_per_s"]))
    right.set_ylim(bottom=0)
    right.legend(fontsize=7)
    machine = result["machine"]
    where = machine["gpus"][0]["name"] if result["device"] == "cuda" and machine["gpus"] else machine["cpu_model"]
    fig.suptitle("{}: onnxruntime {} on {} ({} threads)".format(
        model_name, result["device"], where, result["settings"]["threads"]), fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    with fileio.atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return True


def output_stem(device):
    return "throughput" if device == "cpu" else "throughput_{}".format(device)


def write_results(result, out, plot=True):
    """throughput[_cuda].json/.csv/.md and one PNG per model in `out`; returns {kind: path}."""
    out = Path(out)
    stem = output_stem(result["device"])
    files = {"json": fileio.write_text(out / (stem + ".json"), json.dumps(result, indent=2) + "\n"),
             "csv": fileio.write_text(out / (stem + ".csv"), to_csv(result["rows"])),
             "md": fileio.write_text(out / (stem + ".md"), to_markdown(result))}
    if plot:
        for model in result["models"]:
            path = out / "{}_{}.png".format(stem, model["name"])
            if plot_model(result, model["name"], path):
                files["png:" + model["name"]] = path
    return files
