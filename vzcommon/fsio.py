"""The one seam for every call that changes the target's stored state: writes, truncates, hole punches,
fsyncs and name changes (create, rename, exchange, unlink, link, mkdir, rmdir).

Why a seam: crash safety is proved by recording what a real pass does to the file system and replaying
every state a crash could leave (``tests/reliability``). That needs all those calls in one place.

Until a recorder is installed each name here *is* the ``os`` function (or :func:`sparse.punch_hole`),
so a call through the seam costs one module attribute lookup, as ``os.pwrite`` does: nothing
measurable. :func:`install` rebinds the names to a recorder's wrappers and returns a function that
puts the originals back. Call sites therefore always write ``fsio.pwrite(...)``, never
``from vzcommon.fsio import pwrite`` (that would keep the unrecorded function).

Reads (``pread``, ``lseek``, ``fstat``) change nothing and stay plain ``os`` calls. Bytes another
process writes into one of our files (``qemu-img convert`` restoring a seed) cannot pass through here;
the caller says so with :func:`wrote` once they are written, so a recorder can read them back.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from typing import Any

from .libc import function
from .sparse import punch_hole as _punch_hole

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_renameat2 = function(
    "renameat2", ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint
)


def _exchange(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> None:
    """Swap two names in one atomic step (``renameat2(RENAME_EXCHANGE)``); OSError (EINVAL, ENOSYS)
    where the kernel or filesystem cannot."""
    if _renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), os.fspath(a))


def _wrote(fd: int, offset: int, length: int) -> None:
    """Another process has written ``[offset, offset + length)`` of ``fd``: nothing to do unrecorded."""


open = os.open  # the seam's names are the os names, so call sites change only their module
close = os.close
write = os.write
pwrite = os.pwrite
ftruncate = os.ftruncate
copy_file_range = os.copy_file_range
punch_hole = _punch_hole
fsync = os.fsync
fdatasync = os.fdatasync
replace = os.replace  # also renames directories (rename(2), as os.rename)
exchange = _exchange
unlink = os.unlink
link = os.link
mkdir = os.mkdir
rmdir = os.rmdir
wrote = _wrote

#: the names a recorder may wrap, each with the function it wraps when nothing is recorded
NAMES: tuple[str, ...] = (
    "open",
    "close",
    "write",
    "pwrite",
    "ftruncate",
    "copy_file_range",
    "punch_hole",
    "fsync",
    "fdatasync",
    "replace",
    "exchange",
    "unlink",
    "link",
    "mkdir",
    "rmdir",
    "wrote",
)
_ORIGINAL: dict[str, Callable[..., Any]] = {n: globals()[n] for n in NAMES}


def original(name: str) -> Callable[..., Any]:
    """The unrecorded function behind ``name`` (what a recorder's wrapper calls)."""
    return _ORIGINAL[name]


def install(wrappers: dict[str, Callable[..., Any]]) -> Callable[[], None]:
    """Route the named calls through ``wrappers``; returns the function that puts back what was
    there before (installs nest: a recorder inside a test's own wrappers)."""
    unknown = set(wrappers) - set(NAMES)
    if unknown:
        raise ValueError(f"fsio has no call named {sorted(unknown)}")
    g = globals()
    before = {name: g[name] for name in wrappers}
    g.update(wrappers)

    def uninstall() -> None:
        g.update(before)

    return uninstall
