"""Datasets for the zoo: find the images (prepared tfds data, local IDX files, or a tfds
download) and feed them as float32 NHWC batches in [0, 1] through a tf.data pipeline.

TensorFlow and tensorflow-datasets are imported only where a pipeline is built or tfds is asked:
finding and reading IDX files needs numpy alone."""

import contextlib
import dataclasses
import glob
import logging
import os
import socket
import sys
import threading
import urllib.parse
import urllib.request

import numpy as np

from zoo import idx
from zoo.errors import DataFormatError, DataUnavailableError, unknown_name

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the zoo knows about a dataset before loading it."""

    name: str
    tfds_name: str
    image_shape: tuple
    num_classes: int
    class_names: tuple
    num_train: int
    num_test: int
    idx: bool  # distributed as IDX files, so a local folder of them can stand in for tfds
    mean_pixel: float = None  # mean of the training images in [0, 1]: a check that IDX files are this dataset


_DIGITS = tuple(str(i) for i in range(10))
DATASETS = {
    info.name: info
    for info in (
        DatasetInfo("mnist", "mnist", (28, 28, 1), 10, _DIGITS, 60000, 10000, idx=True, mean_pixel=0.1307),
        DatasetInfo(
            "fashion_mnist",
            "fashion_mnist",
            (28, 28, 1),
            10,
            ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
             "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
            60000,
            10000,
            idx=True,
            mean_pixel=0.2860,
        ),
        DatasetInfo(
            "cifar10",
            "cifar10",
            (32, 32, 3),
            10,
            ("airplane", "automobile", "bird", "cat", "deer",
             "dog", "frog", "horse", "ship", "truck"),
            50000,
            10000,
            idx=False,
        ),
    )
}

# Where tfds downloads each dataset from (the URLs in tensorflow_datasets/image_classification/).
# Probed before a download because tfds retries for minutes when the network is down.
DOWNLOAD_HOSTS = {
    "mnist": ("storage.googleapis.com", 443),
    "fashion_mnist": ("fashion-mnist.s3-website.eu-central-1.amazonaws.com", 80),
    "cifar10": ("www.cs.toronto.edu", 443),
}
CONNECT_TIMEOUT_S = 3.0

# IDX folders found without being named: Debian's package dataset-fashion-mnist.
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
DEFAULT_IDX_DIRS = {"fashion_mnist": (DEBIAN_FASHION_MNIST_DIR,)}

SPLITS = ("train", "test")


@dataclasses.dataclass
class Arrays:
    """One split as numpy arrays: images uint8 NHWC, labels int64, and where they came from."""

    images: np.ndarray
    labels: np.ndarray
    source: str


@dataclasses.dataclass
class Splits:
    """A dataset's three parts in memory (uint8 NHWC) and the pipelines that feed them as float32 in [0, 1].

    The training order of epoch e is a permutation drawn from (seed, e) alone, so a run resumed at
    epoch e sees exactly the batches an uninterrupted run would have seen.
    """

    fit_images: np.ndarray
    val_images: np.ndarray
    test_images: np.ndarray
    info: DatasetInfo
    source: str
    batch_size: int
    seed: int

    @property
    def num_train(self):
        return len(self.fit_images)

    @property
    def num_val(self):
        return len(self.val_images)

    @property
    def num_test(self):
        return len(self.test_images)

    @property
    def steps_per_epoch(self):
        return -(-self.num_train // self.batch_size)

    def train(self, first_epoch, epochs, batch_multiple=1, shard=(0, 1), augment="none"):
        """Epochs first_epoch..epochs-1 back to back, each reshuffled from (seed, epoch), one batch per step.

        A tf.data pipeline on the TensorFlow backend (tf.distribute shards it), else a keras.utils.PyDataset
        over the arrays in memory, which every Keras backend reads; there each batch is cut to a multiple of
        `batch_multiple` (JAX's data parallelism splits it evenly over the devices) and process `shard[0]`
        of `shard[1]` takes its share of it. `augment="hflip"` mirrors each image with probability 1/2, drawn
        from (seed, epoch) too, so a resumed run sees the same images."""
        augment = check_augment(augment)
        if not _tensorflow_backend():
            return _Batches(self.fit_images, self.batch_size, seed=self.seed, first_epoch=first_epoch,
                            batch_multiple=batch_multiple, shard=shard, augment=augment)
        import tensorflow as tf

        images = tf.constant(self.fit_images)
        n, batch_size = self.num_train, self.batch_size
        seed = tf.constant(self.seed, tf.int64)

        def epoch(e):
            order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=tf.stack([seed, e]))
            if augment == "hflip":
                flips = tf.random.stateless_uniform([n], seed=tf.stack([seed, e * FLIP_STREAM + 1])) < 0.5
                return tf.data.Dataset.from_tensor_slices((order, tf.gather(flips, order))).batch(batch_size)
            return tf.data.Dataset.from_tensor_slices(order).batch(batch_size)

        def to_float(i, mirror=None):
            x = tf.cast(tf.gather(images, i), tf.float32) / 255.0
            return x if mirror is None else tf.where(mirror[:, None, None, None], tf.reverse(x, axis=[2]), x)

        ds = tf.data.Dataset.range(first_epoch, epochs).flat_map(epoch)
        ds = ds.map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
        return _with_options(ds.prefetch(tf.data.AUTOTUNE))

    def validation(self, batch_multiple=1, shard=(0, 1)):
        if _tensorflow_backend():
            return _pipeline(self.val_images, self.batch_size)
        return _Batches(self.val_images, self.batch_size, batch_multiple=batch_multiple, shard=shard)

    @property
    def val(self):
        return self.validation()

    @property
    def test(self):
        return _pipeline(self.test_images, self.batch_size)


# Training-image augmentation (the target is the augmented image itself). hflip: each training image is mirrored
# left-right with probability 1/2, drawn afresh every epoch; sensible for clothes (Fashion-MNIST) and scenes
# (CIFAR-10), not for digits.
AUGMENTS = ("none", "hflip")
FLIP_STREAM = 7919  # keeps the mirror draws apart from the order draws of the same (seed, epoch)


def check_augment(augment):
    if augment not in AUGMENTS:
        raise ValueError("augment must be one of {}, not {!r}".format(", ".join(AUGMENTS), augment))
    return augment


def _tensorflow_backend():
    import keras

    return keras.backend.backend() == "tensorflow"


def _batches_class():
    import keras

    class Batches(keras.utils.PyDataset):
        """Batches of uint8 images as float32 in [0, 1]; with a seed, each epoch is a permutation drawn from
        (seed, epoch counter). Keras calls on_epoch_end before the first epoch too (EpochIterator.reset), so
        epoch e uses the counter e + 1; a resumed run (first_epoch = e) sees the same orders as an
        uninterrupted one."""

        def __init__(self, images, batch_size, seed=None, first_epoch=0, batch_multiple=1, shard=(0, 1),
                     augment="none"):
            super().__init__()
            self.images, self.batch_size, self.seed, self.epoch = images, batch_size, seed, first_epoch
            self.batch_multiple, self.shard, self.augment = batch_multiple, shard, check_augment(augment)
            if self.augment != "none" and seed is None:
                raise ValueError("augmentation draws from the seed; pass one")
            self._order, self._flips = self._permutation(), self._flip_draw()

        def _permutation(self):
            if self.seed is None:
                return np.arange(len(self.images))
            return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.images))

        def _flip_draw(self):
            """hflip: which images (by index) this epoch mirrors, drawn from (seed, epoch) like the order."""
            if self.augment != "hflip":
                return None
            return np.random.default_rng([self.seed, self.epoch, FLIP_STREAM]).random(len(self.images)) < 0.5

        def __len__(self):
            return -(-len(self.images) // self.batch_size)

        def __getitem__(self, index):
            rows = self._order[index * self.batch_size:(index + 1) * self.batch_size]
            if self.batch_multiple > 1:  # drop the last few rows, or repeat some when fewer than the devices
                keep = len(rows) // self.batch_multiple * self.batch_multiple
                rows = rows[:keep] if keep else np.resize(rows, self.batch_multiple)
            if self.shard[1] > 1:
                rows = np.array_split(rows, self.shard[1])[self.shard[0]]
            rows = np.sort(rows) if self.seed is None else rows
            batch = self.images[rows].astype(np.float32) / np.float32(255)
            if self._flips is not None:
                mirror = self._flips[rows]
                batch[mirror] = batch[mirror][:, :, ::-1]
            return batch

        def on_epoch_end(self):
            if self.seed is not None:
                self.epoch += 1
                self._order, self._flips = self._permutation(), self._flip_draw()

    return Batches


def _Batches(*args, **kwargs):
    return _batches_class()(*args, **kwargs)


def get_info(name):
    """Return the DatasetInfo of `name`, or raise UnknownNameError naming close matches."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise unknown_name("dataset", name, DATASETS) from None


def list_datasets():
    return sorted(DATASETS)


def normalize(images):
    """Return uint8 images as float32 in [0, 1] (the same numbers the pipeline yields)."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError("normalize expects uint8 images, got {}".format(images.dtype))
    return images.astype(np.float32) / np.float32(255)


# --- Finding the data --------------------------------------------------------------------------


@dataclasses.dataclass
class _Source:
    kind: str  # "tfds" or "idx"
    description: str
    builder: object = None
    path: str = None


@contextlib.contextmanager
def _quiet_absl():
    # tfds.builder warns "Variant folder ... has no dataset_info.json" whenever the data is
    # not prepared, which is the normal case before we try the other sources.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl_logger.setLevel(level)


def _tfds_root():
    return os.path.expanduser(os.environ.get("TFDS_DATA_DIR") or os.path.join("~", "tensorflow_datasets"))


def _maybe_prepared(info):
    """Whether tfds may hold `info` prepared. Without tfds loaded, look for its files (importing tfds
    costs seconds); once it is loaded (or mocked, in tests), ask it."""
    if "tensorflow_datasets" in sys.modules:
        return True
    base = os.path.join(_tfds_root(), info.tfds_name)
    return bool(glob.glob(os.path.join(base, "*", "dataset_info.json"))
                or glob.glob(os.path.join(base, "*", "*", "dataset_info.json")))


def _tfds_builder(info):
    import tensorflow_datasets as tfds

    # tfds reads TFDS_DATA_DIR once at import; reading it here lets it change at run time.
    with _quiet_absl():
        return tfds.builder(info.tfds_name, data_dir=os.environ.get("TFDS_DATA_DIR") or None)


def _idx_candidates(info, base):
    # A shared data folder may hold one subfolder per dataset; a flat folder is taken to be
    # the dataset asked for, since IDX files do not say which dataset they are.
    names = [info.name, info.name.replace("_", "-")]
    subdirs = [os.path.join(base, n) for n in dict.fromkeys(names)]
    return subdirs + [os.fspath(base)]


def _find_idx_dir(info, base, splits):
    for directory in _idx_candidates(info, base):
        try:
            for split in splits:
                idx.find_idx_files(directory, split)
        except DataFormatError:
            continue
        return directory
    return None


def _network_reachable(host, port, timeout=CONNECT_TIMEOUT_S):
    """Whether a TCP connection to the download host (or the configured proxy) opens quickly."""
    if os.environ.get("ZOO_OFFLINE", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    proxy = urllib.request.getproxies().get("https" if port == 443 else "http")
    if proxy and not urllib.request.proxy_bypass(host):
        parsed = urllib.parse.urlsplit(proxy if "//" in proxy else "//" + proxy)
        host, port = parsed.hostname, parsed.port or 80

    result = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:  # DNS failure (gaierror), refused, unreachable, timeout
            result.append(False)

    # create_connection's timeout does not bound the DNS lookup, which can hang far longer.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1)
    return bool(result and result[0])


def _offline_message(info, checked, host):
    lines = [
        "Dataset {!r} is not available: it is not prepared in the tfds data dir {} "
        "(no {}),".format(info.name, _tfds_root(), os.path.join(_tfds_root(), info.tfds_name, "<version>")),
    ]
    if info.idx:
        places = ", ".join(checked) if checked else "none (no data_dir, ZOO_DATA_DIR not set)"
        lines.append("no local IDX files were found (looked in: {}),".format(places))
    else:
        lines.append("{} is not distributed as IDX files, so only tfds can provide it,".format(info.name))
    lines.append(
        "and the download host {} is unreachable{}.".format(
            host, " (ZOO_OFFLINE is set)" if os.environ.get("ZOO_OFFLINE") else ""
        )
    )
    lines.append("To provide the data, do one of:")
    if info.idx:
        names = [v[0] + "[.gz]" for split in SPLITS for v in idx.idx_file_names(split)]
        lines.append(
            "  - pass --data-dir DIR (or set ZOO_DATA_DIR=DIR) where DIR, or DIR/{}, holds the 4 IDX "
            "files {};".format(info.name, ", ".join(names))
        )
    if info.name in DEFAULT_IDX_DIRS:
        lines.append(
            "  - apt-get install -y dataset-fashion-mnist (puts the IDX files in {});".format(
                DEBIAN_FASHION_MNIST_DIR
            )
        )
    lines.append("  - run once with internet access so that tfds downloads and prepares it;")
    lines.append(
        "  - copy a prepared tfds data dir (one holding {}/<version>/) from another machine and set "
        "TFDS_DATA_DIR to it.".format(info.tfds_name)
    )
    return "\n".join(lines)


def _resolve(info, data_dir, splits):
    """Find the data: an explicit `data_dir` first (the user named it), then in the order prepared
    tfds, local IDX folder (ZOO_DATA_DIR, Debian's dataset-fashion-mnist), tfds download."""
    if data_dir is not None:
        # An explicit folder that lacks the files is a mistake to report, not a cue to fall back.
        if not info.idx:
            raise DataFormatError(
                "data_dir was given, but {} is not distributed as IDX files; it comes only from "
                "tfds (set TFDS_DATA_DIR to a prepared tfds data dir instead).".format(info.name)
            )
        idx_dir = _find_idx_dir(info, data_dir, splits)
        if idx_dir is None:
            try:
                for split in splits:
                    idx.find_idx_files(data_dir, split)
            except DataFormatError as e:
                raise DataFormatError(
                    "data_dir {} does not hold {} (also looked in {}): {}".format(
                        data_dir, info.name, ", ".join(_idx_candidates(info, data_dir)[:-1]), e
                    )
                ) from None
        return _Source("idx", "idx:{}".format(idx_dir), path=idx_dir)

    if _maybe_prepared(info):
        builder = _tfds_builder(info)
        with _quiet_absl():
            prepared = builder.is_prepared()
        if prepared:
            return _Source("tfds", "tfds:{}".format(builder.data_dir_root), builder=builder)

    checked = []
    if info.idx:
        env_dir = os.environ.get("ZOO_DATA_DIR")
        bases = ([env_dir] if env_dir else []) + list(DEFAULT_IDX_DIRS.get(info.name, ()))
        for base in bases:
            idx_dir = _find_idx_dir(info, base, splits)
            if idx_dir is not None:
                return _Source("idx", "idx:{}".format(idx_dir), path=idx_dir)
            checked.append(base)
        if env_dir:
            logger.warning("ZOO_DATA_DIR=%s holds no %s IDX files; trying tfds", env_dir, info.name)

    host, port = DOWNLOAD_HOSTS[info.name]
    if not _network_reachable(host, port):
        raise DataUnavailableError(_offline_message(info, checked, host))
    builder = _tfds_builder(info)
    logger.info("Downloading %s with tfds into %s", info.name, builder.data_dir_root)
    builder.download_and_prepare()
    return _Source("tfds", "tfds-download:{}".format(builder.data_dir_root), builder=builder)


def _check_image_shape(info, images, source):
    if tuple(images.shape[1:]) != tuple(info.image_shape):
        raise DataFormatError(
            "{}: images have shape {}, but {} images are {}".format(
                source, tuple(images.shape[1:]), info.name, tuple(info.image_shape)
            )
        )


MEAN_PIXEL_TOLERANCE = 0.05  # MNIST's and Fashion-MNIST's means differ by 0.155; a split's mean is within 0.002
MIN_IMAGES_FOR_STATISTICS = 1000


def _check_statistics(info, images, where):
    """Warn when IDX files look like another dataset (IDX files do not say which dataset they hold)."""
    if info.mean_pixel is None or len(images) < MIN_IMAGES_FOR_STATISTICS:
        return
    mean = float(images.mean()) / 255.0
    if abs(mean - info.mean_pixel) > MEAN_PIXEL_TOLERANCE:
        others = [other.name for other in DATASETS.values() if other.mean_pixel is not None and other is not info
                  and abs(mean - other.mean_pixel) <= MEAN_PIXEL_TOLERANCE]
        logger.warning("%s: the images' mean pixel is %.3f, but %s images average %.3f%s. Check that these files "
                       "are %s.", where, mean, info.name, info.mean_pixel,
                       " (they look like {})".format(" or ".join(others)) if others else "", info.name)


def _idx_split(info, source, split):
    images, labels = idx.load_idx_split(source.path, split)
    _check_image_shape(info, images, source.description)
    _check_statistics(info, images, "{} {} split".format(source.description, split))
    return images, labels


# --- Public loaders ----------------------------------------------------------------------------


def load_arrays(name, split, data_dir=None, limit=None):
    """Return one whole split ("train" or "test") as numpy Arrays, the first `limit` if given."""
    info = get_info(name)
    if split not in SPLITS:
        raise ValueError("split must be one of {}, not {!r}".format(SPLITS, split))
    _check_limit(limit)
    source = _resolve(info, data_dir, (split,))
    if source.kind == "idx":
        images, labels = _idx_split(info, source, split)
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
    else:
        spec = split if limit is None else "{}[:{}]".format(split, limit)
        import tensorflow_datasets as tfds

        ds = source.builder.as_dataset(split=spec, as_supervised=True, batch_size=-1)
        images, labels = tfds.as_numpy(ds)
    return Arrays(np.asarray(images, np.uint8), np.asarray(labels, np.int64), source.description)


def _check_limit(limit):
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError("limit must be a positive int or None, not {!r}".format(limit))


def _num_fit(num_train, val_fraction):
    # The same rule for IDX and tfds, so both sources give the same split of the same data.
    num_val = min(max(int(round(num_train * val_fraction)), 1), num_train - 1)
    return num_train - num_val


def _val_limit(limit, val_fraction):
    # With `limit`, validation shrinks in proportion, but keeps enough images to mean something.
    return max(32, int(round(limit * val_fraction / (1 - val_fraction))))


def _with_options(ds):
    import tensorflow as tf

    options = tf.data.Options()
    options.deterministic = True
    # Shard by element: in-memory sources do not have one file per worker.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def _pipeline(images, batch_size):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
    ds = ds.map(lambda x: tf.cast(x, tf.float32) / 255.0, num_parallel_calls=tf.data.AUTOTUNE)
    return _with_options(ds.prefetch(tf.data.AUTOTUNE))


def load(name, *, batch_size, seed, data_dir=None, limit=None, val_fraction=0.1):
    """Return the train/val/test splits of dataset `name`, held in memory.

    Validation is the last `val_fraction` of the train split; test is the test split, untouched.
    `limit` keeps the first `limit` training images and the first
    max(32, limit * val_fraction / (1 - val_fraction)) validation images; test stays whole.
    Each epoch's training order is a permutation drawn from (`seed`, epoch): see Splits.train.
    `data_dir` is a folder of IDX files (mnist, fashion_mnist); it must hold them.
    """
    info = get_info(name)
    _check_limit(limit)
    if not 0 < val_fraction < 1:
        raise ValueError("val_fraction must be in (0, 1), not {!r}".format(val_fraction))
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError("batch_size must be a positive int, not {!r}".format(batch_size))

    source = _resolve(info, data_dir, SPLITS)
    if source.kind == "idx":
        train_images, _ = _idx_split(info, source, "train")
        test_images, _ = _idx_split(info, source, "test")
    else:
        import tensorflow_datasets as tfds

        def images_of(spec):
            ds = source.builder.as_dataset(split=spec, as_supervised=True, shuffle_files=False)
            batches = [x for x, _ in tfds.as_numpy(ds.batch(8192))]
            return np.concatenate(batches).astype(np.uint8, copy=False)

        train_images, test_images = images_of("train"), images_of("test")
    num_fit = _num_fit(len(train_images), val_fraction)
    fit, val = train_images[:num_fit], train_images[num_fit:]
    if limit is not None:
        fit, val = fit[:limit], val[: _val_limit(limit, val_fraction)]
    logger.info("%s from %s: %d train, %d val, %d test", name, source.description, len(fit), len(val), len(test_images))
    return Splits(fit, val, test_images, info, source.description, batch_size, int(seed))


def main(argv=None):
    """`python -m zoo.data DATASET...`: say where each dataset would be read from, or why it can't be."""
    import sys

    from zoo.cli import make_parser

    parser = make_parser("zoo.data", "Say where each dataset would be read from (reading every split whole), or "
                                     "why it cannot be.", [
                             "fashion_mnist", "mnist fashion_mnist cifar10", "mnist --data-dir ~/mnist-idx"])
    parser.add_argument("datasets", nargs="+", metavar="DATASET", help=", ".join(list_datasets()))
    parser.add_argument("--data-dir", help="folder with the four IDX files (or set ZOO_DATA_DIR)")
    args = parser.parse_args(argv)
    from zoo.errors import run_cli

    def body():
        status = 0
        for name in args.datasets:
            try:
                # Every split training reads, each read whole: a truncated train file is found here, not mid-run.
                counts = {split: load_arrays(name, split, data_dir=args.data_dir) for split in SPLITS}
                print("{}: {} from {}".format(name, " + ".join("{} {} images".format(len(a.images), split)
                                                                 for split, a in counts.items()),
                                              counts["test"].source))
            except (DataFormatError, DataUnavailableError, KeyError) as exc:
                print("{}: not available. {}".format(name, exc), file=sys.stderr)
                status = 2
        return status

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
