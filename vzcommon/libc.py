"""glibc, for the few calls Python's ``os`` lacks (``fallocate`` hole punching, ``sync_file_range``)."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any


def _load() -> ctypes.CDLL:
    """glibc by its soname; ``find_library`` (which runs ldconfig, ~10 ms at every start) only if absent."""
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        from ctypes.util import find_library

        return ctypes.CDLL(find_library("c"), use_errno=True)


libc = _load()


def function(name: str, *argtypes: Any) -> Callable[..., int] | None:
    """A libc function with its argument types and an ``int`` result, or None if this libc lacks it."""
    fn = getattr(libc, name, None)
    if fn is None:
        return None
    fn.argtypes = list(argtypes)
    fn.restype = ctypes.c_int
    result: Callable[..., int] = fn
    return result
