"""The source's block pipeline for one disk: read -> filter -> zero check -> hash/compare -> compress.

A disk is scanned in chunks of ``CHUNK_BYTES`` in a worker thread; each chunk yields the
messages to send and updates the source's copy of the map. The session sends chunk *k* while the
thread scans chunk *k+1* (a bounded queue of two), so memory stays bounded whatever the disk size.

Per block:

* outside the filter (ABM inactive, CBT unchanged): not read, not sent, map entry kept;
* in a hole of a sparse source, or all zeros: a ZERO_RANGE, unless the map already says zero;
* hash equals the map entry: skipped;
* otherwise a BLOCK, zstd-compressed when compression is on for this chunk and it shrinks the block.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from enum import Enum

import zstandard
from blake3 import blake3

from protocol.messages import Block, Codec, ZeroRange
from source_agent.disks.base import DiskReader
from source_agent.disks.mapping import Mapped
from source_agent.filters.extents import ExtentList
from vzcommon.blockhash import HASH_LEN, zero_block, zero_hash
from vzcommon.vzmap import MapBuilder

CHUNK_BYTES = 16 << 20  # per scanned chunk (its messages); at most ~4 chunks are in memory at once
#: a chunk is read and scanned in windows of this size, so the bytes are still in the CPU's cache
#: when they are checked for zeros and hashed (bench: 512 KiB - 1 MiB windows scan a warm 4 GiB
#: image 2.5x faster than 16 MiB ones on a 2-core Xeon, and as fast as mmap)
WINDOW_BYTES = 1 << 20
ZSTD_LEVEL = 1  # bench: level 1 gives most of the ratio at the highest speed (README, "Tuning")


@dataclass
class DiskStats:
    """What one disk's pass did; rendered in the report."""

    name: str = ""
    size: int = 0
    mode: str = "differential"
    reason: str = ""
    bytes_scanned: int = 0  # bytes the plan covered (inside the filter)
    bytes_read: int = 0  # bytes actually read from the source disk
    bytes_skipped_filter: int = 0  # bytes outside the ABM/CBT filter, never read
    blocks_total: int = 0
    blocks_changed: int = 0  # BLOCK messages sent
    blocks_unchanged: int = 0  # hash matched the map
    zero_blocks_skipped: int = 0  # zero and the map already said zero: nothing sent
    zero_blocks_sent: int = 0  # zero, sent as part of a ZERO_RANGE (no payload)
    payload_raw: int = 0  # bytes of changed blocks
    payload_wire: int = 0  # their bytes after compression
    blocks_compressed: int = 0
    wire_bytes: int = 0  # protocol bytes sent for this disk (frames)
    map_bytes_received: int = 0
    map_status: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def compression_ratio(self) -> float:
        return self.payload_raw / self.payload_wire if self.payload_wire else 1.0

    def add(self, other: ChunkStats) -> None:
        for f in fields(other):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass
class ChunkStats:
    """Counters of one chunk, added to the disk's stats by the session (one writer, no races)."""

    bytes_scanned: int = 0
    bytes_read: int = 0
    bytes_skipped_filter: int = 0
    blocks_changed: int = 0
    blocks_unchanged: int = 0
    zero_blocks_skipped: int = 0
    zero_blocks_sent: int = 0
    payload_raw: int = 0
    payload_wire: int = 0
    blocks_compressed: int = 0


class Compress(Enum):
    OFF = "off"
    ON = "on"
    #: compress the chunk if its first changed block shrinks to under PROBE_RATIO
    PROBE = "probe"


PROBE_RATIO = 0.85
GIVE_UP_AFTER = 4  # consecutive blocks that do not shrink: stop compressing the rest of the chunk


@dataclass
class Chunk:
    messages: list[Block | ZeroRange]
    end: int  # byte offset where the chunk ends
    stats: ChunkStats


_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    """One compressor per worker thread (a ZstdCompressor must not be shared between threads)."""
    cctx: zstandard.ZstdCompressor | None = getattr(_local, "cctx", None)
    if cctx is None:
        cctx = _local.cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return cctx


class DiskScanner:
    """Scans one disk chunk by chunk; :meth:`scan` runs in worker threads, several chunks at once."""

    def __init__(
        self,
        disk_id: int,
        reader: DiskReader,
        block_size: int,
        builder: MapBuilder,
        stats: DiskStats,
        filt: ExtentList | None = None,
    ) -> None:
        self.disk_id = disk_id
        self.reader = reader
        self.bs = block_size
        self.size = reader.size
        self.builder = builder
        self.filter = filt.align(block_size).clip(self.size) if filt is not None else None
        self.nblocks = -(-self.size // block_size)
        self.chunk_blocks = max(2, CHUNK_BYTES // block_size)
        self.window_blocks = max(1, WINDOW_BYTES // block_size)
        self._zero_hash = zero_hash(block_size)
        self._read_into = getattr(reader, "pread_into", None)
        self._map: Callable[[int, int], Mapped | None] | None = getattr(reader, "map_range", None)
        stats.blocks_total = self.nblocks

    def chunks(self) -> range:
        return range(0, self.nblocks, self.chunk_blocks)

    def new_buffer(self) -> bytearray:
        """A read buffer for one scanning thread: one window."""
        return bytearray(self.window_blocks * self.bs)

    def _wanted(self, first: int, count: int) -> list[bool]:
        if self.filter is None:
            return [True] * count
        return [self.filter.overlaps((first + i) * self.bs, (first + i + 1) * self.bs) for i in range(count)]

    def scan(self, first: int, mode: Compress, buf: bytearray) -> Chunk:
        """Scan the chunk starting at block ``first`` using ``buf`` (owned by this call until it returns).

        The chunk is read through a mapping when the reader can map it (``disks.mapping``), else
        window by window into ``buf``.
        """
        count = min(self.chunk_blocks, self.nblocks - first)
        start, end = first * self.bs, min((first + count) * self.bs, self.size)
        wanted = self._wanted(first, count)
        mapped = self._map(start, end - start) if self._map is not None and any(wanted) else None
        try:
            return self._scan(first, count, wanted, mode, buf, mapped)
        finally:
            if mapped is not None:
                mapped.close()

    def _scan(
        self,
        first: int,
        count: int,
        wanted: list[bool],
        mode: Compress,
        buf: bytearray,
        mapped: Mapped | None,
    ) -> Chunk:
        bs = self.bs
        st = ChunkStats()
        start, end = first * bs, min((first + count) * bs, self.size)
        entries = self.builder.read_entries(first, count)
        msgs: list[Block | ZeroRange] = []
        updates: list[tuple[int, bytes]] = []
        zero_run: list[int] = []  # [offset, length] of the pending zero range
        compress = mode is Compress.ON
        probing = mode is Compress.PROBE
        misses = 0

        def flush_zero() -> None:
            if zero_run:
                msgs.append(ZeroRange(self.disk_id, zero_run[0], zero_run[1]))
                zero_run.clear()

        # The hot loop: locals and inlined checks (it runs once per block of the disk).
        # ``view`` holds the bytes being scanned: the mapped chunk, or the current window in ``buf``
        # (then ``base`` is the window's first byte within the chunk); ``is_zero(zeros, pos)`` is a
        # memcmp of ``len(zeros)`` bytes at ``pos`` of ``view``.
        is_zero: Callable[[bytes, int], bool]
        if mapped is not None:
            view, is_zero, into = mapped.view, mapped.is_zero, None
        else:
            view, is_zero, into = memoryview(buf), buf.startswith, buf
        zb, zh_full = zero_block(bs), self._zero_hash
        scanned = unchanged = base = 0
        win = self.window_blocks
        segments = list(self.reader.data_extents(start, end)) if any(wanted) else []
        has_data: list[bool] = []
        for k in range(count):
            if k % win == 0:  # the next window: which blocks hold data; read them into buf
                w_end = min(start + (k + win) * bs, end)
                has_data = self._fill(into, start + k * bs, w_end, wanted[k : k + win], segments, st)
                base = 0 if into is None else k * bs
            off = (first + k) * bs
            n = bs if off + bs <= self.size else self.size - off
            if not wanted[k]:
                if zero_run:
                    flush_zero()
                st.bytes_skipped_filter += n
                continue
            pos = k * bs - base
            old = entries[k * HASH_LEN : (k + 1) * HASH_LEN]
            scanned += n
            if not has_data[k % win] or is_zero(zb if n == bs else zero_block(n), pos):  # hole, or memcmp
                zh = zh_full if n == bs else zero_hash(n)
                if old == zh:
                    st.zero_blocks_skipped += 1
                    if zero_run:
                        flush_zero()
                    continue
                st.zero_blocks_sent += 1
                updates.append((first + k, zh))
                if zero_run and zero_run[0] + zero_run[1] == off:
                    zero_run[1] += n
                else:
                    flush_zero()
                    zero_run.extend((off, n))
                continue
            if zero_run:
                flush_zero()
            block = view[pos : pos + n]
            digest = blake3(block).digest()
            if digest == old:
                unchanged += 1
                continue
            payload, codec = bytes(block), Codec.NONE
            if compress or probing:
                packed = _compressor().compress(payload)
                if probing:  # the chunk's first changed block decides for the chunk
                    probing, compress = False, len(packed) < n * PROBE_RATIO
                if len(packed) < n - n // 32:  # keep it only if it saves at least ~3%
                    payload, codec = packed, Codec.ZSTD
                    st.blocks_compressed += 1
                    misses = 0
                else:
                    misses += 1
                    compress = compress and misses < GIVE_UP_AFTER
            msgs.append(Block(self.disk_id, off, n, digest, codec, payload))
            updates.append((first + k, digest))
            st.blocks_changed += 1
            st.payload_raw += n
            st.payload_wire += len(payload)
        flush_zero()
        st.bytes_scanned += scanned
        st.blocks_unchanged += unchanged
        self._write_entries(updates)
        return Chunk(msgs, end, st)

    def _write_entries(self, updates: list[tuple[int, bytes]]) -> None:
        """New map entries, contiguous runs in one write each."""
        i = 0
        while i < len(updates):
            j = i + 1
            while j < len(updates) and updates[j][0] == updates[j - 1][0] + 1:
                j += 1
            self.builder.set_range(updates[i][0], b"".join(d for _, d in updates[i:j]))
            i = j

    def _fill(
        self,
        buf: bytearray | None,
        start: int,
        end: int,
        wanted: list[bool],
        segments: list[tuple[int, int]],
        st: ChunkStats,
    ) -> list[bool]:
        """Read the window's wanted data into ``buf``; return which blocks hold any data at all.

        Blocks that lie wholly in holes of a sparse source are neither read nor zero-filled (the
        scan knows they are zero); only the hole parts of blocks that also hold data are zeroed.
        With ``buf`` None (the chunk is mapped) nothing is read: only ``bytes_read`` is counted.
        """
        bs = self.bs
        count = len(wanted)
        segs: list[tuple[int, int]] = []
        has_data = [False] * count
        if not any(wanted):
            return has_data
        for seg_off, seg_len in segments:
            if seg_off >= end:
                break
            lo, hi = max(seg_off, start), min(seg_off + seg_len, end)
            if lo >= hi:
                continue
            segs.append((lo, hi))
            for b in range((lo - start) // bs, (hi - 1 - start) // bs + 1):
                has_data[b] = True
            # Read only the wanted blocks of this data segment, in runs.
            b = (lo - start) // bs
            while lo < hi:
                blk_end = min(start + (b + 1) * bs, hi)
                if wanted[b]:
                    run_end = blk_end
                    while run_end < hi and wanted[(run_end - start) // bs]:
                        run_end = min(start + ((run_end - start) // bs + 1) * bs, hi)
                    if buf is None:
                        st.bytes_read += run_end - lo
                    else:
                        st.bytes_read += self._read(memoryview(buf)[lo - start : run_end - start], lo)
                    lo, b = run_end, (run_end - start) // bs
                else:
                    lo, b = blk_end, b + 1
        if buf is None:  # a mapping reads holes as zeros by itself
            return has_data
        # Zero the hole parts of blocks that hold some data (at the edges of each gap).
        view = memoryview(buf)
        prev = start
        for lo, seg_hi in [*segs, (end, end)]:
            if prev < lo:
                for b in {(prev - start) // bs, (lo - 1 - start) // bs}:
                    if has_data[b] and wanted[b]:
                        a, z = max(prev, start + b * bs), min(lo, start + (b + 1) * bs)
                        view[a - start : z - start] = zero_block(z - a)
            prev = max(prev, seg_hi)
        return has_data

    def _read(self, target: memoryview, offset: int) -> int:
        if self._read_into is not None:
            got: int = self._read_into(offset, target)
        else:
            data = self.reader.pread(offset, len(target))
            target[: len(data)] = data
            got = len(data)
        if got < len(target):
            target[got:] = bytes(len(target) - got)
        return got
