"""Extent lists: sorted, non-overlapping byte ranges, and the seed's compact ``.vztemp`` file format.

ABM (active blocks) and CBT (changed blocks) each produce an :class:`ExtentList`; the disk data filter
is their intersection. Extents are half-open ``[start, end)`` byte ranges.

``.vztemp`` file format (little endian)::

    magic  b"VZXT"   version u16=1   kind u16 (1 active, 2 changed, 3 data filter)
    disk_size u64    count u64
    count x (start u64, length u64)
    crc32 u32 of everything before it
"""

from __future__ import annotations

import bisect
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from enum import IntEnum
from pathlib import Path

from vzcommon.durable import atomic_write
from vzcommon.errors import IntegrityError

_MAGIC = b"VZXT"
_HEAD = struct.Struct("<4sHHQQ")
_EXT = struct.Struct("<QQ")


class FilterKind(IntEnum):
    ACTIVE = 1  # <disk>-abbt.vztemp
    CHANGED = 2  # <disk>.vztemp (CBT)
    DATA = 3  # <disk>-flat-map.vztemp (changed ∩ active)


class ExtentList:
    """An immutable set of byte ranges, normalised (sorted, merged, non-empty)."""

    __slots__ = ("_ends", "_starts")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        """``ranges`` are ``(start, end)`` pairs in any order, possibly overlapping."""
        merged: list[list[int]] = []
        for start, end in sorted((int(s), int(e)) for s, e in ranges):
            if start < 0 or end < start:
                raise ValueError(f"bad extent [{start}, {end})")
            if start == end:
                continue
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self._starts = [s for s, _ in merged]
        self._ends = [e for _, e in merged]

    @classmethod
    def from_lengths(cls, extents: Iterable[tuple[int, int]]) -> ExtentList:
        """Build from ``(offset, length)`` pairs, as vSphere's ``QueryChangedDiskAreas`` gives them."""
        return cls((o, o + n) for o, n in extents)

    @classmethod
    def full(cls, size: int) -> ExtentList:
        return cls([(0, size)])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._starts, self._ends, strict=True))

    def __len__(self) -> int:
        return len(self._starts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExtentList) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"ExtentList({list(self)!r})"

    @property
    def total(self) -> int:
        return sum(e - s for s, e in self)

    def union(self, other: ExtentList) -> ExtentList:
        return ExtentList([*self, *other])

    def intersect(self, other: ExtentList) -> ExtentList:
        out: list[tuple[int, int]] = []
        a, b = list(self), list(other)
        i = j = 0
        while i < len(a) and j < len(b):
            start = max(a[i][0], b[j][0])
            end = min(a[i][1], b[j][1])
            if start < end:
                out.append((start, end))
            if a[i][1] < b[j][1]:
                i += 1
            else:
                j += 1
        return ExtentList(out)

    def subtract(self, other: ExtentList) -> ExtentList:
        """The ranges of ``self`` not covered by ``other`` (ABM: active minus skipped swap files)."""
        out: list[tuple[int, int]] = []
        b = list(other)
        j = 0
        for start, end in self:
            while j < len(b) and b[j][1] <= start:
                j += 1
            k, pos = j, start
            while k < len(b) and b[k][0] < end:
                if b[k][0] > pos:
                    out.append((pos, b[k][0]))
                pos = max(pos, b[k][1])
                k += 1
            if pos < end:
                out.append((pos, end))
        return ExtentList(out)

    def clip(self, size: int) -> ExtentList:
        return self.intersect(ExtentList.full(size))

    def overlaps(self, start: int, end: int) -> bool:
        """Whether any extent touches ``[start, end)``."""
        i = bisect.bisect_right(self._starts, start) - 1
        if i >= 0 and self._ends[i] > start:
            return True
        return i + 1 < len(self._starts) and self._starts[i + 1] < end

    def align(self, block_size: int) -> ExtentList:
        """Widen every extent to whole blocks, so a partly active block counts as active."""
        return ExtentList((s // block_size * block_size, -(-e // block_size) * block_size) for s, e in self)

    # -- the .vztemp file -------------------------------------------------------------------------

    def to_bytes(self, kind: FilterKind, disk_size: int) -> bytes:
        body = bytearray(_HEAD.pack(_MAGIC, 1, int(kind), disk_size, len(self)))
        for s, e in self:
            body += _EXT.pack(s, e - s)
        body += struct.pack("<I", zlib.crc32(body))
        return bytes(body)

    def save(self, path: str | os.PathLike[str], kind: FilterKind, disk_size: int) -> None:
        atomic_write(path, self.to_bytes(kind, disk_size))

    @classmethod
    def from_bytes(cls, data: bytes) -> tuple[ExtentList, FilterKind, int]:
        """Parse a ``.vztemp`` file; returns ``(extents, kind, disk_size)``."""
        if len(data) < _HEAD.size + 4 or data[:4] != _MAGIC:
            raise IntegrityError("not a vzrep extent filter (.vztemp) file")
        (crc,) = struct.unpack_from("<I", data, len(data) - 4)
        if zlib.crc32(data[:-4]) != crc:
            raise IntegrityError("extent filter (.vztemp) file fails its checksum; it will be rebuilt")
        _, version, kind, disk_size, count = _HEAD.unpack_from(data)
        if version != 1 or len(data) != _HEAD.size + count * _EXT.size + 4:
            raise IntegrityError(f"extent filter (.vztemp) version {version} or length is not supported")
        if kind not in set(FilterKind):  # found by fuzzing: FilterKind(kind) raised ValueError
            raise IntegrityError(f"extent filter (.vztemp) of unknown kind {kind}; it will be rebuilt")
        exts = [_EXT.unpack_from(data, _HEAD.size + i * _EXT.size) for i in range(count)]
        return cls.from_lengths(exts), FilterKind(kind), disk_size

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> tuple[ExtentList, FilterKind, int]:
        return cls.from_bytes(Path(path).read_bytes())
