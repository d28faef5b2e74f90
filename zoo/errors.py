"""Errors the zoo raises for bad input: each says what was wrong and how to fix it."""

import difflib
import errno
import os
import sys


class ZooError(Exception):
    """Base class: a user-facing error whose message is the whole explanation."""


class UnknownNameError(ZooError, KeyError):
    """An unknown model, preset or dataset name."""

    def __str__(self):  # KeyError would wrap the message in quotes.
        return self.args[0] if self.args else ""


class DataUnavailableError(ZooError):
    """The dataset cannot be found locally and cannot be downloaded."""


class DataFormatError(ZooError, ValueError):
    """A local data file is missing, truncated or corrupt."""


class InputShapeError(ZooError, ValueError):
    """Images or codes do not have the shape the model was built for."""


def unknown_name(kind, name, known):
    """Return an UnknownNameError for `name` that lists close matches, or all names."""
    known = sorted(known)
    close = difflib.get_close_matches(str(name), known, n=5, cutoff=0.5)
    if close:
        hint = "Did you mean: " + ", ".join(close) + "?"
    else:
        hint = "Known {}s: {}.".format(kind, ", ".join(known))
    return UnknownNameError("Unknown {} {!r}. {}".format(kind, name, hint))


# --- errors from a full or read-only disk --------------------------------------------------------------------

_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
_DISK_TEXTS = ("No space left on device", "Disk quota exceeded", "Read-only file system", "Permission denied",
               "File too large", "errno = 28")


def disk_error(exc):
    """A one-line description if `exc` (or what caused it) is a write refused by the disk, else None.

    h5py and TensorFlow report a full disk in their own exception types; the errno or the C library's
    text is still in there somewhere.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
            where = exc.filename if exc.filename else None
            return "{}{}".format(os.strerror(exc.errno), " ({})".format(where) if where else "")
        text = str(exc)
        for needle in _DISK_TEXTS:
            if needle in text:
                return "No space left on device" if needle == "errno = 28" else needle
        exc = exc.__cause__ or exc.__context__
    return None


#: What training, export, evaluation and search need beyond numpy and onnxruntime: the `train` extra.
TRAINING_PACKAGES = {"tensorflow", "keras", "tensorflow_datasets", "tf2onnx", "sklearn", "matplotlib", "onnx", "faiss"}
INSTALL_TRAINING = 'pip install "aezoo[train]" (in a checkout: pip install -e ".[train]")'


class MissingExtraError(ZooError, ImportError):
    """Something that needs the training extra was used where it is not installed (the base install is the
    TensorFlow-free runtime)."""


def missing_extra(exc, what):
    """A MissingExtraError for `what` (e.g. "zoo.build") if the ModuleNotFoundError `exc` is about a package of
    the training extra, else None (a missing module of the zoo itself is a bug, not an install choice)."""
    package = (getattr(exc, "name", None) or "").split(".")[0]
    if package not in TRAINING_PACKAGES:
        return None
    return MissingExtraError("{} needs {}, which is not installed in this Python ({}); it comes with the training "
                             "extra: {}".format(what, package, sys.executable, INSTALL_TRAINING))


def run_cli(body, interrupted="Interrupted."):
    """Run a command's `body()` and turn what a user can cause into one line on stderr and an exit code:
    a ZooError (2), a write the disk refused (1), Ctrl-C (130). Anything else is a bug: it keeps its traceback."""
    try:
        return body()
    except ZooError as exc:
        print("error: {}".format(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\n" + interrupted, file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:
        missing = missing_extra(exc, "this command")
        if missing is None:
            raise
        print("error: {}".format(missing), file=sys.stderr)
        return 2
    except Exception as exc:
        problem = disk_error(exc)
        if problem is None:
            raise
        print("error: the file system refused: {}. Check the free space and the permissions there, then run the "
              "command again; no partial file was left under a final name.".format(problem), file=sys.stderr)
        return 1
