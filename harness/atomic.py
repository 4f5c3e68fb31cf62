"""rlgauge's one way to write a file: never half-written, never through an existing file.

Everything a user measured, and every build rlgauge caches, is written to a temporary file in
the destination directory, flushed and fsynced, then renamed over the destination; the rename
itself is made durable by an fsync of the directory. A crash leaves the old file or the new
one, nothing in between. A copy gets a new inode: uv hard-links site-packages files to its cache,
so writing *through* an existing file would change every venv made from that cache.
``locked`` serialises the processes that build one cached thing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


def _replace(dest: Path, fill) -> Path:
    """Make a temp file beside ``dest``, ``fill(temp_path)`` it, rename it over ``dest`` and make
    the rename durable; the temp file is removed if anything fails."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        fill(tmp)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _sync_dir(dest.parent)
    return dest


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (parent directories are created)."""
    def fill(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    return _replace(Path(path), fill)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, data, **dump_kwargs) -> Path:
    """Write ``data`` as JSON to ``path`` atomically."""
    return write_text(path, json.dumps(data, **dump_kwargs))


def copy(src: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy ``src`` to ``dest`` atomically (metadata too, as ``shutil.copy2``): ``dest`` gets a
    new inode, an existing ``dest`` is replaced, never written through."""
    return _replace(Path(dest), lambda tmp: shutil.copy2(src, tmp))


def _sync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (where the platform allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def locked(path: str | os.PathLike):
    """Hold an exclusive lock on the file ``path`` (created if missing) for the ``with`` block:
    serialises processes that build the same cached thing at once (two nox sessions starting
    together)."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
