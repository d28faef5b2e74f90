"""The measures of the quality benchmark on plain arrays, in the units papers report: summed BCE, squared error
and PSNR per image, exact-kNN precision@10, a logistic-regression probe on frozen codes, and spreads over seeds.

Tested on synthetic data with known answers (tests/test_quality.py); benchmarks.quality applies them to runs.
"""

import warnings

import numpy as np

from zoo.errors import ZooError
from zoo.metrics import psnr_db, sq_error_per_image

K = 10
EPS = 1e-7  # the clip of zoo.metrics.bce_per_pixel, so that bce_per_image = pixels x bce_per_pixel

# Linear probe protocol (fixed before looking at any test number).
PROBE_PER_CLASS = 55  # 550 labels on a 10-class dataset
PROBE_DRAWS = (0, 1, 2, 3, 4)  # seeds of the class-balanced draws
PROBE_C_GRID = (0.01, 0.1, 1.0)  # inverse L2 strength on standardized inputs, fitted strong -> weak, warm-started
PROBE_FOLDS = 5  # few labels: C by stratified cross-validation inside the drawn labels
PROBE_MAX_ITER = 5000
PROBE_TOL = 1e-4


def flat(images):
    return np.asarray(images, np.float32).reshape(len(images), -1)


# --- reconstruction -----------------------------------------------------------------------------------------
def bce_per_image(x, x_hat):
    """Binary cross-entropy summed over an image's pixels (nats), mean over images; x_hat clipped to
    [1e-7, 1 - 1e-7] (which also clips a PCA reconstruction into [0, 1])."""
    x = flat(x).astype(np.float64)
    p = np.clip(flat(x_hat).astype(np.float64), EPS, 1 - EPS)
    return float(np.mean(-np.sum(x * np.log(p) + (1 - x) * np.log(1 - p), axis=1)))


def reconstruction_measures(x, x_hat):
    """{sq_error_per_image, bce_per_image, psnr_db} of reconstructions `x_hat` of images `x` in [0, 1]."""
    x, x_hat = flat(x), flat(x_hat)
    return {"sq_error_per_image": sq_error_per_image(x, x_hat), "bce_per_image": bce_per_image(x, x_hat),
            "psnr_db": psnr_db(x, x_hat)}


# --- retrieval ----------------------------------------------------------------------------------------------
def nearest_labels(db_codes, db_labels, query_codes, k=K):
    """Labels of each query's k Euclidean nearest database items, by exhaustive search (FAISS IndexFlatL2:
    every distance is computed, in blocks through BLAS, so 10,000 x 60,000 pixels take seconds)."""
    try:
        import faiss
    except ImportError:
        raise ZooError("The quality benchmark needs FAISS: pip install faiss-cpu (or aezoo[train]).") from None
    db, queries = np.ascontiguousarray(flat(db_codes)), np.ascontiguousarray(flat(query_codes))
    index = faiss.IndexFlatL2(db.shape[1])
    index.add(db)
    _, ids = index.search(queries, k)
    return np.asarray(db_labels)[ids]


def precision_at_k(db_codes, db_labels, query_codes, query_labels, k=K):
    """Mean fraction of each query's k Euclidean nearest database items that share its label."""
    return float(np.mean(nearest_labels(db_codes, db_labels, query_codes, k) == np.asarray(query_labels)[:, None]))


# --- linear probe -------------------------------------------------------------------------------------------
def balanced_draw(labels, per_class, seed):
    """Sorted indices of `per_class` items of every class, drawn without replacement with numpy seed `seed`."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < per_class:
        raise ZooError("The probe draws {} labelled images per class, but class {} has only {} training images; "
                       "lower the number per class.".format(per_class, classes[counts.argmin()], counts.min()))
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
                                   for c in classes]))


def _one_blas_thread():
    # L-BFGS makes many small BLAS calls, and OpenBLAS threads spin while they wait: on a busy 2-core machine a
    # probe ran 10 to 17 times slower per iteration with 2 threads than with 1 (20,000 x 784 pixels).
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _path(x_fit, y_fit, evals, grid=PROBE_C_GRID):
    """Fit standardized logistic regression at each C of `grid`, strongest regularization first, each fit
    warm-started from the previous one (the weakly regularized end is the slow one; the path costs little
    more). Returns {C: (scaler, classifier state, n_iter)}; `evals` are (x, y) scored at every C:
    {C: [accuracy per eval]}."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_fit)
    xs = scaler.transform(x_fit)
    evals = [(scaler.transform(x), y) for x, y in evals]
    clf = LogisticRegression(C=grid[0], max_iter=PROBE_MAX_ITER, tol=PROBE_TOL, warm_start=True)
    fits, scores = {}, {}
    for c in sorted(grid):
        clf.set_params(C=c)
        with warnings.catch_warnings(), _one_blas_thread():
            warnings.simplefilter("ignore", ConvergenceWarning)  # recorded as n_iter == max_iter instead
            clf.fit(xs, y_fit)
        fits[c] = (clf.coef_.copy(), clf.intercept_.copy(), int(np.max(clf.n_iter_)))
        scores[c] = [float(clf.score(x, y)) for x, y in evals]
    return fits, scores


def _best(scores):
    # Ties go to the stronger regularization (the smaller C): sorted ascending, max keeps the first.
    return max(sorted(scores), key=lambda c: scores[c])


def _fit_one(x, y, c, x_test, y_test, start=None):
    """Test accuracy and iterations of the probe at C = `c` fitted on (x, y), warm-started from `start`."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=c, max_iter=PROBE_MAX_ITER, tol=PROBE_TOL, warm_start=start is not None)
    if start is not None:
        clf.coef_, clf.intercept_ = start[0].copy(), start[1].copy()
    with warnings.catch_warnings(), _one_blas_thread():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(scaler.transform(x), y)
    return float(clf.score(scaler.transform(x_test), y_test)), int(np.max(clf.n_iter_))


def spread(values):
    """{n, mean, std (sample, n - 1; None for one value), min, max, values} of a list of numbers."""
    v = np.asarray(values, np.float64)
    return {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else None,
            "min": float(v.min()), "max": float(v.max()), "values": [float(a) for a in v]}


def few_label_probe(train_x, train_y, test_x, test_y, per_class=PROBE_PER_CLASS, draws=PROBE_DRAWS,
                    grid=PROBE_C_GRID):
    """Test accuracy of the probe trained on `per_class` labelled images of every class, for each draw seed.

    C is chosen by stratified cross-validation inside the drawn labels only (a researcher with 550 labels has
    no others to validate on); the probe is then refitted on all of them."""
    from sklearn.model_selection import StratifiedKFold

    train_x, test_x = flat(train_x), flat(test_x)
    accuracies, chosen, iters = [], [], []
    for seed in draws:
        idx = balanced_draw(train_y, per_class, seed)
        x, y = train_x[idx], np.asarray(train_y)[idx]
        folds = StratifiedKFold(n_splits=min(PROBE_FOLDS, per_class), shuffle=True, random_state=seed)
        cv = {c: [] for c in grid}
        for fit, val in folds.split(x, y):
            fits, scores = _path(x[fit], y[fit], [(x[val], y[val])], grid)
            for c in grid:
                cv[c].append(scores[c][0])
                iters.append(fits[c][2])
        c = _best({c: float(np.mean(v)) for c, v in cv.items()})
        accuracy, n_iter = _fit_one(x, y, c, test_x, test_y)
        accuracies.append(accuracy)
        chosen.append(c)
        iters.append(n_iter)
    return dict(spread(accuracies), labels=int(per_class * len(np.unique(train_y))), per_class=int(per_class),
                draws=list(draws), C=chosen, max_iterations=max(iters), converged=max(iters) < PROBE_MAX_ITER)


def all_label_probe(train_x, train_y, n_fit, test_x, test_y, grid=PROBE_C_GRID):
    """Test accuracy of the probe trained on every training label.

    C is chosen on the training split's validation tail (items n_fit:, the images the models did not train on)
    with probes fitted on the first n_fit; the probe at that C is then refitted on all of them."""
    train_x, test_x, train_y = flat(train_x), flat(test_x), np.asarray(train_y)
    fits, scores = _path(train_x[:n_fit], train_y[:n_fit], [(train_x[n_fit:], train_y[n_fit:])], grid)
    c = _best({c: s[0] for c, s in scores.items()})
    accuracy, n_iter = _fit_one(train_x, train_y, c, test_x, test_y, start=fits[c][:2])
    iters = [f[2] for f in fits.values()] + [n_iter]
    return {"labels": int(len(train_y)), "accuracy": accuracy, "C": c,
            "validation_accuracy": {str(c): s[0] for c, s in scores.items()}, "validation_images": len(train_y) - n_fit,
            "max_iterations": max(iters), "converged": max(iters) < PROBE_MAX_ITER}


def probe(train_x, train_y, n_fit, test_x, test_y, per_class=PROBE_PER_CLASS, draws=PROBE_DRAWS, grid=PROBE_C_GRID):
    """{few_labels, all_labels} of one representation (codes, pixels or PCA codes)."""
    return {"few_labels": few_label_probe(train_x, train_y, test_x, test_y, per_class, draws, grid),
            "all_labels": all_label_probe(train_x, train_y, n_fit, test_x, test_y, grid)}
