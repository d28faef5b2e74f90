"""Atomic file and folder writes: an interrupted run never leaves a half file that looks complete."""

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


def _default_permissions(path, mode):
    """mkstemp and mkdtemp make private files; give `path` what a plain open() or mkdir() would."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder (so os.replace is atomic) and same suffix (Keras insists on ".keras").
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".partial-{}-".format(path.stem), suffix=path.suffix)
    os.close(fd)
    _default_permissions(tmp, 0o666)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path, obj):
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path):
    """Yield an empty temporary folder beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".partial-{}-".format(path.name)))
    _default_permissions(tmp, 0o777)
    try:
        yield tmp
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
        old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".old-{}-".format(dest.name)))
        os.replace(dest, old / dest.name)
    os.replace(src, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
