"""Read and write IDX files (the MNIST / Fashion-MNIST format) with numpy alone.

Used for the offline data route: a folder of the four (optionally gzipped) IDX files.
"""

import gzip
import os
import tempfile
import zlib

import numpy as np

from zoo.errors import DataFormatError

# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/).
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dtype.newbyteorder("="): code for code, dtype in IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"

# The standard file stems; the ".idx3-ubyte" spelling comes from some re-distributions.
_STEMS = {
    "train": ("train-images", "train-labels"),
    "test": ("t10k-images", "t10k-labels"),
}


def _fail(path, what):
    return DataFormatError("IDX file {}: {}".format(os.fspath(path), what))


def read_idx(path):
    """Return the array stored in the IDX file `path` (gzipped or plain), in native byte order."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise _fail(path, "no such file") from None
    except OSError as e:
        raise _fail(path, "cannot be read ({})".format(e.strerror or e)) from None

    # Detect gzip by content: renamed or decompressed copies often keep the wrong extension.
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise _fail(path, "corrupt or truncated gzip data ({})".format(e)) from None

    if len(raw) < 4:
        raise _fail(path, "too short for an IDX header ({} bytes)".format(len(raw)))
    if raw[0] != 0 or raw[1] != 0:
        raise _fail(
            path,
            "bad magic number 0x{} (an IDX file starts with two zero bytes); "
            "is this really an IDX file?".format(raw[:4].hex()),
        )
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        raise _fail(
            path,
            "unknown data type code 0x{:02x} (known: {})".format(
                code, ", ".join("0x{:02x}".format(c) for c in IDX_DTYPES)
            ),
        )
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise _fail(
            path,
            "truncated header: {} dimensions need {} header bytes, found {}".format(
                ndim, header_len, len(raw)
            ),
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header_len
    if found < expected:
        raise _fail(
            path,
            "truncated: shape {} needs {} bytes of data, found {}".format(shape, expected, found),
        )
    if found > expected:
        raise _fail(
            path,
            "{} bytes of trailing garbage after the {} bytes that shape {} needs".format(
                found - expected, expected, shape
            ),
        )
    data = np.frombuffer(raw, dtype=dtype, count=expected // dtype.itemsize, offset=header_len)
    return data.reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path, array):
    """Write `array` to `path` as IDX, gzipped when the name ends in .gz; returns `path`.

    The file appears atomically, so an interrupted write never leaves a truncated file.
    """
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _CODES:
        raise ValueError(
            "IDX cannot store dtype {}; use one of {}".format(
                array.dtype, ", ".join(str(d) for d in _CODES)
            )
        )
    if array.ndim > 255 or any(d >= 2**32 for d in array.shape):
        raise ValueError("IDX cannot store an array of shape {}".format(array.shape))
    header = bytes([0, 0, _CODES[native], array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    payload = header + array.astype(IDX_DTYPES[_CODES[native]]).tobytes()
    if os.fspath(path).endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)  # mtime=0: same array, same bytes

    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def idx_file_names(split):
    """The accepted file names for `split` ("train" or "test"): (image names, label names)."""
    if split not in _STEMS:
        raise ValueError("split must be 'train' or 'test', not {!r}".format(split))
    names = []
    for stem, kind in zip(_STEMS[split], ("idx3", "idx1")):
        variants = []
        for base in ("{}-{}-ubyte".format(stem, kind), "{}.{}-ubyte".format(stem, kind)):
            variants += [base, base + ".gz"]
        names.append(tuple(variants))
    return tuple(names)


def find_idx_files(directory, split):
    """Return (images_path, labels_path) for `split` ("train" or "test") in `directory`."""
    directory = os.fspath(directory)
    found, missing = [], []
    for variants in idx_file_names(split):
        hits = [os.path.join(directory, n) for n in variants if os.path.isfile(os.path.join(directory, n))]
        if hits:
            found.append(hits[0])
        else:
            missing.append(variants)
    if missing:
        where = directory if os.path.isdir(directory) else directory + " (no such directory)"
        raise DataFormatError(
            "Missing {} IDX file(s) in {}: {}. Expected the standard names {} "
            "(optionally gzipped, .gz).".format(
                split,
                where,
                " and ".join(v[0] for v in missing),
                ", ".join(v[0] for group in (idx_file_names("train"), idx_file_names("test")) for v in group),
            )
        )
    return found[0], found[1]


def load_idx_split(directory, split):
    """Return (images uint8 [N, H, W, 1], labels int64 [N]) for `split` read from `directory`."""
    images_path, labels_path = find_idx_files(directory, split)
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3:
        raise _fail(images_path, "expected 3-D images [N, H, W], got shape {}".format(images.shape))
    if images.dtype != np.uint8:
        raise _fail(images_path, "expected uint8 pixels, got {}".format(images.dtype))
    if labels.ndim != 1:
        raise _fail(labels_path, "expected 1-D labels [N], got shape {}".format(labels.shape))
    if not np.issubdtype(labels.dtype, np.integer):
        raise _fail(labels_path, "expected integer labels, got {}".format(labels.dtype))
    if len(images) != len(labels):
        raise DataFormatError(
            "{} has {} images but {} has {} labels".format(
                images_path, len(images), labels_path, len(labels)
            )
        )
    return images[..., np.newaxis], labels.astype(np.int64)
