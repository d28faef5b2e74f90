"""Tests for zoo.idx and zoo.data: IDX files, source order, the tf.data pipeline, offline errors."""

import gzip
import os
import socket
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from zoo import data, idx
from zoo.errors import DataFormatError, DataUnavailableError, UnknownNameError
from tests.helpers import N_TEST, N_TRAIN, write_idx_dir

@pytest.fixture(autouse=True)
def isolated_sources(monkeypatch, tmp_path):
    """No test sees the user's tfds data, IDX folders or network unless it asks for them."""
    tfds_dir = tmp_path / "tfds"
    tfds_dir.mkdir()
    monkeypatch.setenv("TFDS_DATA_DIR", str(tfds_dir))
    monkeypatch.delenv("ZOO_DATA_DIR", raising=False)
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    return tfds_dir


@pytest.fixture
def idx_dir(tmp_path):
    return write_idx_dir(tmp_path / "idx")


def first_pixels(ds):
    """The index written into each image, in the order the pipeline yields them."""
    return np.concatenate([np.round(b.numpy()[:, 0, 0, 0] * 255).astype(int) for b in ds])


# --- zoo.idx -------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([-128, 0, 127], dtype=np.int8),
        np.array([[-300, 2], [3, 30000]], dtype=np.int16),
        np.array([-(2**31), 2**31 - 1], dtype=np.int32),
        np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2),
        np.array([np.pi, -np.e], dtype=np.float64),
    ],
    ids=["uint8", "int8", "int16", "int32", "float32", "float64"],
)
def test_idx_round_trip(tmp_path, array, suffix):
    path = tmp_path / "out" / ("a.idx" + suffix)
    path.parent.mkdir()
    idx.write_idx(path, array)
    back = idx.read_idx(path)
    assert back.shape == array.shape
    assert back.dtype == array.dtype and back.dtype.isnative
    np.testing.assert_array_equal(back, array)
    assert os.listdir(path.parent) == [path.name]  # the atomic write left no temp file
    with open(path, "rb") as f:
        assert (f.read(2) == b"\x1f\x8b") == (suffix == ".gz")


def test_idx_header_is_big_endian(tmp_path):
    path = tmp_path / "x"
    idx.write_idx(path, np.zeros((3, 258), np.int16))
    raw = path.read_bytes()
    assert raw[:4] == bytes([0, 0, 0x0B, 2])
    assert raw[4:12] == (3).to_bytes(4, "big") + (258).to_bytes(4, "big")


def test_read_idx_detects_gzip_by_content(tmp_path):
    idx.write_idx(tmp_path / "a.gz", np.arange(5, dtype=np.uint8))
    os.replace(tmp_path / "a.gz", tmp_path / "no-extension")
    np.testing.assert_array_equal(idx.read_idx(tmp_path / "no-extension"), np.arange(5))


def _good_idx_bytes():
    return bytes([0, 0, 0x08, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(range(6))


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"\x01\x02\x08\x02" + _good_idx_bytes()[4:], "bad magic"),
        (bytes([0, 0, 0x42, 1, 0, 0, 0, 1, 7]), "unknown data type code 0x42"),
        (_good_idx_bytes()[:-2], "needs 6 bytes of data, found 4"),
        (_good_idx_bytes()[:9], "truncated header"),
        (_good_idx_bytes() + b"junk", "4 bytes of trailing garbage"),
        (b"\x00", "too short"),
        (gzip.compress(_good_idx_bytes())[:-6], "corrupt or truncated gzip"),
        (gzip.compress(_good_idx_bytes())[:12] + b"\xff" * 20, "corrupt or truncated gzip"),
    ],
    ids=["magic", "dtype", "truncated", "header", "trailing", "short", "gzip-cut", "gzip-garbage"],
)
def test_read_idx_rejects_bad_files(tmp_path, content, expected):
    path = tmp_path / "bad-file-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(DataFormatError) as err:
        idx.read_idx(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_read_idx_missing_file(tmp_path):
    path = tmp_path / "nope-idx1-ubyte"
    with pytest.raises(DataFormatError, match="no such file") as err:
        idx.read_idx(path)
    assert str(path) in str(err.value)


def test_find_idx_files_accepts_the_common_spellings(tmp_path):
    labels = np.zeros(3, np.uint8)
    idx.write_idx(tmp_path / "train-images.idx3-ubyte", np.zeros((3, 2, 2), np.uint8))
    idx.write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    images_path, labels_path = idx.find_idx_files(tmp_path, "train")
    assert images_path.endswith("train-images.idx3-ubyte")
    assert labels_path.endswith("train-labels-idx1-ubyte.gz")

    with pytest.raises(DataFormatError) as err:
        idx.find_idx_files(tmp_path, "test")
    message = str(err.value)
    assert str(tmp_path) in message
    assert "t10k-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message


def test_load_idx_split_checks_consistency(tmp_path):
    idx.write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 2, 2), np.uint8))
    idx.write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(DataFormatError, match="4 images but .* 3 labels"):
        idx.load_idx_split(tmp_path, "train")

    idx.write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 4), np.uint8))
    with pytest.raises(DataFormatError, match="train-images-idx3-ubyte.*3-D"):
        idx.load_idx_split(tmp_path, "train")

    idx.write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 2, 2), np.uint8))
    images, labels = idx.load_idx_split(tmp_path, "train")
    assert images.shape == (3, 2, 2, 1) and images.dtype == np.uint8
    assert labels.dtype == np.int64


# --- zoo.data: IDX source and the pipeline ----------------------------------------------------------


def test_load_from_idx_dir(idx_dir):
    splits = data.load("mnist", batch_size=32, seed=0, data_dir=idx_dir)
    assert splits.source == "idx:{}".format(idx_dir)
    assert splits.info is data.DATASETS["mnist"]
    assert (splits.num_train, splits.num_val, splits.num_test) == (180, 20, 50)
    assert splits.steps_per_epoch == 6
    for ds, n in ((splits.train(0, 1), 180), (splits.val, 20), (splits.test, 50)):
        batches = list(ds)
        assert all(b.dtype == tf.float32 and b.shape[1:] == (28, 28, 1) for b in batches)
        assert batches[0].shape[0] == min(32, n)
        assert sum(b.shape[0] for b in batches) == n
        values = np.concatenate([b.numpy().ravel() for b in batches])
        assert 0.0 <= values.min() and values.max() <= 1.0 and values.max() > 0.9
    # Validation is the last 10% of train, in order; test is untouched.
    np.testing.assert_array_equal(first_pixels(splits.val), np.arange(180, 200))
    np.testing.assert_array_equal(first_pixels(splits.test), np.arange(50))
    assert sorted(first_pixels(splits.train(0, 1))) == list(range(180))
    policy = splits.train(0, 1).options().experimental_distribute.auto_shard_policy
    assert policy == tf.data.experimental.AutoShardPolicy.DATA


def test_pipeline_matches_normalize(idx_dir):
    arrays = data.load_arrays("mnist", "test", data_dir=idx_dir)
    splits = data.load("mnist", batch_size=50, seed=0, data_dir=idx_dir)
    np.testing.assert_array_equal(next(iter(splits.test)).numpy(), data.normalize(arrays.images))
    assert data.normalize(np.array([0, 255], np.uint8)).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="uint8"):
        data.normalize(np.zeros(3, np.float32))


def test_shuffle_is_deterministic_per_seed_and_epoch(idx_dir):
    def epochs(seed, first=0, count=2):
        train = data.load("mnist", batch_size=64, seed=seed, data_dir=idx_dir).train(first, first + count)
        pixels = first_pixels(train)
        return [pixels[i * 180:(i + 1) * 180] for i in range(count)]

    first, second = epochs(7)
    again_first, again_second = epochs(7)
    np.testing.assert_array_equal(first, again_first)
    np.testing.assert_array_equal(second, again_second)
    assert sorted(first) == sorted(second) == list(range(180))  # each epoch is a whole permutation
    assert not np.array_equal(first, second)  # reshuffled each epoch
    assert not np.array_equal(first, epochs(8)[0])
    # A run resumed at epoch 1 sees epoch 1's order, as an uninterrupted run does.
    np.testing.assert_array_equal(epochs(7, first=1, count=1)[0], second)
    batches = [b.shape[0] for b in data.load("mnist", batch_size=64, seed=7, data_dir=idx_dir).train(0, 2)]
    assert batches == [64, 64, 52] * 2  # every epoch ends with its own partial batch


def _sources(batches, images):
    """For each yielded image, (index of the training image it came from, whether it is mirrored)."""
    originals = images.reshape(len(images), -1)
    mirrors = images[:, :, ::-1].reshape(len(images), -1)
    found = []
    for row in np.concatenate([np.asarray(b) for b in batches]).reshape(-1, originals.shape[1]):
        row = np.round(row * 255)
        plain, flipped = np.flatnonzero((originals == row).all(1)), np.flatnonzero((mirrors == row).all(1))
        assert len(plain) + len(flipped) == 1, "each image is one training image, as it is or mirrored"
        found.append((int(plain[0]), False) if len(plain) else (int(flipped[0]), True))
    return found


@pytest.mark.parametrize("pipeline", ["tf.data", "PyDataset"])
def test_hflip_mirrors_about_half_of_each_epoch_reproducibly(idx_dir, pipeline):
    splits = data.load("mnist", batch_size=64, seed=7, data_dir=idx_dir)
    images = splits.fit_images.astype(np.float64)

    def epoch(e, augment="hflip", seed=7):
        if pipeline == "tf.data":
            splits_ = data.load("mnist", batch_size=64, seed=seed, data_dir=idx_dir)
            return _sources(splits_.train(e, e + 1, augment=augment), images)
        batches = data._Batches(splits.fit_images, 64, seed=seed, first_epoch=e, augment=augment)
        return _sources([batches[i] for i in range(len(batches))], images)

    first, second = epoch(0), epoch(1)
    assert sorted(i for i, _ in first) == list(range(180))  # still every image once an epoch
    assert 50 < sum(m for _, m in first) < 130 and 50 < sum(m for _, m in second) < 130
    assert dict(first) != dict(second)  # drawn afresh each epoch...
    assert epoch(1) == second  # ...from (seed, epoch) alone, so a resumed run sees the same images
    assert dict(epoch(0, seed=8)) != dict(first)
    assert not any(m for _, m in epoch(0, augment="none"))
    with pytest.raises(ValueError, match="augment must be one of none, hflip"):
        splits.train(0, 1, augment="vflip")


def test_limit(idx_dir):
    splits = data.load("mnist", batch_size=16, seed=0, data_dir=idx_dir, limit=50)
    # Validation keeps at least 32 images, here capped by the 20 available.
    assert (splits.num_train, splits.num_val, splits.num_test) == (50, 20, 50)
    assert sorted(first_pixels(splits.train(0, 1))) == list(range(50))

    arrays = data.load_arrays("mnist", "train", data_dir=idx_dir, limit=7)
    assert arrays.images.shape == (7, 28, 28, 1) and arrays.images.dtype == np.uint8
    assert arrays.labels.tolist() == [0, 1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="limit"):
        data.load("mnist", batch_size=16, seed=0, data_dir=idx_dir, limit=0)


def test_load_arrays_from_idx_dir(idx_dir):
    arrays = data.load_arrays("fashion_mnist", "train", data_dir=idx_dir)
    assert arrays.images.shape == (N_TRAIN, 28, 28, 1) and arrays.images.dtype == np.uint8
    assert arrays.labels.shape == (N_TRAIN,) and arrays.labels.dtype == np.int64
    assert arrays.source == "idx:{}".format(idx_dir)


def test_zoo_data_dir_env(tmp_path, monkeypatch):
    # A shared folder with one subfolder per dataset, and a flat folder, both work.
    write_idx_dir(tmp_path / "shared" / "mnist")
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path / "shared"))
    assert data.load_arrays("mnist", "test").source == "idx:{}".format(tmp_path / "shared" / "mnist")
    flat = write_idx_dir(tmp_path / "flat")
    monkeypatch.setenv("ZOO_DATA_DIR", str(flat))
    assert data.load("mnist", batch_size=8, seed=0).source == "idx:{}".format(flat)


def test_explicit_data_dir_without_files_is_an_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataFormatError) as err:
        data.load("mnist", batch_size=8, seed=0, data_dir=empty)
    message = str(err.value)
    assert str(empty) in message and "train-images-idx3-ubyte" in message
    with pytest.raises(DataFormatError, match="not distributed as IDX"):
        data.load("cifar10", batch_size=8, seed=0, data_dir=empty)


def test_idx_images_of_the_wrong_shape_are_rejected(tmp_path):
    directory = write_idx_dir(tmp_path / "small", n_train=20, n_test=5, shape=(8, 8))
    with pytest.raises(DataFormatError, match=r"\(8, 8, 1\).*\(28, 28, 1\)"):
        data.load_arrays("mnist", "train", data_dir=directory)


def test_unknown_dataset_suggests_close_names():
    with pytest.raises(UnknownNameError, match="fashion_mnist"):
        data.load("fashion_mnst", batch_size=8, seed=0)
    with pytest.raises(KeyError):
        data.get_info("imagenet")


# --- zoo.data: the tfds route (mocked) -------------------------------------------------------------


def write_fake_tfds_metadata(root, name, num_train=N_TRAIN, num_test=N_TEST):
    """Make `root` look like a tfds data dir where `name` is prepared (metadata only).

    mock_data replaces the data but keeps whatever `data_dir` says about being prepared, so this
    is what makes the real `is_prepared()` check answer yes.
    """
    builder = tfds.builder(name, data_dir=str(root))
    split_infos = []
    for split, n in (("train", num_train), ("test", num_test)):
        template = tfds.core.ShardedFileTemplate(
            data_dir=builder.data_path,
            template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
            dataset_name=name,
            split=split,
            filetype_suffix="tfrecord",
        )
        split_infos.append(tfds.core.SplitInfo(name=split, shard_lengths=[n], num_bytes=0, filename_template=template))
    builder.info.set_splits(tfds.core.SplitDict(split_infos))
    builder.data_path.mkdir(parents=True)
    builder.info.write_to_directory(builder.data_dir)


@pytest.mark.parametrize("name, shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_prepared_source(tmp_path, monkeypatch, idx_dir, name, shape):
    prepared = tmp_path / "prepared"
    write_fake_tfds_metadata(prepared, name)
    # A local IDX folder is there too: prepared tfds data comes first.
    monkeypatch.setenv("ZOO_DATA_DIR", str(idx_dir))
    with tfds.testing.mock_data(num_examples=40, data_dir=str(prepared)):
        splits = data.load(name, batch_size=16, seed=0)
        arrays = data.load_arrays(name, "test", limit=5)
    assert splits.source == "tfds:{}".format(prepared)
    # mock_data yields num_examples for any split; the last 10% of train is validation.
    assert (splits.num_train, splits.num_val, splits.num_test) == (36, 4, 40)
    batch = next(iter(splits.train(0, 1)))
    assert batch.shape == (16, *shape) and batch.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(batch)) and float(tf.reduce_max(batch)) <= 1.0
    assert [b.shape[0] for b in splits.test] == [16, 16, 8]
    assert arrays.images.dtype == np.uint8 and arrays.images.shape[1:] == shape
    assert arrays.labels.dtype == np.int64 and arrays.source == splits.source


class _FakeSocket:
    def close(self):
        pass


def test_tfds_download_is_the_last_resort(monkeypatch, isolated_sources):
    monkeypatch.delenv("ZOO_OFFLINE")
    probed = []
    monkeypatch.setattr(socket, "create_connection", lambda addr, timeout=None: probed.append(addr) or _FakeSocket())
    # Without a data_dir mock_data has no metadata, so the data is not prepared and tfds
    # "downloads" (a no-op under the mock).
    with tfds.testing.mock_data(num_examples=12):
        splits = data.load("mnist", batch_size=5, seed=0)
    assert splits.source.startswith("tfds-download:")
    assert probed == [data.DOWNLOAD_HOSTS["mnist"]]
    assert next(iter(splits.train(0, 1))).shape == (5, 28, 28, 1)


# --- zoo.data: offline -----------------------------------------------------------------------------


def _refuse(*args, **kwargs):
    raise OSError("network blocked by the test")


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_offline_fails_fast_with_a_how_to(monkeypatch, tmp_path, name):
    monkeypatch.delenv("ZOO_OFFLINE")
    monkeypatch.setattr(socket, "create_connection", _refuse)
    monkeypatch.setattr(socket.socket, "connect", _refuse)
    monkeypatch.setattr(data, "DEFAULT_IDX_DIRS", {"fashion_mnist": (str(tmp_path / "no-debian-package"),)})

    def no_download(self, *args, **kwargs):
        raise AssertionError("tfds download attempted while offline")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)
    start = time.monotonic()
    with pytest.raises(DataUnavailableError) as err:
        data.load(name, batch_size=8, seed=0)
    assert time.monotonic() - start < 30
    message = str(err.value)
    assert os.environ["TFDS_DATA_DIR"] in message and "unreachable" in message
    assert "TFDS_DATA_DIR" in message and "internet" in message
    if name == "cifar10":
        assert "not distributed as IDX" in message and "--data-dir" not in message
    else:
        assert "--data-dir" in message and "ZOO_DATA_DIR" in message
        assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert ("apt-get install -y dataset-fashion-mnist" in message) == (name == "fashion_mnist")
    if name == "fashion_mnist":
        assert "no-debian-package" in message


def test_zoo_offline_skips_the_probe(monkeypatch):
    def no_probe(*args, **kwargs):
        raise AssertionError("probed the network although ZOO_OFFLINE=1")

    monkeypatch.setattr(socket, "create_connection", no_probe)
    with pytest.raises(DataUnavailableError, match="ZOO_OFFLINE"):
        data.load_arrays("mnist", "train")


# --- real data --------------------------------------------------------------------------------------


@pytest.mark.realdata
@pytest.mark.skipif(
    not os.path.isdir(data.DEBIAN_FASHION_MNIST_DIR), reason="apt-get install dataset-fashion-mnist"
)
def test_real_fashion_mnist_from_the_debian_package():
    splits = data.load("fashion_mnist", batch_size=1000, seed=0)
    assert splits.source == "idx:" + data.DEBIAN_FASHION_MNIST_DIR  # found without being named
    assert (splits.num_train, splits.num_val, splits.num_test) == (54000, 6000, 10000)
    assert sum(int(b.shape[0]) for b in splits.test) == 10000

    train = data.load_arrays("fashion_mnist", "train")
    assert train.images.shape == (60000, 28, 28, 1)
    assert np.bincount(train.labels).tolist() == [6000] * 10
    # The published Fashion-MNIST pixel mean is 72.94 / 255 = 0.286.
    assert abs(float(data.normalize(train.images).mean()) - 0.286) < 0.002
    assert abs(float(np.mean([tf.reduce_mean(b) for b in splits.val])) - 0.286) < 0.01
