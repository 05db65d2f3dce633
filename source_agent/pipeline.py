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

import bisect
from dataclasses import dataclass, field

import zstandard

from protocol.messages import Block, Codec, ZeroRange
from source_agent.disks.base import DiskReader
from source_agent.filters.extents import ExtentList
from vzcommon.blockhash import HASH_LEN, hash_block, zero_block, zero_hash
from vzcommon.vzmap import MapBuilder

CHUNK_BYTES = 16 << 20  # per scanned chunk; at most ~4 chunks are in memory at once
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


@dataclass
class Chunk:
    messages: list[Block | ZeroRange]
    end: int  # byte offset where the chunk ends


class DiskScanner:
    """Scans one disk chunk by chunk (call :meth:`scan` from a worker thread)."""

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
        self.stats = stats
        self.filter = filt.align(block_size).clip(self.size) if filt is not None else None
        self.nblocks = -(-self.size // block_size)
        self.chunk_blocks = max(2, CHUNK_BYTES // block_size)
        self._cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        self._zero_hash = zero_hash(block_size)
        stats.blocks_total = self.nblocks

    def chunks(self) -> range:
        return range(0, self.nblocks, self.chunk_blocks)

    def _wanted(self, first: int, count: int) -> list[bool]:
        if self.filter is None:
            return [True] * count
        return [self.filter.overlaps((first + i) * self.bs, (first + i + 1) * self.bs) for i in range(count)]

    def scan(self, first: int, compress: bool) -> Chunk:
        bs, st = self.bs, self.stats
        count = min(self.chunk_blocks, self.nblocks - first)
        start, end = first * bs, min((first + count) * bs, self.size)
        wanted = self._wanted(first, count)
        entries = self.builder.read_entries(first, count)
        # Which blocks hold data at all: holes are zero without reading.
        segs = list(self.reader.data_extents(start, end))
        seg_starts = [s for s, _ in segs]
        msgs: list[Block | ZeroRange] = []
        updates: list[tuple[int, bytes]] = []
        zero_run: list[int] = []  # [offset, length] of the pending zero range

        def flush_zero() -> None:
            if zero_run:
                msgs.append(ZeroRange(self.disk_id, zero_run[0], zero_run[1]))
                zero_run.clear()

        i = 0
        while i < count:
            if not wanted[i]:
                flush_zero()
                st.bytes_skipped_filter += min(bs, self.size - (first + i) * bs)
                i += 1
                continue
            # Read a run of wanted blocks at once.
            j = i
            while j < count and wanted[j]:
                j += 1
            run_start, run_end = (first + i) * bs, min((first + j) * bs, self.size)
            data = self._read_run(run_start, run_end, segs, seg_starts)
            for k in range(i, j):
                off = (first + k) * bs
                n = min(bs, self.size - off)
                block = data[(k - i) * bs : (k - i) * bs + n]
                old = entries[k * HASH_LEN : (k + 1) * HASH_LEN]
                st.bytes_scanned += n
                if block == zero_block(n):
                    zh = self._zero_hash if n == bs else zero_hash(n)
                    if old == zh:
                        st.zero_blocks_skipped += 1
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
                flush_zero()
                digest = hash_block(block)
                if digest == old:
                    st.blocks_unchanged += 1
                    continue
                payload, codec = block, Codec.NONE
                if compress:
                    packed = self._cctx.compress(block)
                    if len(packed) < n - n // 32:  # keep it only if it saves at least ~3%
                        payload, codec = packed, Codec.ZSTD
                        st.blocks_compressed += 1
                msgs.append(Block(self.disk_id, off, n, digest, codec, payload))
                updates.append((first + k, digest))
                st.blocks_changed += 1
                st.payload_raw += n
                st.payload_wire += len(payload)
            i = j
        flush_zero()
        for idx, digest in updates:
            self.builder.set_range(idx, digest)
        return Chunk(msgs, end)

    def _read_run(self, start: int, end: int, segs: list[tuple[int, int]], seg_starts: list[int]) -> bytes:
        """Read ``[start, end)``, only where the source has data; holes stay zero."""
        k = max(0, bisect.bisect_right(seg_starts, start) - 1)
        parts: list[tuple[int, int]] = []
        for s, n in segs[k:]:
            if s >= end:
                break
            lo, hi = max(s, start), min(s + n, end)
            if lo < hi:
                parts.append((lo, hi))
        if not parts:
            return zero_block(end - start) if end - start <= self.bs else bytes(end - start)
        if parts == [(start, end)]:
            data = self.reader.pread(start, end - start)
            self.stats.bytes_read += len(data)
            return data.ljust(end - start, b"\0")
        buf = bytearray(end - start)
        for lo, hi in parts:
            data = self.reader.pread(lo, hi - lo)
            self.stats.bytes_read += len(data)
            buf[lo - start : lo - start + len(data)] = data
        return bytes(buf)
