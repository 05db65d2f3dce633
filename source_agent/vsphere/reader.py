"""A minimal :class:`~source_agent.disks.base.DiskReader` over a HotAdded device or a flat file.

Stand-in until the core's raw reader (``source_agent/disks/raw.py``) exists; the only vSphere-specific
part is that the size comes from vSphere (the disk's capacity), not from the file: a flat file on a
thin datastore may be shorter, and the missing tail reads as zeros.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path


class DeviceReader:
    def __init__(self, name: str, path: str | os.PathLike[str], size: int) -> None:
        self.name = name
        self.size = size
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._regular = stat.S_ISREG(os.fstat(self._fd).st_mode)

    def pread(self, offset: int, length: int) -> bytes:
        length = max(0, min(length, self.size - offset))
        data = os.pread(self._fd, length, offset)
        if len(data) < length:  # past the end of a short flat file: zeros
            data += bytes(length - len(data))
        return data

    def data_extents(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int]]:
        end = self.size if end is None else min(end, self.size)
        if not self._regular:
            if start < end:
                yield start, end - start
            return
        file_end = min(end, os.fstat(self._fd).st_size)
        pos = start
        while pos < file_end:
            try:
                data = os.lseek(self._fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                return
            if data >= file_end:
                return
            hole = min(os.lseek(self._fd, data, os.SEEK_HOLE), file_end)
            yield data, hole - data
            pos = hole

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> DeviceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
