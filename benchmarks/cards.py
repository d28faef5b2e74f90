"""Generate MODEL_CARDS.md from measured results only: run metrics and quality
(benchmarks/results/quality.json), onnxruntime throughput (throughput.json) and the bundled release's manifests.

`python -m benchmarks.cards` — a figure that was not measured is said to be missing, never typed in, and
a run is described by the recipe it recorded, never by its preset's defaults.
"""

import json
import sys
from pathlib import Path

from zoo import schema

RESULTS_DIR = Path(schema.RESULTS_DIR)
OUTPUT = Path("MODEL_CARDS.md")
MISSING = "not measured"
CARD_BATCH_SIZES = (1, 64, 1024)

# Prose per family: what it is for and what it is not for. Words, not figures.
USE_AND_LIMITS = {
    "ae": ("Teaching baseline and small non-linear feature extractor.",
           "One sigmoid layer: deeper models reconstruct better at the same code size. The encoder subtracts the "
           "mean training image first (without it, the sigmoid code units saturate during training)."),
    "linear_ae": ("Checking PCA equivalence; a linear projection that can be fine-tuned or exported like the others.",
                  "It learns PCA's subspace, not its orthogonal axes: code dimensions are mixed and unordered."),
    "deep_ae": ("Dimensionality reduction and compact codes for retrieval (Hinton & Salakhutdinov 2006).",
                "Codes are not a probabilistic model: do not sample them to generate images."),
    "conv_ae": ("Image compression and features where spatial structure matters.",
                "Fixed input size (height and width divisible by 4); trained on one dataset only."),
    "dae": ("Removing noise like the training corruption; robust features.",
            "Denoises the kind and level of noise it was trained on best; clean-image fidelity is slightly lower."),
    "conv_dae": ("Denoising images with a convolutional model.",
                 "Same limits as dae; fixed input size."),
    "sparse_ae": ("Interpretable, mostly-off features; overcomplete codes.",
                  "The sparsity penalty trades reconstruction quality for sparse codes."),
    "contractive_ae": ("Features that are locally invariant to small input changes.",
                       "The contractive penalty trades reconstruction quality for smoothness."),
    "vae": ("Generating images by sampling the prior; a smooth latent space for interpolation.",
            "Samples are blurry (Bernoulli likelihood); the exported encoder gives the posterior mean and log "
            "variance, and sampling is done by the caller: z = z_mean + exp(z_log_var / 2) * eps."),
    "conv_vae": ("Generating images with a convolutional VAE.",
                 "Same limits as vae."),
    "stacked_ae": ("The deep autoencoder trained as Hinton & Salakhutdinov 2006 did: each layer pretrained on its own, "
                   "then the whole stack fine-tuned; deep_ae (no pretraining) is its control.",
                   "The layer-wise stage adds training time; with Adam and ReLU it is not needed to train the stack, "
                   "so compare with deep_ae before relying on a gain."),
    "vq_vae": ("Discrete codes: compression to a few bytes per image (the `indices` output), and tokens for a "
               "second-stage prior model (van den Oord et al. 2017).",
               "No prior is trained, so it does not generate images by itself; the code is quantised, so nearby "
               "images can share one code exactly. The tokens come from a Dense code layer, not the paper's "
               "spatial grid."),
}


def _load_json(path):
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else None


def _fmt(value, spec="{:.3g}"):
    return MISSING if value is None else spec.format(value)


def architecture(preset, model_config=None):
    """Layer-by-layer summary and parameter counts of the model a run recorded (`model_config`), else of the
    preset's; computed, not typed."""
    import zoo

    config = dict(model_config or preset.model_config)
    for key in ("name", "trainable", "dtype"):
        config.pop(key, None)
    model = zoo.build(preset.model, **config)
    lines = []
    for part in (model.encoder, model.decoder):
        steps = []
        for layer in part.layers:
            if layer.__class__.__name__ == "InputLayer":
                continue
            shape = layer.output.shape if not isinstance(layer.output, (list, tuple)) else layer.output[0].shape
            activation = getattr(layer, "activation", None)
            act = getattr(activation, "__name__", None)
            steps.append("{} {}{}".format(layer.__class__.__name__, "x".join(str(d) for d in shape[1:]),
                                          " " + act if act and act != "linear" else ""))
        lines.append("{} ({:,} parameters): {}".format(part.name, part.count_params(), " → ".join(steps)))
    return lines, model.count_params(), model.latent_dim


def throughput_lines(name, throughput):
    if not throughput:
        return ["onnxruntime throughput: {} (run `python -m benchmarks.throughput {}`).".format(MISSING, name)]
    every = [r for r in throughput["rows"] if r["model"] == name]
    rows = [r for r in every if r.get("precision", "fp32") == "fp32"]
    if not rows:
        return ["onnxruntime throughput: {} (run `python -m benchmarks.throughput {}`).".format(MISSING, name)]
    machine = throughput.get("machine", {})
    # The CPU's name alone does not tell hosts apart (two "AMD EPYC" hosts measured 190 and 430 GFLOP/s).
    peak = (throughput.get("peak") or {}).get("gflops_per_s")
    tuned = throughput.get("settings", {}).get("tune")
    lines = ["onnxruntime on {} ({} threads{}), IOBinding{}, images/s (p50 latency; ratio to TensorFlow on the "
             "SavedModel):".format(machine.get("cpu_model", throughput.get("device")),
                                   throughput.get("settings", {}).get("threads"),
                                   "" if peak is None else "; MatMul peak {:.0f} GFLOP/s".format(peak),
                                   ", each batch served with the plan `Runtime.tune` chose for it (pieces and "
                                   "threads; the untuned figures are in throughput.md)" if tuned else ""), "",
             "| part | " + " | ".join("batch {}".format(b) for b in CARD_BATCH_SIZES) + " |",
             "| --- |" + " ---: |" * len(CARD_BATCH_SIZES)]
    for part in ("encoder", "decoder", "autoencoder"):
        cells = []
        for b in CARD_BATCH_SIZES:
            row = next((r for r in rows if r["part"] == part and r["batch_size"] == b), None)
            if row is None:
                cells.append(MISSING)
                continue
            ratio = row.get("ort_tf_ratio")
            cells.append("{:,.0f} ({:.0f} µs{})".format(row["images_per_s"], row["latency_us_p50"],
                                                        "" if ratio is None else "; {:.2f}x TF".format(ratio)))
        lines.append("| {} | {} |".format(part, " | ".join(cells)))
    for precision in ("int8", "fp16"):
        variant = [r for r in every if r.get("precision") == precision]
        if variant:
            shown = ["{} batch {} {:,.0f} ({:.2f}x TF fp32)".format(r["part"], r["batch_size"], r["images_per_s"],
                                                                   r["ort_tf_ratio"])
                     for r in variant if r["batch_size"] in CARD_BATCH_SIZES and r.get("ort_tf_ratio") is not None]
            if shown:
                lines += ["", "{} files ({}): {}.".format(precision, "static QDQ, calibrated on training images"
                                                          if precision == "int8" else "float16 weights",
                                                          "; ".join(shown))]
    return lines


def flops_text(name, throughput):
    for model in (throughput or {}).get("models", []):
        if model.get("name") == name and model.get("flops"):
            parts = model["flops"]
            return ", ".join("{} {:.2f} MFLOP".format(p, parts[p]["flops"] / 1e6) for p in parts)
    return MISSING


def _shown_path(path):
    """`path` relative to the working directory when it is inside it (the repository), else as it is."""
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return Path(path).as_posix()


def release_lines(name, release_dir):
    manifest = _load_json(Path(release_dir) / name / schema.MANIFEST) if release_dir else None
    if not manifest:
        return ["Released files: none in this release (train the preset, then `python -m export.release "
                "runs/{} --out releases/<version>`).".format(name)]
    lines = ["Released files ({}, `{}`; every weight stored once: the Keras model is rebuilt from the ONNX "
             "files):".format(manifest.get("release") or Path(release_dir).name,
                              _shown_path(Path(release_dir) / name)), "",
             "| file | size | sha256 |", "| --- | ---: | --- |"]
    for f in manifest.get("files", []):
        lines.append("| {} | {:,} B | `{}` |".format(f["file"], f["size"], f["sha256"]))
    variants = ((manifest.get("parity") or {}).get("variants") or {}).items()
    accuracy = [variant_accuracy(precision, report) for precision, report in sorted(variants) if report.get("kept")]
    if accuracy:
        lines += ["", "Accuracy of the lower-precision files against fp32 on the test split: " + "; ".join(accuracy) +
                  "."]
    return lines


def variant_accuracy(precision, report):
    """"int8 (full extent): sq. error per image 5.913 against 5.843 (+1.20%, tolerance 2%), precision@10 ..."."""
    error, retrieval, tolerance = report["sq_error_per_image"], report.get("precision_at_10"), report["tolerance"]
    text = "{}{}: sq. error per image {:.3f} against {:.3f} ({:+.2%}, tolerance {:.1%})".format(
        precision, " ({} extent)".format(report["extent"]) if report.get("extent") else "", error["variant"],
        error["fp32"], error["relative_change"], tolerance["sq_error_rel"])
    if retrieval:
        database = ((report.get("evaluation") or {}).get("database") or {}).get("num_images")
        text += ", precision@10{} {:.4f} against {:.4f} (tolerance -{})".format(
            " over the first {:,} training images".format(database) if database else "", retrieval["variant"],
            retrieval["fp32"], tolerance["precision_at_10"])
    return text


def search_lines(name, search):
    """The similar-image search figures of `name` from benchmarks/results/search.json, if it was measured."""
    rows = [r for r in (search or {}).get("rows", []) if r["representation"] == name]
    if not rows:
        return ["Similar-image search: not measured (`python -m benchmarks.search`)."]
    floats = next((r for r in rows if r["index"] == "flat"), None)
    run = (search.get("runs") or {}).get(name)
    which = "" if run is None else " (codes of a run with test sq. error {:.2f})".format(run["sq_error_per_image"])
    binary = ["{} bits ({}) {:.3f}".format(r["bits"], r["binarize"], r["precision_at_10"])
              for r in rows if r["index"] == "binary"]
    return ["Similar-image search (`python -m zoo.search`; test images query the 60,000 training images){}: "
            "float codes precision@10 {:.3f}, mAP@100 {:.3f}; binary codes precision@10: {}. See "
            "[benchmarks/results/search.md](benchmarks/results/search.md).".format(
                which, floats["precision_at_10"], floats["map_at_100"], ", ".join(binary) or "not measured")]


def health_text(health):
    """One line: how much of the code the trained model uses (zoo.metrics.code_health, on training images)."""
    from zoo import metrics

    if not health:
        return "Code health: {} (the run predates the check).".format(MISSING)
    return "{}, on {:,} training images.".format(metrics.health_line(health), health["images"])


def card(preset, quality, throughput, release_dir, results_dir=RESULTS_DIR, arch=None, search=None):
    from zoo.data import get_info
    from zoo.registry import describe_models

    arch, params, latent = arch or architecture(preset)
    use, limits = USE_AND_LIMITS.get(preset.model, ("", ""))
    released = bool(release_dir and (Path(release_dir) / preset.name / schema.MANIFEST).is_file())
    lines = ["## {}".format(preset.name), "",
             "`{}`: {}. Family `{}`: {}".format(preset.name, preset.description, preset.model,
                                                describe_models()[preset.model]), "",
             "- Parameters: {:,}; code size {}.".format(params, latent),
             "- FLOPs per image (ONNX graph): {}.".format(flops_text(preset.name, throughput)),
             "- Dataset: {}; inputs float32 in [0, 1], NHWC {}.".format(
                 preset.dataset, "x".join(str(d) for d in preset.model_config["input_shape"])),
             ("- Recipe as trained: {}.".format(schema.recipe_text(quality.get("training"), quality.get("model_config"),
                                                                   quality.get("overrides")))
              if quality else "- Preset recipe (not trained here): {}.".format(schema.recipe_text(
                  preset.to_dict(), preset.model_config))),
             "- Architecture:"] + ["  - {}".format(line) for line in arch] + [""]
    if quality is None:
        lines += ["**No measured results**: this preset has not been trained and evaluated here. Train and evaluate "
                  "it with `python -m zoo.train {0} && python -m benchmarks.quality {0}`.".format(preset.name), ""]
    else:
        m, red, ret = quality["run_metrics"], quality["reduction"], quality["retrieval"]
        timing = quality.get("timing") or {}
        lines += [
            "Test metrics ({} test images of the real split; trained {} epoch{}{}):".format(
                "{:,}".format(get_info(preset.dataset).num_test), quality["training"]["epochs"],
                "" if quality["training"]["epochs"] == 1 else "s",
                # A training time means little without the machine's load, so it is shown only with it.
                "" if "load_average" not in timing else
                ", {:.0f} s/epoch, {:,.0f} images/s, load average {:.1f}".format(
                    timing["seconds_per_epoch"], timing["train_images_per_second"], timing["load_average"])), "",
            "| metric | value |", "| --- | ---: |"]
        for key in ("sq_error_per_image", "mse_per_pixel", "bce_per_pixel", "psnr_db", "noisy_psnr_db",
                    "denoised_psnr_db"):
            if key in m:
                lines.append("| {} | {:.4g} |".format(key, m[key]))
        lines += ["", health_text(m.get("health"))]
        lines += ["", "Against the classics (same split, same code size):", "",
                  "- Squared error per image {:.2f} vs PCA-{} {:.2f} (ratio {:.2f}).".format(
                      red["sq_error_per_image"], latent, red["pca_sq_error_per_image"], red["ratio_to_pca"])]
        if "bce_per_image" in red:
            lines.append("- Summed BCE per image {:.1f} nats vs PCA-{} {:.1f}, mean image {:.1f} (floor for these "
                         "grey-level images {:.1f}); PSNR {:.2f} dB vs PCA {:.2f} dB.".format(
                             red["bce_per_image"], latent, red["pca_bce_per_image"], red["mean_image_bce_per_image"],
                             red["bce_floor_per_image"], red["psnr_db"], red["pca_psnr_db"]))
        lines += ["- Retrieval precision@10{}: codes {:.3f}, raw pixels {:.3f}, PCA-{} codes {:.3f}.".format(
                      " against the {} training images".format(ret["database"].split("(")[-1].rstrip(")"))
                      if "database" in ret else "",
                      ret["precision_at_10"], ret["pixels_precision_at_10"], latent, ret["pca_precision_at_10"])]
        probe = quality.get("probe")
        if probe:
            def few(kind):
                f = probe[kind]["few_labels"]
                return "{:.3f} ± {:.3f}".format(f["mean"], f["std"])

            lines.append("- Linear probe (logistic regression on frozen codes), test accuracy with 550 labels (5 "
                         "draws, mean ± std): codes {}, pixels {}, PCA {}; with all 60,000 labels: {:.3f}, {:.3f}, "
                         "{:.3f}.".format(few("codes"), few("pixels"), few("pca"),
                                          *(probe[k]["all_labels"]["accuracy"] for k in ("codes", "pixels", "pca"))))
        seeds = quality.get("seeds") or {}
        if seeds.get("n", 1) > 1:
            spread = seeds["metrics"]["sq_error_per_image"]
            lines.append("- Over {} seeds ({}): squared error per image {:.2f} ± {:.2f} (min {:.2f}, max {:.2f}); "
                         "the figures above are seed {}'s, {}.".format(
                             seeds["n"], ", ".join(str(x) for x in seeds["seeds"]), spread["mean"], spread["std"],
                             spread["min"], spread["max"], quality.get("training", {}).get("seed"),
                             "the released run" if released else "the preset's own run (runs/{})".format(preset.name)))
        lines += ["- Denoising PSNR, noisy → output: " + "; ".join(
                      "{} {:.1f} → {:.1f} dB".format(d["label"], d["noisy_psnr_db"], d["output_psnr_db"])
                      for d in quality["denoising"]) + ".", ""]
        figures = [(label, Path(results_dir) / "{}_{}.png".format(kind, preset.name))
                   for kind, label in (("latent", "test codes by class"), ("samples", "samples from the prior"),
                                       ("interpolation", "latent interpolation"), ("throughput", "throughput"))]
        shown = ["[{}]({})".format(label, path.as_posix()) for label, path in figures if path.exists()]
        if shown:
            lines += ["Figures: " + ", ".join(shown) + ".", ""]
    lines += search_lines(preset.name, search) + [""]
    lines += throughput_lines(preset.name, throughput) + [""]
    lines += release_lines(preset.name, release_dir) + [""]
    lines += ["Intended use: {} Known limits: {}".format(use, limits), "", "How to get and run it:", ""]
    if released:
        lines += ["```python",
                  "import zoo",
                  "model = zoo.from_preset(\"{}\")                 # Keras, released weights (sha256-checked)".format(
                      preset.name),
                  "from export.runtime import Runtime",
                  "codes = Runtime.from_preset(\"{}\").encode(images)  # numpy + onnxruntime only".format(
                      preset.name),
                  "```", "", "```bash",
                  "python -m zoo.weights fetch {} --format onnx   # the bundled release; --source or ZOO_WEIGHTS_URL "
                  "for a mirror".format(preset.name),
                  "python -m zoo.train {}                         # or train it yourself".format(preset.name),
                  "```", ""]
    else:  # no weights to fetch: say how to make them
        lines += ["```bash",
                  "python -m zoo.train {}          # no released weights: train it (runs/{}/)".format(
                      preset.name, preset.name),
                  "python -m export runs/{}        # SavedModel and ONNX, with the parity check".format(preset.name),
                  "```", "", "```python",
                  "import keras, zoo",
                  "model = keras.models.load_model(\"runs/{}/model.keras\")".format(preset.name),
                  "from export.runtime import Runtime",
                  "codes = Runtime(\"runs/{}/export\").encode(images)  # numpy + onnxruntime only".format(preset.name),
                  "```", ""]
    return lines


def render(results_dir=RESULTS_DIR, release_dir=None):
    """MODEL_CARDS.md's text; `release_dir` defaults to the newest bundled release (zoo.weights.bundled_release)."""
    from zoo import weights

    release_dir = release_dir if release_dir is not None else weights.bundled_release()
    from zoo.presets import PRESETS, list_presets

    results_dir = Path(results_dir)
    quality = {r["preset"]: r for r in (_load_json(results_dir / "quality.json") or {}).get("results", [])}
    throughput = _load_json(results_dir / "throughput.json")
    search = _load_json(results_dir / "search.json")
    measured = [n for n in list_presets() if n in quality]
    lines = ["# Model cards", "",
             "Generated by `python -m benchmarks.cards` from run metrics, `benchmarks/results/quality.json`, "
             "`benchmarks/results/throughput.json` and release manifests. Do not edit by hand.", "",
             "Measured presets: {}. Presets without measurements say so.".format(", ".join(measured) or "none"), "",
             "| preset | parameters | sq. error / image | vs PCA | P@10 | encoder images/s (batch 1024) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    body = []
    for name in list_presets():
        preset = PRESETS[name]
        q = quality.get(name)
        enc = next((r for r in (throughput or {}).get("rows", []) if r["model"] == name and r["part"] == "encoder"
                    and r["batch_size"] == 1024), None)
        arch = architecture(preset, q and q.get("model_config"))
        section = card(preset, q, throughput, release_dir, results_dir, arch, search)
        lines.append("| [{0}](#{0}) | {1} | {2} | {3} | {4} | {5} |".format(
            name, "{:,}".format(arch[1]),
            _fmt(q and q["reduction"]["sq_error_per_image"], "{:.2f}"),
            _fmt(q and q["reduction"]["ratio_to_pca"], "{:.2f}x"),
            _fmt(q and q["retrieval"]["precision_at_10"], "{:.3f}"),
            _fmt(enc and enc["images_per_s"], "{:,.0f}")))
        body += section
    return "\n".join(lines + [""] + body)


def main(argv=None):
    from zoo.cli import make_parser

    parser = make_parser("benchmarks.cards", __doc__.split("\n\n")[0].strip(), [
        "                                       # MODEL_CARDS.md from benchmarks/results/",
        "--results benchmarks/results --out /tmp/MODEL_CARDS.md"])
    parser.add_argument("--results", default=str(RESULTS_DIR))
    parser.add_argument("--release", help="release folder whose manifests the cards list (default: the newest "
                                          "bundled one, releases/<version>/)")
    parser.add_argument("--out", default=str(OUTPUT))
    args = parser.parse_args(argv)
    from zoo import fileio

    fileio.write_text(args.out, render(args.results, args.release))
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
