"""A sparse disk image as fuzz input: a small byte string that stands for a disk of up to 4 GiB.

Filesystems put their structures far apart (an XFS allocation group header sits gigabytes from the
superblock), so a flat byte string would either be huge or miss them. The input is instead::

    size_kib u32                                  the disk size, in KiB (taken modulo 4 GiB, at least 1 KiB)
    repeated: sector u32, length u16, data         ``data`` (up to ``length`` bytes) at ``sector * 512``

everything else reads as zeros, and a later piece overwrites an earlier one. :func:`encode` turns a
real image (made by mkfs) into this form for the seed corpus.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterator

_HEAD = struct.Struct("<I")
_PIECE = struct.Struct("<IH")
MAX_SIZE = 4 << 30


class SparseImage:
    """A :class:`~source_agent.disks.base.VolumeReader` over a decoded sparse image."""

    name = "fuzz"

    def __init__(self, data: bytes) -> None:
        if len(data) < _HEAD.size:
            raw = 0
        else:
            (raw,) = _HEAD.unpack_from(data)
        self.size = max(1024, (raw * 1024) % MAX_SIZE)
        pieces: dict[int, bytes] = {}
        pos = _HEAD.size
        while pos + _PIECE.size <= len(data):
            sector, length = _PIECE.unpack_from(data, pos)
            pos += _PIECE.size
            chunk = data[pos : pos + length]
            pos += length
            start = sector * 512 % self.size
            chunk = chunk[: self.size - start]
            if chunk:
                _overlay(pieces, start, chunk)
        self._starts = sorted(pieces)
        self._pieces = [pieces[s] for s in self._starts]

    def pread(self, offset: int, length: int) -> bytes:
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        out = bytearray(end - offset)
        i = max(bisect.bisect_right(self._starts, offset) - 1, 0)
        while i < len(self._starts) and self._starts[i] < end:
            s = self._starts[i]
            p = self._pieces[i]
            lo, hi = max(s, offset), min(s + len(p), end)
            if lo < hi:
                out[lo - offset : hi - offset] = p[lo - s : hi - s]
            i += 1
        return bytes(out)

    def data_extents(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int]]:
        stop = self.size if end is None else end
        yield start, stop - start


def _overlay(pieces: dict[int, bytes], start: int, chunk: bytes) -> None:
    """Put ``chunk`` at ``start``, cutting the pieces it overlaps (so pieces never overlap)."""
    end = start + len(chunk)
    for s in [s for s, p in pieces.items() if s < end and s + len(p) > start]:
        p = pieces.pop(s)
        if s < start:
            pieces[s] = p[: start - s]
        if s + len(p) > end:
            pieces[end] = p[end - s :]
    pieces[start] = chunk


def encode(image: bytes, *, limit: int = 64 * 1024, run_limit: int = 8 * 1024) -> bytes:
    """The sparse form of ``image``: its non-zero 512-byte sectors, at most ``limit`` bytes of them and
    the first ``run_limit`` bytes of each run of them.

    What is left out reads as zeros (a seed stays small; metadata sits at the start of its run, and
    the tail of a big run is mostly data or log the parsers only sample).
    """
    out = bytearray(_HEAD.pack(-(-len(image) // 1024)))
    used = 0
    sector, n = 0, len(image) // 512
    while sector < n and used < limit:
        if not any(image[sector * 512 : sector * 512 + 512]):
            sector += 1
            continue
        first = sector
        while sector < n and any(image[sector * 512 : sector * 512 + 512]):
            sector += 1
        kept = min(sector - first, run_limit // 512)
        for at in range(first, first + kept, 127):  # a piece holds at most 127 sectors (u16 length)
            data = image[at * 512 : min(at + 127, first + kept) * 512]
            out += _PIECE.pack(at, len(data)) + data
            used += len(data)
    return bytes(out)
