"""Shared ground for the ABM parsers: volumes (partitions, logical volumes), the give-up error, bitmaps.

Every parser sees a :class:`Volume`, a contiguous byte space that may be scattered over the disk (an
LVM logical volume made of several segments), and returns the *active* ranges in volume coordinates.
A parser that meets anything it does not fully understand raises :class:`NotParsed`; the caller then
treats the whole volume as active. That is the one safety rule of ABM: when in doubt, read it.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterable, Iterator

from source_agent.disks.base import VolumeReader
from vzcommon.errors import VzrepError

Range = tuple[int, int]


class NotParsed(VzrepError):
    """A volume could not be parsed with certainty; it stays fully active. Never leaves ABM."""


class Volume:
    """A byte space made of ``(volume_offset, disk_offset, length)`` segments of one disk."""

    def __init__(self, reader: VolumeReader, segments: list[tuple[int, int, int]], label: str) -> None:
        self.reader = reader
        self.label = label
        self._segs = sorted(segments)
        self._vstarts = [s[0] for s in self._segs]
        pos = 0
        for voff, doff, length in self._segs:
            if voff != pos or length <= 0 or doff < 0 or doff + length > reader.size:
                raise NotParsed(f"{label}: its segments do not tile it or run past the disk end")
            pos += length
        self.size = pos

    @classmethod
    def whole(cls, reader: VolumeReader) -> Volume:
        return cls(reader, [(0, 0, reader.size)], reader.name)

    def slice(self, start: int, length: int, label: str) -> Volume:
        """A sub-range of this volume (a partition), as a volume of its own."""
        if start < 0 or length <= 0 or start + length > self.size:
            raise NotParsed(f"{label} [{start}, +{length}) lies outside {self.label}")
        return Volume(self.reader, [(o - start, d, n) for o, d, n in self._map(start, start + length)], label)

    def compose(self, segments: list[tuple[int, int, int]], label: str) -> Volume:
        """A volume made of ``(new_offset, offset_in_self, length)`` pieces of this one (an LVM LV)."""
        pieces = []
        for new_off, off, length in segments:
            if off < 0 or length <= 0 or off + length > self.size:
                raise NotParsed(f"{label}: a segment lies outside {self.label}")
            for v, d, n in self._map(off, off + length):
                pieces.append((new_off + v - off, d, n))
        return Volume(self.reader, pieces, label)

    def _map(self, start: int, end: int) -> Iterator[tuple[int, int, int]]:
        """Yield ``(volume_offset, disk_offset, length)`` pieces covering ``[start, end)``."""
        i = max(bisect.bisect_right(self._vstarts, start) - 1, 0)
        while start < end and i < len(self._segs):
            voff, doff, length = self._segs[i]
            if start < voff + length:
                n = min(end, voff + length) - start
                yield start, doff + start - voff, n
                start += n
            i += 1

    def pread(self, offset: int, length: int) -> bytes:
        """Read volume bytes; short only at the volume end."""
        if offset < 0 or length < 0:
            raise NotParsed(f"{self.label}: negative read at {offset}")
        parts = []
        for _, doff, n in self._map(offset, min(offset + length, self.size)):
            data = self.reader.pread(doff, n)
            parts.append(data)
            if len(data) < n:
                break
        return b"".join(parts)

    def read_exact(self, offset: int, length: int, what: str) -> bytes:
        """Read bytes a parser needs; a short read means the structure points past the volume."""
        data = self.pread(offset, length)
        if len(data) != length:
            raise NotParsed(f"{self.label}: {what} at {offset} lies past the end of the volume")
        return data

    def to_disk(self, ranges: Iterable[Range]) -> Iterator[Range]:
        """Map volume ranges to disk ranges (one volume range may become several)."""
        for start, end in ranges:
            for _, doff, n in self._map(max(start, 0), min(end, self.size)):
                yield doff, doff + n

    def disk_ranges(self) -> Iterator[Range]:
        return self.to_disk([(0, self.size)])


class RunBuilder:
    """Collect sorted ranges, merging touching ones as they arrive (keeps the list small)."""

    def __init__(self) -> None:
        self.ranges: list[list[int]] = []

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        r = self.ranges
        if r and start <= r[-1][1]:
            if start < r[-1][0]:
                r.append([start, end])  # out of order: normalised later by ExtentList
            elif end > r[-1][1]:
                r[-1][1] = end
        else:
            r.append([start, end])

    def result(self) -> list[Range]:
        return [(s, e) for s, e in self.ranges]


_CHUNK = 4096


def set_bit_runs(bitmap: bytes, nbits: int) -> Iterator[Range]:
    """Yield ``[first, end)`` bit ranges of set bits (bit 0 = LSB of byte 0), among the first ``nbits``.

    Runs split at chunk borders; callers merge with :class:`RunBuilder`. Whole-zero and whole-one
    chunks take a fast path, so a mostly empty or mostly full bitmap costs almost nothing.
    """
    nbytes = min(len(bitmap), (nbits + 7) // 8)
    for base in range(0, nbytes, _CHUNK):
        chunk = bitmap[base : min(base + _CHUNK, nbytes)]
        bit0 = base * 8
        if chunk.count(0) == len(chunk):
            continue
        if chunk.count(0xFF) == len(chunk):
            yield bit0, min(bit0 + len(chunk) * 8, nbits)
            continue
        x = int.from_bytes(chunk, "little")
        while x:
            low = x & -x
            s = low.bit_length() - 1
            y = x + low
            e = (y & -y).bit_length() - 1
            if bit0 + s >= nbits:
                return
            yield bit0 + s, min(bit0 + e, nbits)
            x &= y


def popcount(data: bytes) -> int:
    return int.from_bytes(data, "little").bit_count()


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """Standard CRC-32C (Castagnoli); only used on small structures (superblocks), so pure Python."""
    c = crc ^ 0xFFFFFFFF
    t = _CRC32C
    for b in data:
        c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def u16le(b: bytes, off: int) -> int:
    return int(struct.unpack_from("<H", b, off)[0])


def u32le(b: bytes, off: int) -> int:
    return int(struct.unpack_from("<I", b, off)[0])


def u64le(b: bytes, off: int) -> int:
    return int(struct.unpack_from("<Q", b, off)[0])


def u16be(b: bytes, off: int) -> int:
    return int(struct.unpack_from(">H", b, off)[0])


def u32be(b: bytes, off: int) -> int:
    return int(struct.unpack_from(">I", b, off)[0])


def u64be(b: bytes, off: int) -> int:
    return int(struct.unpack_from(">Q", b, off)[0])
