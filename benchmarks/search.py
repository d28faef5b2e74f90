"""Similar-image search measured on the real Fashion-MNIST split: test images query the 60,000 training
images. Precision@10 and mAP@100 for raw pixels, PCA, each exported model's float codes and its binary codes
(16/32/64 bits); query latency, queries/s and bytes per item of every index kind at 60k items and at 1M
(synthetic codes); a figure of example queries.

`python -m benchmarks.search --runs runs --out benchmarks/results/` writes search.{json,md} and
search_examples.png. Every index is a FAISS index built by zoo.search.
"""

import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from zoo import schema, search

BITS = (16, 32, 64)
DATASET = "fashion_mnist"


def precision_and_map(neighbour_labels, query_labels, k_precision=10, k_map=100):
    """P@k and mAP@k: AP over the top k divided by min(k, relevant items in the database). Other papers divide
    by the relevant items found in the top k; the two differ, so compare with care."""
    relevant = neighbour_labels == query_labels[:, None]
    p_at = relevant[:, :k_precision].mean()
    top = relevant[:, :k_map]
    hits = np.cumsum(top, axis=1)
    precision_at = hits / np.arange(1, k_map + 1)
    ap = (precision_at * top).sum(axis=1) / k_map  # every class has 6,000 training images: >= k_map relevant
    return float(p_at), float(ap.mean())


def evaluate(index, binarizer, db_labels, queries, query_labels, k=100):
    _, ids = search.search(index, binarizer, queries, k)
    return precision_and_map(db_labels[ids], query_labels)


def index_bytes_per_item(index, n):
    faiss = search._faiss()
    data = faiss.serialize_index_binary(index) if isinstance(index, faiss.IndexBinary) else faiss.serialize_index(index)
    return len(data) / n


def latency(index, binarizer, queries, k=10, single=200, batch=1000):
    """(median ms for one query at a time, queries/s for a batch of `batch`)."""
    one = []
    for q in queries[:single]:
        start = time.perf_counter()
        search.search(index, binarizer, q[None], k)
        one.append(time.perf_counter() - start)
    start = time.perf_counter()
    search.search(index, binarizer, queries[:batch], k)
    return 1000 * float(np.median(one)), batch / (time.perf_counter() - start)


def models_in(runs):
    found = {}
    for run in sorted(Path(runs).glob("*_" + DATASET)):
        encoder = run / schema.EXPORT_DIR / schema.ONNX_FILES["encoder"]
        if encoder.is_file() and (run / schema.METRICS).is_file():
            found[run.name] = encoder
    return found


def measure(runs="runs", n_queries=10000, scale=1_000_000, examples_out=None):
    from sklearn.decomposition import PCA

    from export.runtime import Runtime
    from zoo import data

    train = data.load_arrays(DATASET, "train")
    test = data.load_arrays(DATASET, "test", limit=n_queries)
    x_train, x_test = data.normalize(train.images), data.normalize(test.images)
    db_labels, query_labels = train.labels, test.labels
    rows = []

    def add(name, db, queries, kind="flat", bits=None, binarize=None):
        index, binarizer = search.make_index(db, kind, bits or 32, binarize)
        p10, map100 = evaluate(index, binarizer, db_labels, queries, query_labels)
        rows.append({"representation": name, "dims": int(db.shape[1]), "index": kind,
                     "bits": binarizer.bits if binarizer else None, "binarize": binarizer.method if binarizer else None,
                     "precision_at_10": p10, "map_at_100": map100,
                     "bytes_per_item": index_bytes_per_item(index, len(db))})
        print("{:<32} {:<7} {:>4}  P@10 {:.3f}  mAP@100 {:.3f}".format(
            name, kind, rows[-1]["bits"] or "", p10, map100), file=sys.stderr, flush=True)
        return index, binarizer

    pixels_db, pixels_q = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
    add("raw pixels", pixels_db, pixels_q)
    pca = PCA(30, random_state=0).fit(pixels_db)
    pca_db, pca_q = pca.transform(pixels_db).astype(np.float32), pca.transform(pixels_q).astype(np.float32)
    add("PCA-30", pca_db, pca_q)
    for bits in BITS:
        add("PCA-30", pca_db, pca_q, "binary", bits)

    codes, indexed_runs = {}, {}
    for preset, encoder in models_in(runs).items():
        run_dir = encoder.parent.parent
        indexed_runs[preset] = {
            "run_dir": str(run_dir),
            "sq_error_per_image": schema.RunMetrics.load(run_dir).metrics["sq_error_per_image"],
            "epochs": schema.RunConfig.load(run_dir).epochs}
        rt = Runtime(encoder)
        db, queries = rt.encode(x_train).astype(np.float32), rt.encode(x_test).astype(np.float32)
        codes[preset] = (db, queries, encoder)
        add(preset, db, queries)
        for bits in BITS:
            add(preset, db, queries, "binary", bits)
        add(preset, db, queries, "binary", 32, "lsh")  # the classic baseline at the headline length
        if float(db.min()) >= 0 and float(db.max()) <= 1 and db.shape[1] % 8 == 0:
            add(preset, db, queries, "binary", binarize="threshold")

    float_rows = [r for r in rows if r["index"] == "flat" and r["representation"] in codes]
    best = max(float_rows, key=lambda r: r["precision_at_10"])["representation"] if float_rows else None
    speed = []
    if best:
        db, queries, encoder = codes[best]
        rng = np.random.default_rng(0)
        synthetic = rng.normal(size=(scale, db.shape[1])).astype(np.float32) * db.std(0) + db.mean(0)
        for items, base in ((len(db), db), (scale, synthetic)):
            for kind, bits in (("flat", None), ("hnsw", None), ("binary", 32), ("binary-hnsw", 32)):
                start = time.perf_counter()
                index, binarizer = search.make_index(base, kind, bits or 32)
                build_s = time.perf_counter() - start
                ms, qps = latency(index, binarizer, queries)
                speed.append({"items": items, "codes": "{} (real)".format(best) if items == len(db) else
                              "synthetic, {}-d".format(db.shape[1]), "index": kind, "bits": bits,
                              "ms_per_query": ms, "queries_per_second": qps, "build_seconds": build_s,
                              "bytes_per_item": index_bytes_per_item(index, items)})
                print("{:>8} items {:<12} {:.3f} ms/query, {:,.0f} q/s".format(items, kind, ms, qps),
                      file=sys.stderr, flush=True)
                del index
        if examples_out:
            example_figure(examples_out, encoder, test.labels, best)
    return {"dataset": DATASET, "database": "train split ({:,} images)".format(len(x_train)),
            "queries": "test split, first {:,} images".format(len(x_test)),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "faiss": search._faiss().__version__, "threads": search._faiss().omp_get_max_threads()},
            "best_float_code": best, "runs": indexed_runs, "rows": rows, "speed": speed,
            "definitions": {"precision_at_10": "share of the 10 nearest training images with the query's class",
                            "map_at_100": "mean over queries of the average precision over the 100 nearest, "
                                          "divided by 100 (every class has 6,000 training images)",
                            "distance": "squared L2 for float codes, Hamming for binary codes"}}


def example_figure(path, encoder, test_labels, best):
    """Six test images (one per class for the first six classes) and their ten nearest training images."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "index"
        search.build("{}:train".format(DATASET), encoder.parent, folder, verbose=False)
        index = search.Index(folder)
        picks = [int(np.flatnonzero(test_labels == c)[0]) for c in range(6)]
        results, images = index.query(["{}:test:{}".format(DATASET, i) for i in picks], k=10)
        search.picture(path, index, results, images, title="{}: test queries and their 10 nearest training images "
                                                            "(exact L2; squared distances)".format(best))


def to_markdown(result):
    lines = ["# Similar-image search on Fashion-MNIST", "",
             "Queries: {}; database: {}. FAISS {} on {} CPUs ({} threads). {}".format(
                 result["queries"], result["database"], result["machine"]["faiss"], result["machine"]["cpus"],
                 result["machine"]["threads"], "Distances: {}.".format(result["definitions"]["distance"])), "",
             "| representation | dims | index | bits | binarized by | precision@10 | mAP@100 | bytes/item |",
             "| --- | ---: | --- | ---: | --- | ---: | ---: | ---: |"]
    for r in result["rows"]:
        lines.append("| {} | {} | {} | {} | {} | {:.3f} | {:.3f} | {:,.1f} |".format(
            r["representation"], r["dims"], r["index"], r["bits"] or "", r["binarize"] or "", r["precision_at_10"],
            r["map_at_100"], r["bytes_per_item"]))
    if result.get("runs"):
        lines += ["", "The models' codes come from these runs (their own test sq. error per image; the model cards' "
                      "quality figures may come from other runs of the same recipes):", ""]
        lines += ["- {}: {} epochs, sq. error {:.2f}".format(preset, run["epochs"], run["sq_error_per_image"])
                  for preset, run in sorted(result["runs"].items())]
    if result["speed"]:
        lines += ["", "## Query speed ({})".format(result["best_float_code"]), "",
                  "One query at a time (median of 200) and a batch of 1,000 queries, k = 10; 32-bit binary codes.",
                  "", "| items | codes | index | ms/query | queries/s (batch) | build (s) | bytes/item |",
                  "| ---: | --- | --- | ---: | ---: | ---: | ---: |"]
        for s in result["speed"]:
            lines.append("| {:,} | {} | {}{} | {:.3f} | {:,.0f} | {:.1f} | {:,.1f} |".format(
                s["items"], s["codes"], s["index"], " ({} bits)".format(s["bits"]) if s["bits"] else "",
                s["ms_per_query"], s["queries_per_second"], s["build_seconds"], s["bytes_per_item"]))
    lines += ["", "precision@10: {}. mAP@100: {}.".format(result["definitions"]["precision_at_10"],
                                                          result["definitions"]["map_at_100"]),
              "Binary codes: ITQ (Gong & Lazebnik 2011: PCA down to the bits, or a random rotation up to them, then "
              "the learned rotation), LSH (random rotation, median thresholds) as the baseline, or one bit per "
              "code unit (threshold: at 0.5 for a nearly binary code, else at each unit's median)."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="runs", help="folder of run dirs with export/encoder.onnx")
    parser.add_argument("--queries", type=int, default=10000)
    parser.add_argument("--scale", type=int, default=1_000_000, help="items in the synthetic speed test")
    parser.add_argument("--out", help="folder for search.json, search.md and search_examples.png")
    args = parser.parse_args(argv)
    examples = Path(args.out) / "search_examples.png" if args.out else None
    result = measure(args.runs, args.queries, args.scale, examples)
    text = to_markdown(result)
    print(text)
    if args.out:
        from zoo import fileio

        fileio.write_json(Path(args.out) / "search.json", result)
        fileio.write_text(Path(args.out) / "search.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
