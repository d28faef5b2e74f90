"""Model quality against the classics on the real test split: PCA at the same code size, retrieval
precision@10 against pixels and PCA, denoising PSNR, and latent-space figures.

`python -m benchmarks.quality --all-trained` reads runs/<preset>/ and writes benchmarks/results/.
"""

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from zoo.metrics import psnr_db, sq_error_per_image
from zoo import schema

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
NOISE_SEED = 2024
RESULTS_DIR = Path(schema.RESULTS_DIR)
RUNS_DIR = Path(schema.RUNS_DIR)
K = 10


# --- the measures, on plain arrays (tested on synthetic data with known answers) -------------------
def flat(images):
    return np.asarray(images, np.float32).reshape(len(images), -1)


def pca_baseline(train_images, test_images, n_components, seed=0):
    """(fitted PCA, its test sq_error_per_image) at `n_components`."""
    pca = PCA(n_components=n_components, random_state=seed).fit(flat(train_images))
    recon = pca.inverse_transform(pca.transform(flat(test_images)))
    return pca, sq_error_per_image(test_images, recon)


def precision_at_k(db_codes, db_labels, query_codes, query_labels, k=K):
    """Mean fraction of each query's k Euclidean nearest database items that share its label."""
    nn = NearestNeighbors(n_neighbors=k, algorithm="brute", n_jobs=-1).fit(flat(db_codes))
    _, idx = nn.kneighbors(flat(query_codes))
    return float(np.mean(np.asarray(db_labels)[idx] == np.asarray(query_labels)[:, None]))


# --- evaluating trained runs ---------------------------------------------------------------------
class Evaluation:
    """Test and train arrays of one dataset with the baselines that depend only on the data."""

    def __init__(self, dataset, data_dir=None, val_fraction=0.1):
        from zoo import data

        train = data.load_arrays(dataset, "train", data_dir=data_dir)
        test = data.load_arrays(dataset, "test", data_dir=data_dir)
        # Baselines see what the models saw: the training slice without the validation tail.
        n_fit = len(train.images) - int(round(len(train.images) * val_fraction))
        self.dataset = dataset
        self.source = test.source
        self.train_x, self.train_y = data.normalize(train.images[:n_fit]), train.labels[:n_fit]
        self.test_x, self.test_y = data.normalize(test.images), test.labels
        self._pca = {}
        self._pixel_precision = None

    def pca(self, k):
        if k not in self._pca:
            pca, err = pca_baseline(self.train_x, self.test_x, k)
            codes = (pca.transform(flat(self.train_x)), pca.transform(flat(self.test_x)))
            self._pca[k] = {"sq_error_per_image": err,
                            "precision_at_10": precision_at_k(codes[0], self.train_y, codes[1], self.test_y)}
        return self._pca[k]

    def pixel_precision(self):
        if self._pixel_precision is None:
            self._pixel_precision = precision_at_k(self.train_x, self.train_y, self.test_x, self.test_y)
        return self._pixel_precision


def denoising_rows(model, images):
    from zoo.models import apply_noise
    import keras

    rows = []
    for kind, level, label in DENOISING_CONDITIONS:
        noisy = keras.ops.convert_to_numpy(apply_noise(images, kind, level, seed=NOISE_SEED))
        noisy_psnr, out_psnr = psnr_db(images, noisy), psnr_db(images, model.reconstruct(noisy))
        rows.append({"noise": kind, "level": level, "label": label, "noisy_psnr_db": noisy_psnr,
                     "output_psnr_db": out_psnr, "gain_db": out_psnr - noisy_psnr})
    return rows


def latent_figure(path, codes, labels, class_names, title):
    from zoo.fileio import atomic_path
    from zoo.figures import plt

    xy = PCA(n_components=2).fit_transform(codes) if codes.shape[1] > 2 else codes
    fig, ax = plt.subplots(figsize=(6, 5))
    scatter = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab10", s=3, alpha=0.6)
    handles = [plt.Line2D([], [], marker="o", ls="", color=scatter.cmap(scatter.norm(i)), label=name)
               for i, name in enumerate(class_names)]
    ax.legend(handles=handles, fontsize=7, markerscale=1.2, loc="best")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("PC 1 of the codes")
    ax.set_ylabel("PC 2 of the codes")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def vae_figures(out_dir, preset, model, images):
    from zoo import figures

    samples = model.sample(40, seed=NOISE_SEED)
    figures.image_rows(out_dir / "samples_{}.png".format(preset),
                       [("samples" if i == 0 else "", samples[10 * i:10 * (i + 1)]) for i in range(4)],
                       title="{}: decoded draws from the N(0, I) prior".format(preset))
    rows = []
    for a, b in ((0, 1), (2, 3), (4, 5)):
        za, zb = model.encode(images[[a, b]])
        t = np.linspace(0, 1, 10)[:, None]
        rows.append(("{}->{}".format(a, b), model.decode((1 - t) * za + t * zb)))
    figures.image_rows(out_dir / "interpolation_{}.png".format(preset), rows,
                       title="{}: decoding straight lines between two test images' codes".format(preset))


def evaluate_run(run_dir, evaluation, out_dir):
    import keras

    import zoo  # noqa: F401  (registers the classes that model.keras names)
    from zoo import data

    config = schema.RunConfig.load(run_dir)
    run_metrics = schema.RunMetrics.load(run_dir)
    model = keras.models.load_model(run_dir / schema.MODEL)
    preset, k = config.preset, int(config.latent_dim)
    test_codes = model.encode(evaluation.test_x)
    train_codes = model.encode(evaluation.train_x)
    pca = evaluation.pca(k)
    model_err = sq_error_per_image(evaluation.test_x, model.reconstruct(evaluation.test_x))
    result = {
        "preset": preset,
        "model": config.model,
        "dataset": config.dataset,
        "latent_dim": k,
        "parameters": config.parameters,
        # What the run recorded, so that the cards describe this run and not the preset's defaults.
        "training": config.training,
        "model_config": config.model_config,
        "overrides": config.overrides,
        "run_metrics": run_metrics.metrics,
        "timing": run_metrics.timing,
        "versions": config.versions,
        "description": config.description,
        "reduction": {"sq_error_per_image": model_err, "pca_sq_error_per_image": pca["sq_error_per_image"],
                      "ratio_to_pca": model_err / pca["sq_error_per_image"]},
        "retrieval": {"precision_at_10": precision_at_k(train_codes, evaluation.train_y, test_codes,
                                                        evaluation.test_y),
                      "pixels_precision_at_10": evaluation.pixel_precision(),
                      "pca_precision_at_10": pca["precision_at_10"]},
        "denoising": denoising_rows(model, evaluation.test_x),
    }
    info = data.get_info(config.dataset)
    latent_figure(out_dir / "latent_{}.png".format(preset), test_codes, evaluation.test_y, info.class_names,
                  "{}: test codes ({}-d), first two principal components".format(preset, k))
    if hasattr(model, "sample"):
        vae_figures(out_dir, preset, model, evaluation.test_x)
    return result


# --- report ----------------------------------------------------------------------------------------
def markdown(results):
    lines = ["# Quality on the real test split", "",
             "Squared error per image (sum over pixels, mean over test images) against scikit-learn PCA with "
             "as many components as the code; precision@10 of Euclidean nearest neighbours (test queries, "
             "training set as database) by the model's codes, by raw pixels and by PCA codes.", "",
             "| preset | code | sq. error | PCA | ratio | P@10 code | P@10 pixels | P@10 PCA |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        red, ret = r["reduction"], r["retrieval"]
        lines.append("| {} | {} | {:.2f} | {:.2f} | {:.2f} | {:.3f} | {:.3f} | {:.3f} |".format(
            r["preset"], r["latent_dim"], red["sq_error_per_image"], red["pca_sq_error_per_image"],
            red["ratio_to_pca"], ret["precision_at_10"], ret["pixels_precision_at_10"], ret["pca_precision_at_10"]))
    lines += ["", "## Denoising: PSNR (dB) of the noisy input -> of the model's output", "",
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
    return "\n".join(lines) + "\n"


RECIPE_KEYS = ("epochs", "batch_size", "learning_rate", "seed", "reconstruction_loss", "limit")


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


def write_results(results, out_dir):
    from zoo import fileio

    out_dir.mkdir(parents=True, exist_ok=True)
    fileio.write_json(out_dir / "quality.json", {"results": results})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["preset", "latent_dim", "sq_error_per_image", "pca_sq_error_per_image", "ratio_to_pca",
                     "precision_at_10", "pixels_precision_at_10", "pca_precision_at_10"]
                    + ["psnr_gain_db[{}]".format(c[2]) for c in DENOISING_CONDITIONS])
    for r in results:
        red, ret = r["reduction"], r["retrieval"]
        writer.writerow([r["preset"], r["latent_dim"], red["sq_error_per_image"], red["pca_sq_error_per_image"],
                         red["ratio_to_pca"], ret["precision_at_10"], ret["pixels_precision_at_10"],
                         ret["pca_precision_at_10"]] + [d["gain_db"] for d in r["denoising"]])
    fileio.write_text(out_dir / "quality.csv", buf.getvalue())
    fileio.write_text(out_dir / "quality.md", markdown(results))


def run(presets=None, runs_dir=RUNS_DIR, out_dir=RESULTS_DIR, data_dir=None, merge=True):
    """Evaluate the run dirs of `presets` (all complete runs when None); returns the results list."""
    from zoo.errors import ZooError

    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    if presets is None:
        presets = sorted(p.name for p in runs_dir.glob("*") if (p / schema.METRICS).exists())
        if not presets:
            raise ZooError("No complete run dirs in {}. Train some first: python -m zoo.train PRESET".format(runs_dir))
    missing = [p for p in presets if not (runs_dir / p / schema.METRICS).exists()]
    if missing:
        raise ZooError("No complete run for {} in {} (a complete run has metrics.json). Train it first: "
                       "python -m zoo.train {}".format(", ".join(missing), runs_dir, missing[0]))
    out_dir.mkdir(parents=True, exist_ok=True)
    evaluations, results = {}, []
    for preset in presets:
        dataset = schema.RunConfig.load(runs_dir / preset).dataset
        if dataset not in evaluations:
            evaluations[dataset] = Evaluation(dataset, data_dir=data_dir)
        print("evaluating", preset, flush=True)
        results.append(evaluate_run(runs_dir / preset, evaluations[dataset], out_dir))
    if merge and (out_dir / "quality.json").exists():
        # Keep earlier results for presets not evaluated this time.
        done = {r["preset"] for r in results}
        old = json.loads((out_dir / "quality.json").read_text())["results"]
        results = [r for r in old if r["preset"] not in done] + results
    results.sort(key=lambda r: r["preset"])
    write_results(results, out_dir)
    return results


def main(argv=None):
    from zoo.cli import make_parser

    parser = make_parser("benchmarks.quality", __doc__.split("\n\n")[0].strip(), [
        "conv_ae_fashion_mnist                  # evaluates runs/conv_ae_fashion_mnist/, merges into the results",
        "--all-trained --out /tmp/quality",
        "dae_fashion_mnist --runs-dir runs --data-dir /usr/share/datasets/fashion-mnist"])
    parser.add_argument("presets", nargs="*", help="presets whose runs/<preset>/ to evaluate")
    parser.add_argument("--all-trained", action="store_true", help="every complete run in --runs-dir")
    parser.add_argument("--runs-dir", default=str(RUNS_DIR))
    parser.add_argument("--out", default=str(RESULTS_DIR))
    parser.add_argument("--data-dir")
    args = parser.parse_args(argv)
    if not args.presets and not args.all_trained:
        parser.error("name presets or pass --all-trained")
    from zoo.errors import ZooError

    try:
        results = run(None if args.all_trained else args.presets, args.runs_dir, args.out, args.data_dir)
    except ZooError as exc:
        print("error: {}".format(exc), file=sys.stderr)
        return 2
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
