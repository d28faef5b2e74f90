"""Model quality against the classics on the real test split, in the units papers report: reconstruction (summed
BCE, squared error, PSNR per image) against PCA at the same code size and the mean image, retrieval precision@10
against the full training set, a linear probe with 550 and with all labels, denoising PSNR, latent figures;
mean and spread over seeds, and a section at the common code size of 20.

`python -m benchmarks.quality --all-trained` reads runs/ and writes benchmarks/results/quality.{json,csv,md}.
Run dirs it reads (RUNS is --runs-dir):
    RUNS/<preset>/                          the preset as trained (its recipe's seed, 1337)
    RUNS/seeds/<preset>/seed<N>/            the same recipe with --seed N (python -m zoo.train PRESET --seed N)
    RUNS/latent20/<preset>/                 trained with --set latent_dim=20, compared with PCA-20
    RUNS/latent20/seeds/<preset>/seed<N>/   both
"""

import sys
import time
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA

from benchmarks.quality_measures import (PROBE_PER_CLASS, flat, precision_at_k, probe, reconstruction_measures,
                                         spread)
# The tables live in quality_report; these names stay importable from here, where they were.
from benchmarks.quality_report import (CONTROLS, DENOISING_CONDITIONS, control_recipe_differences,  # noqa: F401
                                       markdown)
from zoo import schema
from zoo.errors import ZooError
from zoo.metrics import psnr_db, sq_error_per_image

NOISE_SEED = 2024
RESULTS_DIR = Path(schema.RESULTS_DIR)
RUNS_DIR = Path(schema.RUNS_DIR)
SEEDS_DIR = "seeds"  # RUNS/seeds/<preset>/seed<N>/
SEED_PREFIX = "seed"
COMMON_LATENT_DIM = 20
COMMON_DIR = "latent{}".format(COMMON_LATENT_DIM)  # RUNS/latent20/<preset>/
#: The numbers averaged over seeds: name in seeds.metrics -> where it lies in a result.
SEED_METRICS = (
    ("sq_error_per_image", ("reduction", "sq_error_per_image")),
    ("bce_per_image", ("reduction", "bce_per_image")),
    ("psnr_db", ("reduction", "psnr_db")),
    ("ratio_to_pca", ("reduction", "ratio_to_pca")),
    ("precision_at_10", ("retrieval", "precision_at_10")),
    ("probe_few_labels", ("probe", "codes", "few_labels", "mean")),
    ("probe_all_labels", ("probe", "codes", "all_labels", "accuracy")),
)
#: zoo.metrics' code health check, (model, training images) -> counts of unusable code units; recorded under
#: "health" where zoo.metrics has it.
HEALTH_CHECK = "model_code_health"


def pca_baseline(train_images, test_images, n_components, seed=0):
    """(fitted PCA, its test sq_error_per_image) at `n_components`."""
    pca = PCA(n_components=n_components, random_state=seed).fit(flat(train_images))
    recon = pca.inverse_transform(pca.transform(flat(test_images)))
    return pca, sq_error_per_image(test_images, recon)


def _timed(what, fn, *args, **kwargs):
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    print("  {}: {:.0f} s".format(what, time.perf_counter() - start), flush=True)
    return value


# --- evaluating trained runs ---------------------------------------------------------------------
class Evaluation:
    """Test and train arrays of one dataset with the baselines that depend only on the data.

    PCA and the mean image are fitted on the training slice the models trained on (without the validation
    tail); retrieval searches, and the probe learns from, the whole training split."""

    def __init__(self, dataset, data_dir=None, val_fraction=0.1, probe_per_class=PROBE_PER_CLASS):
        from zoo import data

        train = data.load_arrays(dataset, "train", data_dir=data_dir)
        test = data.load_arrays(dataset, "test", data_dir=data_dir)
        self.n_fit = len(train.images) - int(round(len(train.images) * val_fraction))
        self.dataset = dataset
        self.source = test.source
        self.all_x, self.all_y = data.normalize(train.images), train.labels
        self.train_x, self.train_y = self.all_x[:self.n_fit], self.all_y[:self.n_fit]
        self.test_x, self.test_y = data.normalize(test.images), test.labels
        self.probe_per_class = probe_per_class
        self.database = "train ({:,})".format(len(self.all_x))
        self._pca, self._pixels, self._mean_image = {}, None, None

    def probe(self, train_codes, test_codes):
        return probe(train_codes, self.all_y, self.n_fit, test_codes, self.test_y, per_class=self.probe_per_class)

    def precision(self, train_codes, test_codes):
        return precision_at_k(train_codes, self.all_y, test_codes, self.test_y)

    def mean_image(self):
        if self._mean_image is None:
            mean = flat(self.train_x).mean(axis=0)
            self._mean_image = reconstruction_measures(self.test_x, np.broadcast_to(mean, flat(self.test_x).shape))
            # Grey-level targets: even x_hat = x costs the pixels' own entropy, the floor of the BCE.
            self._mean_image["bce_floor_per_image"] = reconstruction_measures(self.test_x, self.test_x)["bce_per_image"]
        return self._mean_image

    def pca(self, k):
        if k not in self._pca:
            print("  PCA-{} baselines".format(k), flush=True)
            pca = PCA(n_components=k, random_state=0).fit(flat(self.train_x))
            test_codes, train_codes = pca.transform(flat(self.test_x)), pca.transform(flat(self.all_x))
            self._pca[k] = {
                # The PCA reconstruction as it is for squared error and PSNR; BCE clips it into [0, 1].
                **reconstruction_measures(self.test_x, pca.inverse_transform(test_codes)),
                "precision_at_10": _timed("PCA-{} precision@10".format(k), self.precision, train_codes, test_codes),
                "probe": _timed("PCA-{} probe".format(k), self.probe, train_codes, test_codes)}
        return self._pca[k]

    def pixels(self):
        if self._pixels is None:
            self._pixels = {"precision_at_10": _timed("pixels precision@10", self.precision, self.all_x, self.test_x),
                            "probe": _timed("pixels probe", self.probe, self.all_x, self.test_x)}
        return self._pixels

    def pixel_precision(self):
        return self.pixels()["precision_at_10"]


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


def health(model, images):
    """zoo.metrics' code health of `model` on training `images` (dead, saturated or inactive code units), or None
    where zoo.metrics has no such check (HEALTH_CHECK names the function this looks for)."""
    from zoo import metrics

    check = getattr(metrics, HEALTH_CHECK, None)
    return None if check is None else check(model, images)


def evaluate_run(run_dir, evaluation, out_dir, figures=True):
    """The result of one run dir: its recorded recipe and metrics, and every measure against the baselines."""
    import keras

    import zoo  # noqa: F401  (registers the classes that model.keras names)
    from zoo import data

    from zoo.presets import as_now

    config = schema.RunConfig.load(run_dir)
    run_metrics = schema.RunMetrics.load(run_dir)
    model = keras.models.load_model(run_dir / schema.MODEL)
    description, overrides = as_now(config)  # a --set value the preset adopted since is no longer a change
    preset, k = config.preset, int(config.latent_dim)
    print("evaluating {} ({}, code size {}, seed {})".format(preset, run_dir, k, config.training.get("seed")),
          flush=True)
    test_codes = np.asarray(model.encode(evaluation.test_x))
    train_codes = np.asarray(model.encode(evaluation.all_x))
    recon = np.asarray(model.reconstruct(evaluation.test_x))
    pca, pixels, mean = evaluation.pca(k), evaluation.pixels(), evaluation.mean_image()
    own = reconstruction_measures(evaluation.test_x, recon)
    result = {
        "preset": preset,
        "model": config.model,
        "dataset": config.dataset,
        "latent_dim": k,
        "parameters": config.parameters,
        # What the run recorded, so that the cards describe this run and not the preset's defaults.
        "training": config.training,
        "model_config": config.model_config,
        "overrides": overrides,
        "run_metrics": run_metrics.metrics,
        "timing": run_metrics.timing,
        "versions": config.versions,
        "description": description,
        "run_dir": str(run_dir),
        "reduction": {
            "sq_error_per_image": own["sq_error_per_image"], "pca_sq_error_per_image": pca["sq_error_per_image"],
            "ratio_to_pca": own["sq_error_per_image"] / pca["sq_error_per_image"],
            "bce_per_image": own["bce_per_image"], "pca_bce_per_image": pca["bce_per_image"],
            "psnr_db": own["psnr_db"], "pca_psnr_db": pca["psnr_db"],
            "mean_image_sq_error_per_image": mean["sq_error_per_image"],
            "mean_image_bce_per_image": mean["bce_per_image"], "mean_image_psnr_db": mean["psnr_db"],
            "bce_floor_per_image": mean["bce_floor_per_image"],
            "pca_fit": "first {:,} training images (the models' training slice)".format(evaluation.n_fit)},
        "retrieval": {"precision_at_10": _timed("precision@10", evaluation.precision, train_codes, test_codes),
                      "pixels_precision_at_10": pixels["precision_at_10"],
                      "pca_precision_at_10": pca["precision_at_10"],
                      "database": evaluation.database, "queries": "test ({:,})".format(len(test_codes))},
        "probe": {"codes": _timed("probe", evaluation.probe, train_codes, test_codes),
                  "pixels": pixels["probe"], "pca": pca["probe"]},
        "denoising": denoising_rows(model, evaluation.test_x),
    }
    verdict = health(model, evaluation.train_x)
    if verdict is not None:
        result["health"] = verdict
    if figures:
        info = data.get_info(config.dataset)
        latent_figure(out_dir / "latent_{}.png".format(preset), test_codes, evaluation.test_y, info.class_names,
                      "{}: test codes ({}-d), first two principal components".format(preset, k))
        if hasattr(model, "sample"):
            vae_figures(out_dir, preset, model, evaluation.test_x)
    return result


# --- several seeds ---------------------------------------------------------------------------------------------
def _complete(run_dir):
    return (Path(run_dir) / schema.METRICS).is_file()


def seed_run_dirs(root, preset):
    """The finished run dirs of `preset` under `root`: root/<preset>/ first, then root/seeds/<preset>/seed<N>/ by N.
    None when root/<preset>/ is not a finished run (seeds alone have no run to describe)."""
    root = Path(root)
    if not _complete(root / preset):
        return []
    extra = []
    for d in (root / SEEDS_DIR / preset).glob(SEED_PREFIX + "*"):
        if d.name[len(SEED_PREFIX):].isdigit():
            if _complete(d):
                extra.append(d)
            else:
                print("skipping {}: not a finished run (no {})".format(d, schema.METRICS), flush=True)
    return [root / preset] + sorted(extra, key=lambda d: int(d.name[len(SEED_PREFIX):]))


def _recipe(result):
    model = {k: v for k, v in (result.get("model_config") or {}).items() if k not in ("seed", "name")}
    training = {k: v for k, v in (result.get("training") or {}).items()
                if k in ("epochs", "batch_size", "learning_rate", "reconstruction_loss", "limit", "optimizer",
                         "schedule", "weight_decay")}
    if "schedule" not in training:
        training.pop("optimizer", None)  # aezoo 0.1 wrote "Adam, cosine decay to 1%" where 0.2 writes adam + cosine
    return {**{"model " + k: v for k, v in model.items()}, **training}


def recipe_differences(first, other):
    """What differs between two results' recorded recipes other than the seed (keys both recorded)."""
    a, b = _recipe(first), _recipe(other)
    return ["{} {} vs {}".format(k.replace("_", " "), a[k], b[k]) for k in sorted(set(a) & set(b)) if a[k] != b[k]]


def _get(result, path):
    for key in path:
        if not isinstance(result, dict) or key not in result:
            return None
        result = result[key]
    return result


def check_seed_runs(results):
    """Refuse results (or config dicts) of one preset whose recipes differ in more than the seed, or that
    repeat a seed: their spread would not be the spread over seeds."""
    seeds = [_get(r, ("training", "seed")) for r in results]
    repeated = sorted({s for s in seeds if seeds.count(s) > 1}, key=str)
    if repeated:
        raise ZooError("{} has several runs with seed {}: {}; keep one per seed.".format(
            results[0]["preset"], repeated[0], ", ".join(str(r.get("run_dir", "?")) for r in results
                                                          if _get(r, ("training", "seed")) == repeated[0])))
    for r in results[1:]:
        differ = recipe_differences(results[0], r)
        if differ:
            raise ZooError("{} and {} differ in more than the seed ({}); a seed run must repeat the recipe: "
                           "python -m zoo.train {} --seed N --out ...".format(
                               results[0].get("run_dir"), r.get("run_dir"), "; ".join(differ), results[0]["preset"]))
    return seeds


def seed_summary(results):
    """{n, seeds, run_dirs, metrics: {name: spread}} over the results of one recipe trained with several seeds."""
    seeds = check_seed_runs(results)
    metrics = {}
    for name, path in SEED_METRICS:
        values = [_get(r, path) for r in results]
        if all(v is not None for v in values):
            metrics[name] = spread(values)
    few = [_get(r, ("probe", "codes", "few_labels", "values")) for r in results]
    if all(few):
        metrics["probe_few_labels_every_draw"] = spread([a for v in few for a in v])
    for i, (_, _, label) in enumerate(DENOISING_CONDITIONS):
        values = [r["denoising"][i]["gain_db"] for r in results if len(r.get("denoising") or ()) > i]
        if len(values) == len(results):
            metrics["denoising_gain_db[{}]".format(label)] = spread(values)
    return {"n": len(results), "seeds": seeds, "run_dirs": [r.get("run_dir") for r in results],
            "std": "sample standard deviation (n - 1) over seeds; none for one seed", "metrics": metrics}


def evaluate_preset(run_dirs, evaluation, out_dir, figures=True):
    """The result of run_dirs[0] (the preset as trained) with `seeds`: the spread over every run dir given."""
    results = [evaluate_run(d, evaluation, out_dir, figures=figures and i == 0) for i, d in enumerate(run_dirs)]
    main = results[0]
    main["seeds"] = seed_summary(results)
    return main


# --- report ----------------------------------------------------------------------------------------
def write_results(results, out_dir, common=()):
    from zoo import fileio

    from benchmarks.quality_report import csv_text

    out_dir.mkdir(parents=True, exist_ok=True)
    fileio.write_json(out_dir / "quality.json", {"results": list(results),
                                                 "common_code": {"latent_dim": COMMON_LATENT_DIM,
                                                                 "runs": "<runs-dir>/{}/<preset>/".format(COMMON_DIR),
                                                                 "results": list(common)}})
    fileio.write_text(out_dir / "quality.csv", csv_text(results, common))
    fileio.write_text(out_dir / "quality.md", markdown(results, common))


def stale(result):
    """Why `result` no longer describes its preset, or None: the description a run records is written from its
    recipe (with " (changed: ...)" after --set overrides), so a different one means the preset's recipe changed
    since, or the preset is gone."""
    from zoo.presets import PRESETS

    preset = PRESETS.get(result["preset"])
    if preset is None:
        return "there is no preset {} any more".format(result["preset"])
    recorded = result.get("description", "")
    if recorded == preset.description or recorded.startswith(preset.description + " (changed: "):
        return None
    return "it was trained on an earlier recipe ({!r}; the preset is now {!r})".format(recorded, preset.description)


def _merge(old, new, where=""):
    """`new` and the results of `old` for other presets, except those measured on a recipe the preset no longer
    has (each dropped with one line on stderr)."""
    done = {r["preset"] for r in new}
    kept = []
    for result in old:
        if result["preset"] in done:
            continue
        why = stale(result)
        if why:
            print("quality: dropped the earlier result of {}{}: {}. Retrain it to measure it again.".format(
                result["preset"], where, why), file=sys.stderr)
            continue
        kept.append(result)
    return sorted(kept + list(new), key=lambda r: r["preset"])


#: --sizes: which code sizes to evaluate; the other keeps its results in quality.json.
SIZES = ("both", "preset", "common")


def fewer_seeds(old_result, run_dirs):
    """Why evaluating `run_dirs` would lose seeds that `old_result` (the saved result of the same preset and recipe)
    averages, or None: a result over fewer runs must not replace one over more."""
    seeds = (old_result.get("seeds") or {})
    old_dirs = seeds.get("run_dirs") or []
    if len(old_dirs) <= len(run_dirs) or stale(old_result):
        return None
    return "{} run{} found ({}), but the saved result averages {} seeds ({})".format(
        len(run_dirs), "" if len(run_dirs) == 1 else "s", ", ".join(str(d) for d in run_dirs), len(old_dirs),
        ", ".join(str(s) for s in seeds.get("seeds") or old_dirs))


def run(presets=None, runs_dir=RUNS_DIR, out_dir=RESULTS_DIR, data_dir=None, merge=True,
        probe_per_class=PROBE_PER_CLASS, sizes="both"):
    """Evaluate the run dirs of `presets` (all complete runs when None), their seed runs and their latent-20 runs
    (`sizes`: "both", or only the "preset" code size, or only the "common" one); returns the results list of the
    presets' own code size (the common-code-size results are in quality.json). When merging, a preset whose saved
    result averages more seeds than the runs found is refused before anything is evaluated."""
    import json

    if sizes not in SIZES:
        raise ZooError("sizes must be one of {}, not {!r}".format(", ".join(SIZES), sizes))
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    common_dir = runs_dir / COMMON_DIR
    roots = [(root, common_size) for root, common_size in ((runs_dir, False), (common_dir, True))
             if sizes == "both" or common_size == (sizes == "common")]
    if presets is None:
        presets = sorted({p.name for root, _ in roots for p in root.glob("*") if _complete(p)})
        if not presets:
            raise ZooError("No complete run dirs in {}. Train some first: python -m zoo.train PRESET".format(
                " or ".join(str(root) for root, _ in roots)))
    missing = [p for p in presets if not any(_complete(root / p) for root, _ in roots)]
    if missing:
        raise ZooError("No complete run for {} in {} (a complete run has metrics.json). Train it first: "
                       "python -m zoo.train {}{}".format(", ".join(missing), " or ".join(str(r) for r, _ in roots),
                                                         missing[0], "" if sizes != "common" else
                                                         " --set latent_dim={} --out {}".format(
                                                             COMMON_LATENT_DIM, common_dir / missing[0])))
    old = {}
    if merge and (out_dir / "quality.json").exists():
        old = json.loads((out_dir / "quality.json").read_text())
    saved = {False: {r["preset"]: r for r in old.get("results", [])},
             True: {r["preset"]: r for r in (old.get("common_code") or {}).get("results", [])}}
    # Every folder is checked before the first (slow) evaluation.
    groups = []
    for root, common_size in roots:
        for preset in presets:
            run_dirs = seed_run_dirs(root, preset)
            if not run_dirs:
                continue
            configs = [dict(schema.RunConfig.load(d).to_dict(), run_dir=str(d)) for d in run_dirs]
            check_seed_runs(configs)
            config = schema.RunConfig.load(run_dirs[0])
            if common_size and int(config.latent_dim) != COMMON_LATENT_DIM:
                raise ZooError("{} has code size {}, not {}: train it with python -m zoo.train {} --set "
                               "latent_dim={} --out {}".format(run_dirs[0], config.latent_dim, COMMON_LATENT_DIM,
                                                               preset, COMMON_LATENT_DIM, run_dirs[0]))
            why = saved[common_size].get(preset) and fewer_seeds(saved[common_size][preset], run_dirs)
            if why:
                other = "preset" if common_size else "common"
                raise ZooError("{}{}: {}; evaluating would replace it with fewer. Put the other seed runs back "
                               "under {}/{}/{}/seed<N>/, or evaluate only the other code size (--sizes {}), or "
                               "write to another folder (--out).".format(
                                   preset, " at code size {}".format(COMMON_LATENT_DIM) if common_size else "", why,
                                   root, SEEDS_DIR, preset, other))
            groups.append((common_size, run_dirs, config.dataset))
    out_dir.mkdir(parents=True, exist_ok=True)
    evaluations, results, common = {}, [], []
    for common_size, run_dirs, dataset in groups:
        if dataset not in evaluations:
            evaluations[dataset] = Evaluation(dataset, data_dir=data_dir, probe_per_class=probe_per_class)
        (common if common_size else results).append(
            evaluate_preset(run_dirs, evaluations[dataset], out_dir, figures=not common_size))
    if old:
        # Keep earlier results for presets not evaluated this time.
        results = _merge(old.get("results", []), results)
        common = _merge((old.get("common_code") or {}).get("results", []), common,
                        " at code size {}".format(COMMON_LATENT_DIM))
    results.sort(key=lambda r: r["preset"])
    common.sort(key=lambda r: r["preset"])
    write_results(results, out_dir, common)
    return results


def main(argv=None):
    from zoo.cli import make_parser

    parser = make_parser("benchmarks.quality", __doc__.split("\n\n")[0].strip(), [
        "conv_ae_fashion_mnist                  # evaluates runs/conv_ae_fashion_mnist/, merges into the results",
        "--all-trained --out /tmp/quality",
        "dae_fashion_mnist --sizes common        # only runs/latent20/dae_fashion_mnist/ and its seeds",
        "dae_fashion_mnist --runs-dir runs --data-dir /usr/share/datasets/fashion-mnist"])
    parser.add_argument("presets", nargs="*", help="presets whose runs/<preset>/ (and runs/seeds/<preset>/seed<N>/, "
                                                   "runs/latent20/<preset>/) to evaluate")
    parser.add_argument("--all-trained", action="store_true", help="every complete run in --runs-dir")
    parser.add_argument("--runs-dir", default=str(RUNS_DIR))
    parser.add_argument("--out", default=str(RESULTS_DIR))
    parser.add_argument("--data-dir")
    parser.add_argument("--sizes", choices=SIZES, default="both",
                        help="code sizes to evaluate: the preset's, the common size {} (runs/{}/), or both "
                             "(default); the other keeps its saved results".format(COMMON_LATENT_DIM, COMMON_DIR))
    parser.add_argument("--probe-per-class", type=int, default=PROBE_PER_CLASS,
                        help="labelled training images per class of the few-label probe (default %(default)s)")
    args = parser.parse_args(argv)
    if not args.presets and not args.all_trained:
        parser.error("name presets or pass --all-trained")
    try:
        run(None if args.all_trained else args.presets, args.runs_dir, args.out, args.data_dir,
            probe_per_class=args.probe_per_class, sizes=args.sizes)
    except ZooError as exc:
        print("error: {}".format(exc), file=sys.stderr)
        return 2
    print((Path(args.out) / "quality.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
