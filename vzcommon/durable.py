"""Durability primitives: every file that must survive a crash is written through here.

Two shapes, as in borg:

* :func:`atomic_write` -- write a temporary file beside the target, fsync it, ``os.replace`` it over
  the target, fsync the directory. Readers see the old or the new content, never a mix.
* :func:`fsync_dir` -- after creating, renaming or unlinking a file, fsync its directory so the
  name change itself is durable.

:func:`start_writeback` is a hint that changes nothing about what is durable when: the kernel starts
writing a range now, so the fsync that makes it durable later has little left to do.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from pathlib import Path

from .libc import function

_SYNC_FILE_RANGE_WRITE = 2
_sync_file_range = function("sync_file_range", ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing a range's dirty pages to disk, without waiting (a hint: failures are ignored)."""
    if _sync_file_range is not None and length > 0:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a directory's entries (creations, renames, unlinks) durable."""
    fd = os.open(os.fspath(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` itself (created or truncated) and fsync it; no rename, no directory fsync.

    Not atomic: a crash can leave ``path`` partly written. Callers write a name nobody reads as
    state yet -- :func:`atomic_write`'s temporary file, or a commit's ``.next`` file, which a later,
    separate step renames with :func:`replace_durable`.
    """
    p = Path(path)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably (temp, fsync, rename, fsync dir)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    try:
        write_durable(tmp, data, mode)
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(p.parent)


def replace_durable(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Rename an already-fsynced file over ``dst`` and make the rename durable."""
    os.replace(src, dst)
    fsync_dir(Path(dst).parent)


def unlink_durable(*paths: str | os.PathLike[str]) -> None:
    """Remove files (missing ones are fine) and fsync each directory once."""
    dirs: set[Path] = set()
    for path in paths:
        p = Path(path)
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            dirs.add(p.parent)
    for d in dirs:
        fsync_dir(d)
