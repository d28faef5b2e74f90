"""The quality benchmark's tables: quality.md (what a researcher compares with published tables) and quality.csv,
rendered from the results benchmarks.quality computed. Results of older runs of the benchmark lack the newer
measures; their cells say so instead of failing."""

import csv
import io

# Each condition of the denoising table: (kind, level, label).
DENOISING_CONDITIONS = (
    ("gaussian", 0.1, "gaussian 0.1"),
    ("gaussian", 0.3, "gaussian 0.3"),
    ("gaussian", 0.5, "gaussian 0.5"),
    ("masking", 0.25, "masking 25%"),
    ("masking", 0.5, "masking 50%"),
    ("salt_and_pepper", 0.1, "salt & pepper 10%"),
)
# The plain model of the same architecture is the control for each denoising family.
CONTROLS = {"dae": "deep_ae", "conv_dae": "conv_ae"}
RECIPE_KEYS = ("epochs", "batch_size", "learning_rate", "seed", "reconstruction_loss", "limit")
NONE = "–"


def _get(result, *path):
    for key in path:
        if not isinstance(result, dict) or key not in result:
            return None
        result = result[key]
    return result


def _f(value, spec):
    return NONE if value is None else spec.format(value)


def _seed_cell(r, name, spec, *path):
    """The mean over seeds ± their std where there are several, else the run's own value."""
    s = _get(r, "seeds", "metrics", name)
    if s and s["n"] > 1:
        return "{} ± {}".format(spec.format(s["mean"]), spec.format(s["std"]))
    return _f(_get(r, *path), spec)


def _n_seeds(r):
    return _get(r, "seeds", "n") or 1


def _probe_few(p):
    if not p:
        return NONE
    return "{:.3f} ± {:.3f}".format(p["mean"], p["std"]) if p.get("std") is not None else "{:.3f}".format(p["mean"])


def _code_probe_few(r):
    """Few-label probe of the codes: over every draw of every seed where there are several seeds."""
    pooled = _get(r, "seeds", "metrics", "probe_few_labels_every_draw")
    if pooled and _n_seeds(r) > 1:
        return _probe_few(pooled)
    return _probe_few(_get(r, "probe", "codes", "few_labels"))


def _reconstruction_table(results):
    lines = ["| preset | code | seeds | sq. error | PCA | mean image | ratio to PCA | BCE | PCA | mean image | "
             "PSNR dB | PCA | mean image |", "| --- |" + " ---: |" * 12]
    for r in results:
        red = r["reduction"]
        lines.append("| {} | {} | {} | {} | {:.2f} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            r["preset"], r["latent_dim"], _n_seeds(r),
            _seed_cell(r, "sq_error_per_image", "{:.2f}", "reduction", "sq_error_per_image"),
            red["pca_sq_error_per_image"], _f(red.get("mean_image_sq_error_per_image"), "{:.2f}"),
            _seed_cell(r, "ratio_to_pca", "{:.2f}", "reduction", "ratio_to_pca"),
            _seed_cell(r, "bce_per_image", "{:.1f}", "reduction", "bce_per_image"),
            _f(red.get("pca_bce_per_image"), "{:.1f}"), _f(red.get("mean_image_bce_per_image"), "{:.1f}"),
            _seed_cell(r, "psnr_db", "{:.2f}", "reduction", "psnr_db"),
            _f(red.get("pca_psnr_db"), "{:.2f}"), _f(red.get("mean_image_psnr_db"), "{:.2f}")))
    floors = {round(r["reduction"]["bce_floor_per_image"], 1) for r in results
              if r["reduction"].get("bce_floor_per_image") is not None}
    if floors:
        lines += ["", "The targets are grey levels, not binarized pixels: no reconstruction's BCE goes below the "
                      "test images' own entropy, {} nats per image (x_hat = x).".format(
                          ", ".join("{:.1f}".format(f) for f in sorted(floors)))]
    return lines


def _retrieval_table(results):
    lines = ["| preset | code | seeds | P@10 codes | P@10 pixels | P@10 PCA |", "| --- |" + " ---: |" * 5]
    for r in results:
        ret = r["retrieval"]
        lines.append("| {} | {} | {} | {} | {:.3f} | {:.3f} |".format(
            r["preset"], r["latent_dim"], _n_seeds(r),
            _seed_cell(r, "precision_at_10", "{:.3f}", "retrieval", "precision_at_10"),
            ret["pixels_precision_at_10"], ret["pca_precision_at_10"]))
    return lines


def _probe_table(results):
    few = next((_get(r, "probe", "pixels", "few_labels") for r in results if _get(r, "probe")), None)
    labels = "{:,} labels".format(few["labels"]) if few else "few labels"
    lines = ["| preset | code | seeds | codes, {0} | codes, all | pixels, {0} | pixels, all | PCA, {0} | PCA, all |"
             .format(labels), "| --- |" + " ---: |" * 8]
    for r in results:
        p = r.get("probe") or {}
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            r["preset"], r["latent_dim"], _n_seeds(r), _code_probe_few(r),
            _seed_cell(r, "probe_all_labels", "{:.3f}", "probe", "codes", "all_labels", "accuracy"),
            _probe_few(_get(p, "pixels", "few_labels")), _f(_get(p, "pixels", "all_labels", "accuracy"), "{:.3f}"),
            _probe_few(_get(p, "pca", "few_labels")), _f(_get(p, "pca", "all_labels", "accuracy"), "{:.3f}")))
    unconverged = sorted({"{} ({})".format(r["preset"], what) for r in results for what in ("codes", "pixels", "pca")
                          for part in ("few_labels", "all_labels")
                          if _get(r, "probe", what, part, "converged") is False})
    if unconverged:
        lines += ["", "Not converged within the iteration limit: {}.".format(", ".join(unconverged))]
    return lines


def _seed_table(results):
    rows = [r for r in results if _n_seeds(r) > 1]
    if not rows:
        return ["Every preset here was evaluated with one seed: no spread to show (train more with "
                "`python -m zoo.train PRESET --seed N --out runs/seeds/PRESET/seedN`)."]
    lines = ["| preset | seeds | measure | mean | std | min | max |", "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        s = r["seeds"]
        for name, v in s["metrics"].items():
            lines.append("| {} | {} | {} | {:.4g} | {:.2g} | {:.4g} | {:.4g} |".format(
                r["preset"], ", ".join(str(x) for x in s["seeds"]), name, v["mean"], v["std"], v["min"], v["max"]))
    return lines


def _health_cell(r):
    h = r.get("health")
    if not h:
        return None
    if "codebook_size" in h:
        return "{} of {} codebook entries used (perplexity {:.1f})".format(h["codebook_used"], h["codebook_size"],
                                                                         h["perplexity"])
    if "active_dimensions" in h:
        return "{} of {} latent dimensions active".format(h["active_dimensions"], h["units"])
    return "{} of {} units dead or saturated".format(h["dead_or_saturated"], h["units"])


def _health_lines(results):
    cells = [(r["preset"], _health_cell(r)) for r in results]
    if not any(c for _, c in cells):
        return []
    return (["", "### Code health (zoo.metrics, on training images; the preset's own run)", "",
             "| preset | code units |", "| --- | --- |"]
            + ["| {} | {} |".format(p, c or NONE) for p, c in cells])


def _section(results, k_text):
    return (["### Reconstruction, per test image", "",
             "Squared error: sum over the pixels of (x - x_hat)^2; BCE: sum over the pixels of "
             "-[x log x_hat + (1 - x) log(1 - x_hat)] in nats, x_hat clipped to [1e-7, 1 - 1e-7] (which clips PCA's "
             "reconstruction into [0, 1]; its squared error and PSNR are of the reconstruction as it is); PSNR: "
             "10 log10(1 / MSE) per image, mean over images. All means over the test images. PCA: scikit-learn PCA "
             "with {}, fitted on the models' training slice; mean image: every test image reconstructed as the "
             "mean training image (code size 0).".format(k_text), ""]
            + _reconstruction_table(results)
            + ["", "### Retrieval", "",
               "Precision@10: share of each test image's 10 Euclidean nearest neighbours in the database that have "
               "its class; exact search (FAISS IndexFlatL2). Database: {}.".format(
                   next((r["retrieval"].get("database") for r in results if r["retrieval"].get("database")),
                        "not recorded (an older result: the 54,000-image training slice)")), ""]
            + _retrieval_table(results)
            + ["", "### Linear probe: test accuracy of logistic regression on frozen codes", "",
               "Standardized inputs, L2 logistic regression (lbfgs). Few labels: a class-balanced draw of the "
               "training split, mean ± std over the draws (seeds 0-4; for the codes of several seeds, over every "
               "draw of every seed), C from {0.01, 0.1, 1} by 5-fold cross-validation inside the drawn labels. All "
               "labels: C chosen on the validation tail of the training split (probes fitted on the rest), then "
               "refitted on every training label. The test split is used for the accuracy only.", ""]
            + _probe_table(results) + _health_lines(results))


def markdown(results, common=()):
    lines = ["# Quality on the real test split", "",
             "Every number is measured on the test split. Where a preset was trained with several seeds (`seeds` "
             "column), its numbers are the mean ± the standard deviation (n - 1) over the seeds; min and max are "
             "in the spread table. Baselines (PCA, raw pixels, mean image) do not depend on the seed.", "",
             "## At each preset's code size", ""]
    lines += _section(results, "as many components as the code")
    lines += ["", "### Denoising: PSNR (dB) of the noisy input -> of the model's output (the preset's own run)", "",
              "| preset | " + " | ".join(c[2] for c in DENOISING_CONDITIONS) + " |",
              "| --- |" + " ---: |" * len(DENOISING_CONDITIONS)]
    for r in results:
        cells = ["{:.1f} -> {:.1f}".format(d["noisy_psnr_db"], d["output_psnr_db"]) for d in r["denoising"]]
        control = " (control for {})".format(
            ", ".join(k for k, v in CONTROLS.items() if v == r["model"])) if r["model"] in CONTROLS.values() else ""
        lines.append("| {}{} | {} |".format(r["preset"], control, " | ".join(cells)))
    notes = control_recipe_differences(results)
    if notes:
        lines += [""] + ["- " + n for n in notes]
    lines += ["", "### Spread over seeds", ""] + _seed_table(results)
    if common:
        k = common[0]["latent_dim"]
        lines += ["", "## At a common code size of {}".format(k), "",
                  "The same presets trained with `--set latent_dim={}` (runs/latent{}/), so that the families compare "
                  "on equal footing; the baselines are PCA-{}.".format(k, k, k), ""]
        lines += _section(common, "{} components".format(k))
        lines += ["", "### Spread over seeds", ""] + _seed_table(common)
    return "\n".join(lines) + "\n"


def control_recipe_differences(results):
    """One sentence per denoising run whose control was trained with another recipe.

    The presets share architecture and recipe (tests/test_train.py checks them), but runs can still
    differ (--epochs, --limit, an older preset); a reader comparing the two rows must know that.
    """
    by_key = {(r["model"], r["dataset"]): r for r in results}
    notes = []
    for r in results:
        control = by_key.get((CONTROLS.get(r["model"]), r["dataset"]))
        if control is None:
            continue
        differ = ["{} {} vs {}".format(key.replace("_", " "), r["training"].get(key), control["training"].get(key))
                  for key in RECIPE_KEYS if r["training"].get(key) != control["training"].get(key)]
        if differ:
            notes.append("{} and its control {} were trained with different recipes ({}, in that order).".format(
                r["preset"], control["preset"], "; ".join(differ)))
    return notes


CSV_COLUMNS = (
    ("sq_error_per_image", ("reduction", "sq_error_per_image")),
    ("pca_sq_error_per_image", ("reduction", "pca_sq_error_per_image")),
    ("ratio_to_pca", ("reduction", "ratio_to_pca")),
    ("precision_at_10", ("retrieval", "precision_at_10")),
    ("pixels_precision_at_10", ("retrieval", "pixels_precision_at_10")),
    ("pca_precision_at_10", ("retrieval", "pca_precision_at_10")),
)
CSV_NEW_COLUMNS = tuple((name, ("reduction", name)) for name in (
    "bce_per_image", "pca_bce_per_image", "mean_image_bce_per_image", "mean_image_sq_error_per_image", "psnr_db",
    "pca_psnr_db", "mean_image_psnr_db")) + tuple(
    ("{}_probe_{}".format(what, col), ("probe", what) + path) for what in ("codes", "pixels", "pca")
    for col, path in (("few_labels_mean", ("few_labels", "mean")), ("few_labels_std", ("few_labels", "std")),
                      ("all_labels", ("all_labels", "accuracy"))))
SEED_COLUMNS = ("sq_error_per_image", "bce_per_image", "psnr_db", "precision_at_10", "probe_few_labels",
                "probe_all_labels")


def csv_text(results, common=()):
    """One row per preset and code-size section; the first columns are those of earlier versions."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["preset", "latent_dim"] + [c[0] for c in CSV_COLUMNS]
                    + ["psnr_gain_db[{}]".format(c[2]) for c in DENOISING_CONDITIONS]
                    + ["section", "seeds"] + [c[0] for c in CSV_NEW_COLUMNS]
                    + ["{}_seed_{}".format(name, stat) for name in SEED_COLUMNS for stat in ("mean", "std", "min", "max")])
    for section, rows in (("preset_code_size", results), ("common_code_size", common)):
        for r in rows:
            seeds = _get(r, "seeds", "metrics") or {}
            writer.writerow([r["preset"], r["latent_dim"]] + [_get(r, *path) for _, path in CSV_COLUMNS]
                            + [d["gain_db"] for d in r["denoising"]]
                            + [section, _n_seeds(r)] + [_get(r, *path) for _, path in CSV_NEW_COLUMNS]
                            + [(seeds.get(name) or {}).get(stat) for name in SEED_COLUMNS
                               for stat in ("mean", "std", "min", "max")])
    return buf.getvalue()
