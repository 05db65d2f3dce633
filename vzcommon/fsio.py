"""The one seam for every call that changes the target's stored state: writes, truncates, hole punches,
fsyncs and name changes (create, rename, unlink, link, mkdir, rmdir).

Why a seam: crash safety is proved by recording what a real pass does to the file system and replaying
every state a crash could leave (``tests/reliability``). That needs all those calls in one place.

Until a recorder is installed each name here *is* the ``os`` function (or :func:`sparse.punch_hole`),
so a call through the seam costs one module attribute lookup, as ``os.pwrite`` does: nothing
measurable. :func:`install` rebinds the names to a recorder's wrappers and returns a function that
puts the originals back. Call sites therefore always write ``fsio.pwrite(...)``, never
``from vzcommon.fsio import pwrite`` (that would keep the unrecorded function).

Reads (``pread``, ``lseek``, ``fstat``) change nothing and stay plain ``os`` calls.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from .sparse import punch_hole as _punch_hole

open = os.open  # the seam's names are the os names, so call sites change only their module
close = os.close
write = os.write
pwrite = os.pwrite
ftruncate = os.ftruncate
copy_file_range = os.copy_file_range
punch_hole = _punch_hole
fsync = os.fsync
fdatasync = os.fdatasync
replace = os.replace
unlink = os.unlink
link = os.link
mkdir = os.mkdir
rmdir = os.rmdir

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
    "unlink",
    "link",
    "mkdir",
    "rmdir",
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
