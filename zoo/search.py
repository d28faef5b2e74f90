"""Similar-image search with autoencoder codes (the lecture's retrieval application; Krizhevsky & Hinton 2011
for short binary codes): FAISS indexes of an exported encoder's codes, float (exact L2 or HNSW) or binary
(Hamming: ITQ, random-rotation LSH or a thresholded sigmoid code), and a query command with pictures.

    python -m zoo.search index fashion_mnist:train --model runs/deep_ae_fashion_mnist --out idx/
    python -m zoo.search query idx/ query.png 17 --k 10 --out result.png

Encoding uses export.runtime (numpy and onnxruntime): no TensorFlow. An index records the sha256 of the
encoder that made it, and a query encoded by another model is refused.
"""

import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from zoo import fileio, schema
from zoo.errors import ZooError

KINDS = ("flat", "hnsw", "binary", "binary-hnsw")
BINARIZERS = ("itq", "lsh", "threshold")
INDEX_KIND = "search-index"  # the marker kind of an index folder (zoo.fileio.MARKER)
FORMAT_VERSION = 1
META, ITEMS, CODES, INDEX, TRANSFORM, THRESHOLDS = (
    "meta.json", "items.json", "codes.npy", "index.faiss", "transform-{}.faiss", "thresholds.npy")
HNSW_M = 32
HNSW_EF_SEARCH = 64


class SearchError(ZooError):
    """A bad index, query or model for search."""


def _faiss():
    try:
        import faiss
    except ImportError:
        raise SearchError("Search needs FAISS: pip install faiss-cpu (or install aezoo with its dependencies).") \
            from None
    return faiss


sha256_file = fileio.sha256_file


# --- the model ---------------------------------------------------------------------------------------------


def resolve_model(model):
    """The encoder.onnx of an export dir, a run dir (its export/), a bundle or a preset name (runs/<preset>/export)."""
    path = Path(model)
    encoder = schema.ONNX_FILES["encoder"]
    candidates = [path, path / encoder, path / schema.EXPORT_DIR / encoder,
                  Path(schema.RUNS_DIR) / str(model) / schema.EXPORT_DIR / encoder]
    for candidate in candidates:
        if candidate.is_file() and candidate.suffix == ".onnx":
            return candidate
    raise SearchError("No encoder.onnx for --model {}: give an export dir, a run dir with export/, or a preset "
                      "whose runs/<preset>/export exists (python -m export runs/<preset>).".format(model))


@contextlib.contextmanager
def _runtime_errors():
    """export.runtime's errors (a corrupt encoder, images it cannot take) as one-line SearchErrors."""
    from export import runtime

    try:
        yield
    except runtime.InferenceError as exc:
        raise SearchError(str(exc)) from None


def _runtime(encoder):
    from export import runtime

    with _runtime_errors():
        return runtime.Runtime(encoder)


def _encode(rt, images):
    with _runtime_errors():
        return rt.encode(images).astype(np.float32)


# --- sources: a dataset split or a folder of images ----------------------------------------------------------


def read_source(source, image_shape, limit=None):
    """(images float32 NHWC in [0, 1], items) of "dataset:split" or a folder of PNGs."""
    from export import runtime

    text = str(source)
    name, _, split = text.partition(":")
    if split and not Path(text).exists():
        from zoo import data

        info = data.get_info(name)
        if split not in data.SPLITS:
            raise SearchError("{}: the split must be one of {}.".format(text, ", ".join(data.SPLITS)))
        arrays = data.load_arrays(name, split, limit=limit)
        items = [{"id": i, "dataset": name, "split": split, "index": i, "label": int(label),
                  "label_name": info.class_names[int(label)]} for i, label in enumerate(arrays.labels)]
        try:
            images = runtime.check_images(data.normalize(arrays.images), image_shape)
        except runtime.InputError as exc:
            raise SearchError("{} does not fit the model: {}".format(text, exc)) from None
        return images, items
    folder = Path(text)
    if not folder.is_dir():
        raise SearchError("SOURCE {} is neither DATASET:SPLIT (e.g. fashion_mnist:train) nor a folder of images."
                          .format(text))
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".png" and p.is_file())[:limit]
    if not files:
        raise SearchError("{} holds no .png files.".format(folder))
    with _runtime_errors():
        images = runtime.read_pngs(files, image_shape)
    return images, [{"id": i, "path": str(p.resolve())} for i, p in enumerate(files)]


# --- binary codes ------------------------------------------------------------------------------------------


class Binarizer:
    """Codes -> bits. "itq": the iterative quantization rotation of Gong & Lazebnik (2011) after PCA to `bits`
    dimensions, or, for more bits than code units, after a random rotation up to `bits` dimensions; the
    bits are the signs. "lsh": a random rotation to `bits` dimensions, each bit thresholded at its median
    (the classic baseline). "threshold": each code unit at 0.5 (a sigmoid code, as in semantic hashing) or
    at its median (bits = code size). Fitted on the indexed codes."""

    def __init__(self, method, bits, transforms=(), thresholds=None):
        self.method, self.bits, self.transforms, self.thresholds = method, int(bits), list(transforms), thresholds

    @classmethod
    def fit(cls, codes, bits, method=None, seed=1234):
        faiss = _faiss()
        d = codes.shape[1]
        method = method or "itq"
        if method not in BINARIZERS:
            raise SearchError("--binarize must be one of {}; got {!r}.".format(", ".join(BINARIZERS), method))
        if method == "threshold":
            bits = d
        if bits % 8 or bits < 8:
            raise SearchError("Binary codes need a multiple of 8 bits{}; got {}.".format(
                " (threshold gives one bit per code unit: the code size, {})".format(d) if method == "threshold"
                else "", bits))
        x = np.ascontiguousarray(codes, dtype=np.float32)
        if method == "threshold":
            # 0.5 only for a code that is nearly binary already (semantic hashing); any other code, a sparse
            # sigmoid one included, would give almost constant bits there: cut each unit at its median instead.
            near_binary = float(np.mean((x < 0.1) | (x > 0.9))) >= 0.9 and float(x.min()) >= 0 and float(x.max()) <= 1
            return cls(method, bits, thresholds=np.full(d, 0.5, np.float32) if near_binary
                       else np.median(x, axis=0).astype(np.float32))
        if method == "itq" and len(x) < max(bits, d):
            raise SearchError("ITQ learns its rotation from the indexed codes and needs at least {} of them; this "
                              "index has {}. Index more images, or use --binarize lsh.".format(max(bits, d), len(x)))
        transforms = []
        if method == "lsh" or bits > d:  # up (or across) to `bits` dimensions
            rotation = faiss.RandomRotationMatrix(d, bits)
            rotation.init(seed)
            transforms.append(rotation)
            x = rotation.apply(x)
        if method == "lsh":
            return cls(method, bits, transforms, np.median(x, axis=0).astype(np.float32))
        itq = faiss.ITQTransform(x.shape[1], bits, x.shape[1] > bits)  # PCA only to go down
        itq.train(x)
        return cls(method, bits, transforms + [itq], np.zeros(bits, np.float32))

    def __call__(self, codes):
        x = np.ascontiguousarray(codes, dtype=np.float32)
        for transform in self.transforms:
            x = transform.apply(x)
        return np.packbits(x > self.thresholds, axis=1)

    def save(self, folder):
        for i, transform in enumerate(self.transforms):
            _faiss().write_VectorTransform(transform, str(folder / TRANSFORM.format(i)))
        np.save(folder / THRESHOLDS, self.thresholds)

    @classmethod
    def load(cls, folder, method, bits):
        transforms = []
        while (folder / TRANSFORM.format(len(transforms))).is_file():
            transforms.append(_faiss().read_VectorTransform(str(folder / TRANSFORM.format(len(transforms)))))
        return cls(method, bits, transforms, np.load(folder / THRESHOLDS))


# --- indexes -------------------------------------------------------------------------------------------------


def make_index(codes, kind="flat", bits=32, binarize=None):
    """A FAISS index of `codes` and the Binarizer of a binary kind (else None)."""
    faiss = _faiss()
    if kind not in KINDS:
        raise SearchError("--kind must be one of {}; got {!r}.".format(", ".join(KINDS), kind))
    x = np.ascontiguousarray(codes, dtype=np.float32)
    if kind in ("flat", "hnsw"):
        if kind == "flat":
            index = faiss.IndexFlatL2(x.shape[1])
        else:
            index = faiss.IndexHNSWFlat(x.shape[1], HNSW_M)
            index.hnsw.efSearch = HNSW_EF_SEARCH
        index.add(x)
        return index, None
    binarizer = Binarizer.fit(x, bits, binarize)
    packed = binarizer(x)
    if kind == "binary":
        index = faiss.IndexBinaryFlat(binarizer.bits)
    else:
        index = faiss.IndexBinaryHNSW(binarizer.bits, HNSW_M)
        index.hnsw.efSearch = HNSW_EF_SEARCH
    index.add(packed)
    return index, binarizer


def search(index, binarizer, codes, k):
    """(distances, ids) of the k nearest items for each code: squared L2, or Hamming bits for binary indexes."""
    x = np.ascontiguousarray(codes, dtype=np.float32)
    if binarizer is not None:
        x = binarizer(x)
    distances, ids = index.search(x, k)
    return distances, ids


def build(source, model, out, kind="flat", bits=32, binarize=None, limit=None, verbose=True):
    """`python -m zoo.search index`: encode SOURCE with the exported encoder and write INDEX_DIR."""
    encoder = resolve_model(model)
    rt = _runtime(encoder)
    images, items = read_source(source, rt.image_shape, limit)
    start = time.perf_counter()
    codes = _encode(rt, images)
    encode_s = time.perf_counter() - start
    index, binarizer = make_index(codes, kind, bits, binarize)
    faiss = _faiss()
    out = Path(out)
    meta = {
        "format_version": FORMAT_VERSION, "kind": kind, "count": len(items), "source": str(source),
        "model": {"encoder": str(encoder.resolve()), "sha256": sha256_file(encoder),
                  "preset": rt.metadata.get("encoder", {}).get("preset"), "latent_dim": rt.latent_dim,
                  "input_shape": list(rt.image_shape)},
        "binary": None if binarizer is None else {
            "bits": binarizer.bits, "method": binarizer.method,
            "thresholds": "0.5" if binarizer.method == "threshold" and np.all(binarizer.thresholds == 0.5) else
            "median per unit" if binarizer.method in ("threshold", "lsh") else "sign after the ITQ rotation"},
        "distance": "Hamming (bits)" if binarizer is not None else "squared L2",
        "encode_seconds": encode_s,
    }
    with fileio.atomic_dir(out, INDEX_KIND) as tmp:
        (faiss.write_index_binary if binarizer is not None else faiss.write_index)(index, str(tmp / INDEX))
        np.save(tmp / CODES, codes)
        if binarizer is not None:
            binarizer.save(tmp)
        fileio.write_json(tmp / ITEMS, items)
        fileio.write_json(tmp / META, meta)
    if verbose:
        print("Indexed {} items from {} ({} index{}, {}-d codes of {}) in {}".format(
            len(items), source, kind, "" if binarizer is None else ", {} bits by {}".format(
                binarizer.bits, binarizer.method), rt.latent_dim, encoder, out))
    return out


# --- queries -------------------------------------------------------------------------------------------------


class Index:
    """An index folder written by `build`."""

    def __init__(self, folder):
        folder = Path(folder)
        if not (folder / META).is_file() or fileio.marker_kind(folder) != INDEX_KIND:
            raise SearchError("{} is not a search index (no {}); build one with `python -m zoo.search index`."
                              .format(folder, META))
        self.folder = folder
        faiss = _faiss()
        try:
            self.meta = json.loads((folder / META).read_text())
            self.items = json.loads((folder / ITEMS).read_text())
            self.codes = np.load(folder / CODES, mmap_mode="r")
            binary = self.meta.get("binary")
            if binary:
                self.index = faiss.read_index_binary(str(folder / INDEX))
                self.binarizer = Binarizer.load(folder, binary["method"], binary["bits"])
            else:
                self.index = faiss.read_index(str(folder / INDEX))
                self.binarizer = None
        except (OSError, ValueError, KeyError, RuntimeError) as exc:  # FAISS reports a bad file as RuntimeError
            raise SearchError("{} is a damaged search index ({}: {}); build it again.".format(
                folder, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")) from None
        if self.meta["kind"].endswith("hnsw"):
            self.index.hnsw.efSearch = HNSW_EF_SEARCH

    def runtime(self, model=None):
        """The encoder runtime for image queries; a model other than the one that built the index is refused."""
        recorded = self.meta["model"]
        encoder = resolve_model(model) if model is not None else Path(recorded["encoder"])
        if not encoder.is_file():
            raise SearchError("The encoder that built {} ({}) is gone; pass --model with the same model."
                              .format(self.folder, encoder))
        digest = sha256_file(encoder)
        if digest != recorded["sha256"]:
            raise SearchError("{} was built by another model (encoder sha256 {}..., this one {}...): query it "
                              "with the model that built it, or build a new index with this one.".format(
                                  self.folder, recorded["sha256"][:12], digest[:12]))
        return _runtime(encoder)

    def query_codes(self, queries, model=None):
        """(codes, images, descriptions) of queries: item numbers of this index, DATASET:SPLIT:N, or PNG files."""
        codes, images, described = [], [], []
        rt = None
        for query in queries:
            text = str(query)
            if text.isascii() and text.isdigit():
                i = int(text)
                if i >= len(self.items):
                    raise SearchError("Item {} is not in {} (it holds {} items: 0..{}).".format(
                        i, self.folder, len(self.items), len(self.items) - 1))
                codes.append(np.asarray(self.codes[i], np.float32))
                images.append(None)  # read only for a picture: the file may have moved since indexing
                described.append({"query": text, "item": self.items[i]})
                continue
            rt = rt or self.runtime(model)
            parts = text.split(":")
            if len(parts) == 3 and parts[2].isascii() and parts[2].isdigit() and not Path(text).exists():
                from zoo import data

                if parts[1] not in data.SPLITS:
                    raise SearchError("Query {}: the split must be one of {}.".format(text, ", ".join(data.SPLITS)))
                arrays = data.load_arrays(parts[0], parts[1], limit=int(parts[2]) + 1)
                if int(parts[2]) >= len(arrays.images):
                    raise SearchError("Query {}: the {} split of {} has {} images (0..{}).".format(
                        text, parts[1], parts[0], len(arrays.images), len(arrays.images) - 1))
                image = data.normalize(arrays.images[int(parts[2]):int(parts[2]) + 1])
                label = int(arrays.labels[int(parts[2])])
                described.append({"query": text, "label": label,
                                  "label_name": data.get_info(parts[0]).class_names[label]})
            else:
                from export import runtime

                path = Path(text)
                if not path.is_file():
                    raise SearchError("Query {} is neither an item number of the index, DATASET:SPLIT:N, nor an "
                                      "image file.".format(text))
                with _runtime_errors():
                    image = runtime.read_pngs([path], rt.image_shape)
                described.append({"query": text, "path": str(path)})
            codes.append(_encode(rt, image)[0])
            images.append(image[0])
        return np.stack(codes).astype(np.float32), images, described

    def item_image(self, i):
        """The image of item i, read again from where it came from."""
        item = self.items[i]
        if "path" in item:
            from export import runtime

            with _runtime_errors():
                return runtime.read_pngs([item["path"]], tuple(self.meta["model"]["input_shape"]))[0]
        from zoo import data

        arrays = data.load_arrays(item["dataset"], item["split"], limit=item["index"] + 1)
        return data.normalize(arrays.images[item["index"]])

    def query(self, queries, k=10, model=None):
        codes, images, described = self.query_codes(queries, model)
        by_item = [d.get("item", {}).get("id") for d in described]
        distances, ids = search(self.index, self.binarizer, codes, k + 1)  # +1: an item query finds itself
        results = []
        for q, (row_d, row_i) in enumerate(zip(distances, ids)):
            neighbours = []
            for distance, i in zip(row_d, row_i):
                if i < 0 or i == by_item[q] or len(neighbours) == k:
                    continue
                neighbours.append({"rank": len(neighbours) + 1, "distance": float(distance), **self.items[int(i)]})
            results.append({**described[q], "neighbours": neighbours})
        return results, images


def picture(path, index, results, query_images, title=None):
    """Each query (left) with its neighbours, labelled with their class (when known) and distance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = max(len(r["neighbours"]) for r in results)
    fig, axes = plt.subplots(len(results), k + 1, figsize=((k + 1) * 0.95, len(results) * 1.15 + 0.5), squeeze=False)
    for r, (result, image) in enumerate(zip(results, query_images)):
        if image is None:
            image = index.item_image(result["item"]["id"])
        cells = [(image, "query\n" + (result.get("label_name") or result.get("item", {}).get("label_name") or ""))]
        cells += [(index.item_image(n["id"]), "{}\n{:.3g}".format(n.get("label_name", n["id"]), n["distance"]))
                  for n in result["neighbours"]]
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(cells):
                img = np.clip(np.asarray(cells[c][0], np.float32), 0, 1)
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
                ax.set_title(cells[c][1], fontsize=6)
            else:
                ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    with fileio.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)


# --- command line --------------------------------------------------------------------------------------------


def main(argv=None):
    from zoo.cli import make_parser
    from zoo.errors import run_cli

    parser = make_parser("zoo.search", "Similar-image search with autoencoder codes: build a FAISS index of a "
                                       "dataset split or a folder of images, then query it.", [
        "index fashion_mnist:train --model runs/deep_ae_fashion_mnist --out idx/deep",
        "index photos/ --model dist/conv_ae_fashion_mnist --kind binary --bits 32 --out idx/photos",
        "query idx/deep fashion_mnist:test:0 17 mine.png --k 10 --out result.png --json"])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("index", help="encode SOURCE and write an index folder")
    p.add_argument("source", help="DATASET:SPLIT (e.g. fashion_mnist:train) or a folder of PNG images")
    p.add_argument("--model", required=True, help="export dir, run dir, bundle folder or preset (runs/<preset>/export)")
    p.add_argument("--out", required=True, help="index folder (new, empty, or an index made by this command)")
    p.add_argument("--kind", default="flat", choices=KINDS, help="flat: exact L2; hnsw: approximate L2; binary: "
                                                                "exact Hamming; binary-hnsw (default %(default)s)")
    p.add_argument("--bits", type=int, default=32, help="binary code length, a multiple of 8 (default %(default)s)")
    p.add_argument("--binarize", choices=BINARIZERS, default="itq",
                   help="itq (default), lsh (random rotation, median thresholds), threshold (one bit per code unit)")
    p.add_argument("--limit", type=int, help="index only the first N images")
    p.add_argument("--quiet", action="store_true")
    q = sub.add_parser("query", help="find the items most like each query")
    q.add_argument("index", help="an index folder")
    q.add_argument("queries", nargs="+", help="item numbers of the index, DATASET:SPLIT:N, or PNG files")
    q.add_argument("--k", type=int, default=10)
    q.add_argument("--model", help="the encoder for image queries (default: the one that built the index)")
    q.add_argument("--out", help="write a picture of the queries and their neighbours (.png)")
    q.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)

    def body():
        if args.command == "index":
            if args.limit is not None and args.limit < 1:
                raise SearchError("--limit must be at least 1; got {}.".format(args.limit))
            build(args.source, args.model, args.out, kind=args.kind, bits=args.bits, binarize=args.binarize,
                  limit=args.limit, verbose=not args.quiet)
            return 0
        if args.k < 1:
            raise SearchError("--k must be at least 1; got {}.".format(args.k))
        index = Index(args.index)
        results, images = index.query(args.queries, k=args.k, model=args.model)
        if args.out:
            picture(args.out, index, results, images, title="{} nearest in {}".format(args.k, index.folder.name))
        if args.json:
            print(json.dumps(results, indent=2))
        else:
            for result in results:
                print("query {}{}".format(result["query"], " ({})".format(
                    result.get("label_name") or result.get("item", {}).get("label_name"))
                    if result.get("label_name") or result.get("item", {}).get("label_name") else ""))
                for n in result["neighbours"]:
                    where = n.get("path") or "{}:{}:{}".format(n["dataset"], n["split"], n["index"])
                    print("  {:>3}  id {:<7} {} {:<10.4g} {}{}".format(
                        n["rank"], n["id"], "hamming" if index.binarizer is not None else "sq. L2", n["distance"],
                        n.get("label_name", ""), "  " + where))
            if args.out:
                print("picture: {}".format(args.out))
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
