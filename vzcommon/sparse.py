"""Holes in files: find them with SEEK_DATA/SEEK_HOLE, make them with FALLOC_FL_PUNCH_HOLE.

Both agents use this: the source never reads a hole of a sparse image, the target keeps replicas thin
by punching holes where the source sent zeros.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator

from .libc import function

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_fallocate = function("fallocate", ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong)
_ZEROS = bytes(1 << 20)


def data_segments(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """Yield ``(offset, length)`` of the data (non-hole) parts of ``[start, end)``.

    Falls back to the whole range when the file or filesystem cannot tell.
    """
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after pos
                return
            if exc.errno == errno.EINVAL:  # not supported here
                yield pos, end - pos
                return
            raise
        if data >= end:
            return
        try:
            hole = os.lseek(fd, data, os.SEEK_HOLE)
        except OSError:
            hole = end
        hole = min(hole, end)
        yield data, hole - data
        pos = hole


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Make ``[offset, offset+length)`` read as zeros, freeing its space where the filesystem can."""
    if length <= 0:
        return
    if _fallocate is not None:
        if _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise OSError(err, os.strerror(err))
    pos = offset
    while pos < offset + length:
        n = os.pwrite(fd, _ZEROS[: min(len(_ZEROS), offset + length - pos)], pos)
        pos += n
