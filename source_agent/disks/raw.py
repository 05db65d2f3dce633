"""Raw disk images and block devices: positioned reads, holes found with SEEK_DATA/SEEK_HOLE."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

from vzcommon.errors import InputError
from vzcommon.sparse import data_segments

from ..native.ahead import Region
from .mapping import Mapped, map_range, mappable


class RawReader:
    """A raw image file or a block device, opened read-only."""

    def __init__(self, path: str | os.PathLike[str], name: str) -> None:
        self.path = Path(path)
        self.name = name
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise InputError(f"cannot open disk {self.path}: {exc.strerror}") from None
        st = os.fstat(self._fd)
        self.is_device = stat.S_ISBLK(st.st_mode)
        if not (self.is_device or stat.S_ISREG(st.st_mode)):
            os.close(self._fd)
            raise InputError(f"{self.path} is neither a regular file nor a block device")
        self.size = self._current_size()
        self._mappable = not self.is_device and mappable(self._fd)
        if self.size == 0 or self.size % 512:
            os.close(self._fd)
            raise InputError(
                f"disk {self.path} has {self.size} bytes; a disk is a non-empty multiple of 512 bytes"
            )

    def _current_size(self) -> int:
        return os.lseek(self._fd, 0, os.SEEK_END) if self.is_device else os.fstat(self._fd).st_size

    def pread(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def pread_into(self, offset: int, view: memoryview) -> int:
        """Read into ``view`` without an intermediate copy; returns the bytes read (short at the end)."""
        done = 0
        while done < len(view):
            n = os.preadv(self._fd, [view[done:]], offset + done)
            if n <= 0:
                break
            done += n
        return done

    def check_size(self) -> None:
        """Raise InputError if the disk is now smaller than when it was opened.

        Bytes past a file's end read as zeros, so a source truncated during a pass would otherwise
        reach the replica as zeros; the pass fails instead, and the target rolls it back.
        """
        now = self._current_size()
        if now < self.size:
            raise InputError(
                f"disk {self.path} shrank from {self.size} to {now} bytes during the pass; nothing"
                " of this pass is kept: replicate from a snapshot or a copy that does not change"
            )

    def map_range(self, offset: int, length: int) -> Mapped | None:
        """The range mapped read-only, or None: read it with :meth:`pread_into` (see ``mapping``)."""
        return map_range(self._fd, offset, length) if self._mappable else None

    def region(self) -> Region:
        """The whole disk as one region of our fd (for hash-ahead, ``source_agent.native.ahead``)."""
        return Region(self._fd, 0, self._mappable)

    def data_extents(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int]]:
        stop = self.size if end is None else min(end, self.size)
        if self.is_device:
            if start < stop:
                yield start, stop - start
            return
        yield from data_segments(self._fd, start, stop)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
