"""Durability primitives: every file that must survive a crash is written through here.

Two shapes, as in borg:

* :func:`atomic_write` -- write a temporary file beside the target, fsync it, ``os.replace`` it over
  the target, fsync the directory. Readers see the old or the new content, never a mix.
* :func:`create_durable` -- the same for a file that must not exist yet (a private key): created
  under a fresh name with the exact mode, never through a symlink, then linked into place only if
  nothing (not even a dangling symlink) is there.
* :func:`fsync_dir` -- after creating, renaming or unlinking a file, fsync its directory so the
  name change itself is durable.

:func:`start_writeback` is a hint that changes nothing about what is durable when: the kernel starts
writing a range now, so the fsync that makes it durable later has little left to do.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import tempfile
from pathlib import Path

from . import fsio
from .libc import function

_SYNC_FILE_RANGE_WRITE = 2
_sync_file_range = function(
    "sync_file_range", ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint
)


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing a range's dirty pages to disk, without waiting (a hint: failures are ignored)."""
    if _sync_file_range is not None and length > 0:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a directory's entries (creations, renames, unlinks) durable."""
    fd = fsio.open(os.fspath(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        fsio.fsync(fd)
    finally:
        fsio.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = fsio.write(fd, view)
        view = view[n:]
    fsio.fsync(fd)


def write_durable(path: str | os.PathLike[str], data: bytes, mode: int = 0o644, *, new: bool = False) -> None:
    """Write ``data`` to ``path`` itself (created or truncated) and fsync it; no rename, no directory fsync.

    Not atomic: a crash can leave ``path`` partly written. Callers write a name nobody reads as
    state yet -- :func:`atomic_write`'s temporary file, or a commit's ``.next`` file, which a later,
    separate step renames with :func:`replace_durable`. ``new``: the file must not exist (not even as
    a symlink), so it gets ``mode`` and no earlier file's.
    """
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL | os.O_NOFOLLOW if new else os.O_TRUNC)
    fd = fsio.open(Path(path), flags, mode)
    try:
        _write_all(fd, data)
    finally:
        fsio.close(fd)


def create_durable(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Create ``path`` holding ``data`` with exactly ``mode``, atomically and durably; raise
    FileExistsError if anything is at ``path`` (a file, a directory, a symlink, dangling or not).

    The bytes go to a temporary file of a fresh random name (``mkstemp``: ``O_CREAT|O_EXCL|O_NOFOLLOW``,
    so no leftover file and no planted symlink is reused), set to ``mode`` whatever the umask, fsynced,
    then hard-linked to ``path`` -- ``link`` never follows or replaces what is there -- and the
    temporary name removed; the directory is fsynced. Where hard links are not supported, ``path``
    itself is created with ``O_EXCL|O_NOFOLLOW`` (not atomic, still never through a symlink).
    """
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        try:
            os.fchmod(fd, mode)
            _write_all(fd, data)
        finally:
            fsio.close(fd)
        try:
            fsio.link(tmp, p, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            fd = fsio.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
            try:
                os.fchmod(fd, mode)
                _write_all(fd, data)
            finally:
                fsio.close(fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            fsio.unlink(tmp)
    fsync_dir(p.parent)


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably (temp, fsync, rename, fsync dir).

    A temporary file left by a crash is removed first, so the new one is created with ``mode``
    (not the leftover's) and never through a symlink planted at its name.
    """
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            fsio.unlink(tmp)
        write_durable(tmp, data, mode, new=True)
        fsio.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            fsio.unlink(tmp)
        raise
    fsync_dir(p.parent)


def replace_durable(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Rename an already-fsynced file over ``dst`` and make the rename durable."""
    fsio.replace(src, dst)
    fsync_dir(Path(dst).parent)


def exchange_durable(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> None:
    """Swap two entries of one directory in one atomic step (``renameat2(RENAME_EXCHANGE)``) and make
    it durable: a crash leaves either both old names or both new ones. OSError (EINVAL, ENOSYS) where
    the kernel or filesystem cannot; the caller falls back to renames."""
    fsio.exchange(a, b)
    fsync_dir(Path(b).parent)


def remove_tree(path: str | os.PathLike[str], *, ignore_errors: bool = False) -> None:
    """``shutil.rmtree`` through the seam (so a recorded crash test sees every name go): files and
    symlinks unlinked, directories removed bottom-up, never following a symlink. No fsync: the caller
    fsyncs the parent once the tree is gone."""
    try:
        with os.scandir(path) as it:
            entries = list(it)
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                remove_tree(e.path, ignore_errors=ignore_errors)
            else:
                fsio.unlink(e.path)
        fsio.rmdir(path)
    except OSError:
        if not ignore_errors:
            raise


def unlink_durable(*paths: str | os.PathLike[str]) -> None:
    """Remove files (missing ones are fine) and fsync each directory once."""
    dirs: set[Path] = set()
    for path in paths:
        p = Path(path)
        with contextlib.suppress(FileNotFoundError):
            fsio.unlink(p)
            dirs.add(p.parent)
    for d in dirs:
        fsync_dir(d)


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """``pwrite`` all of ``data`` at ``offset``. A full filesystem can take part of a write and
    return the count written (tmpfs does, for pages it could still allocate); the next call then
    raises ENOSPC, rather than the rest being dropped without a word."""
    view = memoryview(data)
    while view:
        n = fsio.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
