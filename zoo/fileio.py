"""Atomic file and folder writes: an interrupted run never leaves a half file that looks complete."""

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from zoo.errors import ZooError


def _default_permissions(path, mode):
    """mkstemp and mkdtemp make private files; give `path` what a plain open() or mkdir() would."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


PARTIAL = ".partial-"  # what every temporary file or folder here starts with
OLD = ".old-"  # a replaced folder on its way out


def remove_partials(folder):
    """Delete what a killed writer left in `folder`: temporary files and folders that never got their final name.
    Call it only while holding the folder's lock."""
    for path in Path(folder).glob(PARTIAL + "*"):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder (so os.replace is atomic) and the same ending (Keras insists on ".keras", ".weights.h5").
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=PARTIAL, suffix="-" + path.name)
    os.close(fd)
    _default_permissions(tmp, 0o666)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def sha256_file(path, chunk_size=1 << 20):
    """The hex sha256 of a file, read in chunks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_text(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path, obj):
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path, kind=None, known=()):
    """Yield an empty temporary folder beside `path`; it replaces `path` only if the block succeeds.

    With `kind`, an existing `path` is replaced only if check_replaceable allows it (checked before
    and again just before the swap), and the new folder carries the marker of `kind`.
    """
    path = Path(path)
    if kind is not None:
        check_replaceable(path, kind, known)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix="{}{}-".format(PARTIAL, path.name)))
    _default_permissions(tmp, 0o777)
    try:
        yield tmp
        if kind is not None:
            write_marker(tmp, kind)
            check_replaceable(path, kind, known)  # the user may have put files there meanwhile
        replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(src, dest):
    """Move folder `src` to `dest`, replacing it; `dest` is never missing or half-written in between
    for longer than two renames."""
    src, dest = Path(src), Path(dest)
    old = None
    if dest.exists():
        # os.replace cannot replace a non-empty folder: move the old one aside first.
        old = Path(tempfile.mkdtemp(dir=dest.parent, prefix="{}{}-".format(OLD, dest.name)))
        os.replace(dest, old / dest.name)
    try:
        os.replace(src, dest)
    except OSError:
        if old is not None:
            os.replace(old / dest.name, dest)  # put the old one back
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --- output folders this project owns -------------------------------------------------------------------

MARKER = ".aezoo"  # JSON {"kind": ...}: this folder was made by aezoo and may be replaced by the same kind of output


HOW_TO_REPLACE = "Choose an empty or new --out, or remove that folder yourself if you no longer need it."


class OutputFolderError(ZooError):
    """An output folder holds something aezoo did not make, or overlaps what is being read."""


def write_marker(folder, kind):
    write_json(Path(folder) / MARKER, {"kind": kind, "note": "made by aezoo; the same command may replace this folder"})


def marker_kind(folder):
    """The kind of aezoo output `folder` is marked as, or None."""
    try:
        return json.loads((Path(folder) / MARKER).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def check_replaceable(folder, kind, known=()):
    """Raise OutputFolderError unless `folder` is missing, empty, marked as `kind`, or is an output of this
    kind from before folders were marked: it holds `known[0]` (the file that defines that output) and
    nothing but the names in `known`. Temporary names this module makes are not counted."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError("{} is a file, not a folder; choose another output folder.".format(folder))
    if not folder.is_dir() or marker_kind(folder) == kind:
        return
    names = {p.name for p in folder.iterdir() if not p.name.startswith((PARTIAL, OLD))}
    if names and not (known and known[0] in names and names <= set(known)):
        raise OutputFolderError("{} already holds files that aezoo did not write ({}); refusing to replace it. {}".format(
            folder, ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else ""),
            HOW_TO_REPLACE))


def overlaps(a, b):
    """Whether folder `a` equals, contains or sits inside folder `b`."""
    a, b = Path(a).resolve(), Path(b).resolve()
    return a == b or a in b.parents or b in a.parents


# --- one writer per folder -----------------------------------------------------------------------------------


class FolderLock:
    """An exclusive lock on a folder: a lock file holding the holder's pid and host, locked with flock.

    The kernel drops a flock when its process dies, so a lock file left by a killed process is stale
    and simply taken over; a live holder makes `acquire` raise OutputFolderError naming it.
    """

    NAME = ".lock"

    def __init__(self, folder):
        self.path = Path(folder) / self.NAME
        self._fd = None

    def acquire(self):
        import fcntl
        import socket

        if self._fd is not None:
            raise RuntimeError("{} is already held by this FolderLock".format(self.path))
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder(fd)
                os.close(fd)
                raise OutputFolderError("{} is being written by {}; wait for it to finish or choose another --out."
                                        .format(self.path.parent, holder)) from None
            except BaseException:
                os.close(fd)
                raise
            try:
                # The holder before us may have unlinked the file between our open and our flock: then we
                # hold a lock on a file nobody else will open. Start again on the file that is there now.
                if os.path.exists(self.path) and os.path.samestat(os.fstat(fd), os.stat(self.path)):
                    os.ftruncate(fd, 0)
                    os.write(fd, "pid {} on {}\n".format(os.getpid(), socket.gethostname()).encode())
                    self._fd = fd
                    return self
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)

    @staticmethod
    def _holder(fd):
        """Who holds the lock: the holder writes its pid just after taking the flock, so wait a moment for it."""
        import time

        for _ in range(20):
            text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            if text:
                return text
            time.sleep(0.05)
        return "another process"

    def release(self):
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # unlink first: a waiter never locks a file that is going away
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
