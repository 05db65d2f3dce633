"""Disks in any format qemu reads: sparse VMDKs (monolithicSparse, streamOptimized, twoGbMaxExtentSparse,
snapshot chains), qcow2 with backing files, VHDX, OVA members.

The image is inspected and checked by ``qemu-img`` and read through a private qemu-nbd
(``vzcommon.images``); only its allocated areas are read (``qemu-img map``). Nothing is mapped and the
disk is not one fd region, so the pass reads it in windows and hash-ahead does not run for it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from vzcommon.errors import InputError
from vzcommon.images import Image

from ..native.ahead import Region
from .mapping import Mapped


class QemuReader:
    """A disk image read through qemu's block layer (read-only)."""

    def __init__(self, path: str | os.PathLike[str], name: str) -> None:
        self.path = Path(path)
        self.name = name
        self._image = Image(self.path)
        try:
            self._image.start()
        except BaseException:
            self._image.close()
            raise
        self.size = self._image.size
        self.format = self._image.format
        #: every file of the chain and its size at open, so a shrunk one fails the pass (``check_size``)
        self._files = {f: _size(f) for f, _ in self._image.info.chain if not f.startswith("json:")}

    def pread(self, offset: int, length: int) -> bytes:
        buf = bytearray(max(0, min(length, self.size - offset)))
        self.pread_into(offset, memoryview(buf))
        return bytes(buf)

    def pread_into(self, offset: int, view: memoryview) -> int:
        return self._image.pread_into(offset, view)

    def data_extents(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int]]:
        return self._image.data_extents(start, end)

    def map_range(self, offset: int, length: int) -> Mapped | None:
        return None

    def region(self) -> Region | None:
        return None

    def check_size(self) -> None:
        """Raise InputError if a file of the image shrank since it was opened (see ``RawReader.check_size``)."""
        for f, was in self._files.items():
            if _size(f) < was:
                raise InputError(
                    f"{f} (of disk {self.path}) shrank during the pass; nothing of this pass is kept:"
                    " replicate from a snapshot or a copy that does not change"
                )

    def close(self) -> None:
        self._image.close()


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1
