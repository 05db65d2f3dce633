"""VMDK disks whose data lives in flat extents (monolithicFlat, vmfs, twoGbMaxExtentFlat).

The descriptor lists the extents in order; each maps a run of virtual sectors to a file (and an
offset in it). ZERO extents read as zeros. Sparse create types and snapshot chains are read through
qemu instead (``qemu``); ``open_disk`` picks.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator
from pathlib import Path

from vzcommon.errors import InputError
from vzcommon.sparse import data_segments
from vzcommon.vmdk import FLAT_TYPES, read_descriptor

from ..native.ahead import Region
from .mapping import Mapped, map_range, mappable


class VmdkFlatReader:
    def __init__(self, descriptor: str | os.PathLike[str], name: str) -> None:
        self.path = Path(descriptor)
        self.name = name
        desc = read_descriptor(self.path)
        if desc.create_type not in FLAT_TYPES:
            raise InputError(
                f"unsupported VMDK create type {desc.create_type} ({self.path}): convert it with"
                f" `qemu-img convert -O vmdk -o subformat=monolithicFlat` or give the raw image"
            )
        if desc.parent_cid != 0xFFFFFFFF:
            raise InputError(
                f"{self.path} is a delta disk (parentCID set); give the base disk or a consolidated copy"
            )
        self._starts: list[int] = []
        self._parts: list[tuple[int, int, int]] = []  # (fd or -1 for zero, file offset, length)
        self._mappable: list[bool] = []
        self._opened_sizes: list[int] = []  # each extent file's size at open (-1: a ZERO extent)
        pos = 0
        try:
            for ext in desc.extents:
                length = ext.sectors * 512
                if ext.kind in ("FLAT", "VMFS"):
                    fd = os.open(self.path.parent / ext.filename, os.O_RDONLY | os.O_CLOEXEC)
                    self._parts.append((fd, ext.offset_sectors * 512, length))
                    self._mappable.append(mappable(fd))
                    self._opened_sizes.append(os.fstat(fd).st_size)
                elif ext.kind == "ZERO":
                    self._parts.append((-1, 0, length))
                    self._mappable.append(False)
                    self._opened_sizes.append(-1)
                else:
                    raise InputError(f"unsupported VMDK extent type {ext.kind} in {self.path}")
                self._starts.append(pos)
                pos += length
        except OSError as exc:
            self.close()
            raise InputError(
                f"cannot open an extent of {self.path}: {exc.strerror} ({exc.filename})"
            ) from None
        except BaseException:
            self.close()
            raise
        if pos == 0:
            self.close()
            raise InputError(f"{self.path} describes no extents")
        self.size = pos

    def _locate(self, offset: int) -> int:
        return bisect.bisect_right(self._starts, offset) - 1

    def pread(self, offset: int, length: int) -> bytes:
        buf = bytearray(max(0, min(length, self.size - offset)))
        self.pread_into(offset, memoryview(buf))
        return bytes(buf)

    def pread_into(self, offset: int, view: memoryview) -> int:
        """Read into ``view`` across extents; ZERO extents and short extent files read as zeros."""
        end = min(offset + len(view), self.size)
        pos = offset
        while pos < end:
            i = self._locate(pos)
            fd, foff, flen = self._parts[i]
            within = pos - self._starts[i]
            n = min(end - pos, flen - within)
            target = view[pos - offset : pos - offset + n]
            got = 0
            if fd >= 0:
                while got < n:
                    r = os.preadv(fd, [target[got:]], foff + within + got)
                    if r <= 0:
                        break
                    got += r
            if got < n:
                target[got:] = bytes(n - got)
            pos += n
        return end - offset if end > offset else 0

    def check_size(self) -> None:
        """Raise InputError if an extent file shrank since it was opened (see ``RawReader.check_size``)."""
        for (fd, _, _), was in zip(self._parts, self._opened_sizes, strict=True):
            if fd >= 0 and os.fstat(fd).st_size < was:
                raise InputError(
                    f"an extent of {self.path} shrank during the pass; nothing of this pass is kept:"
                    " replicate from a snapshot or a copy that does not change"
                )

    def map_range(self, offset: int, length: int) -> Mapped | None:
        """The range mapped read-only when it lies inside one flat extent file, else None."""
        i = self._locate(offset)
        fd, foff, flen = self._parts[i]
        within = offset - self._starts[i]
        if not self._mappable[i] or within + length > flen:
            return None
        return map_range(fd, foff + within, length)

    def region(self) -> Region | None:
        """The disk as one region of one extent file, when it is one FLAT extent (for hash-ahead)."""
        if len(self._parts) != 1 or self._parts[0][0] < 0:
            return None
        fd, foff, _ = self._parts[0]
        return Region(fd, foff, self._mappable[0])

    def data_extents(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int]]:
        stop = self.size if end is None else min(end, self.size)
        pos = start
        while pos < stop:
            i = self._locate(pos)
            fd, foff, flen = self._parts[i]
            part_end = min(stop, self._starts[i] + flen)
            if fd >= 0:
                base = foff - self._starts[i]
                for off, n in data_segments(fd, pos + base, part_end + base):
                    yield off - base, n
            pos = part_end

    def close(self) -> None:
        for fd, _, _ in self._parts:
            if fd >= 0:
                os.close(fd)
        self._parts = []
