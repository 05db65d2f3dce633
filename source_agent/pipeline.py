"""The source's block pipeline for one disk: read -> filter -> zero check -> hash/compare -> compress.

A disk is scanned in chunks of ``CHUNK_BYTES`` in worker threads; each chunk yields the messages to
send and updates the source's copy of the map. The session sends chunk *k* while threads scan the
next ones (a bounded queue), so memory stays bounded whatever the disk size.

The per-block work (zero check, hash, comparison with the map) is the kernel's
(``source_agent.native``: compiled C called without the GIL, or its Python twin); this module reads,
skips what the filter and the holes allow, and turns the kernel's verdicts into messages. Per block:

* outside the filter (ABM inactive, CBT unchanged): not read, not sent, map entry kept;
* in a hole of a sparse source, or all zeros: a ZERO_RANGE, unless the map already says zero;
* hash equals the map entry: skipped;
* otherwise a BLOCK, zstd-compressed when compression is on for this chunk and it shrinks the block.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields

from protocol.messages import Block, Codec, ZeroRange
from source_agent.disks.base import DiskReader
from source_agent.disks.mapping import Mapped
from source_agent.filters.extents import ExtentList
from source_agent.native import (
    KIND_CHANGED,
    KIND_SAME,
    KIND_SKIPPED,
    KIND_ZERO_NEW,
    KIND_ZERO_SAME,
    WANT_HOLE,
    WANT_READ,
    WANT_SKIP,
    kernel,
)
from source_agent.native.ahead import HashAhead
from source_agent.native.ahead import available as ahead_available
from source_agent.native.ahead import classify as ahead_classify
from vzcommon.blockhash import HASH_LEN, hash_block, zero_block, zero_hash
from vzcommon.geometry import Geometry
from vzcommon.log import get_logger
from vzcommon.vzmap import MapBuilder

from .compression import BlockPacker, Compress

log = get_logger("vzrep.source.pipeline")

DEFAULT_BLOCK_SIZE = 64 << 10  # bench: the fastest full pass (README, "Tuning")
CHUNK_BYTES = 16 << 20  # per scanned chunk (its messages); at most ~4 chunks are in memory at once
#: a chunk is read and scanned in windows of this size, so the bytes are still in the CPU's cache
#: when they are checked for zeros and hashed (bench: 512 KiB - 1 MiB windows scan a warm 4 GiB
#: image 2.5x faster than 16 MiB ones on a 2-core Xeon, and as fast as mmap)
WINDOW_BYTES = 1 << 20


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
    zero_bytes_sent: int = 0  # bytes the ZERO_RANGE messages cover (DISK_END's total)
    payload_raw: int = 0  # bytes of changed blocks
    payload_wire: int = 0  # their bytes after compression
    blocks_compressed: int = 0
    wire_bytes: int = 0  # protocol bytes sent for this disk (frames)
    map_bytes_received: int = 0
    map_status: str = ""
    map_rebuilt: bool = False  # the target rebuilt its map from the replica's bytes (no trusted map)
    hashed_ahead: bool = False  # hashed by hash-ahead threads (``native.ahead``), not chunk by chunk
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    #: verify: [offset, length] of each run of blocks whose bytes differ on the two sides
    differing: list[tuple[int, int]] = field(default_factory=list)
    #: verify/repair: blocks whose bytes on the replica differed from what the target's map said
    map_wrong_blocks: int = 0

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
    zero_bytes_sent: int = 0
    payload_raw: int = 0
    payload_wire: int = 0
    blocks_compressed: int = 0


@dataclass
class Chunk:
    messages: list[Block | ZeroRange]
    end: int  # byte offset where the chunk ends
    stats: ChunkStats


#: (index in the window, length) -> (hash, bytes) of a changed block
BlockSource = Callable[[int, int], tuple[bytes, bytes]]

#: what a window sends: runs of zero blocks the map does not know as zero, and changed blocks
_TO_SEND = re.compile(b"%c+|%c" % (KIND_ZERO_NEW, KIND_CHANGED))


def _want(wanted: list[bool], has_data: list[bool]) -> bytes:
    """The kernel's ``want`` bytes: skip blocks outside the filter, do not read blocks in holes."""
    if all(has_data) and all(wanted):
        return bytes([WANT_READ]) * len(wanted)
    return bytes(
        WANT_SKIP if not w else WANT_READ if d else WANT_HOLE for w, d in zip(wanted, has_data, strict=True)
    )


class _Emitter:
    """Turns classified windows into messages in disk order.

    Adjacent zero blocks become one ZERO_RANGE; a changed block becomes a BLOCK, packed as the
    chunk's :class:`~source_agent.compression.BlockPacker` decides.
    """

    def __init__(self, disk_id: int, mode: Compress, stats: ChunkStats) -> None:
        self.disk_id, self.st = disk_id, stats
        self.messages: list[Block | ZeroRange] = []
        self.packer = BlockPacker(mode)
        self.zero_off = self.zero_len = 0  # the pending zero range (none while zero_len is 0)

    def window(self, w_start: int, w_len: int, bs: int, kinds: bytearray, block: BlockSource) -> None:
        """Emit a classified window; ``block(i, n)`` gives changed block i's hash and ``n`` bytes."""
        for m in _TO_SEND.finditer(kinds):
            i, j = m.span()
            off = w_start + i * bs
            if kinds[i] == KIND_ZERO_NEW:
                n = min(j * bs, w_len) - i * bs
                if self.zero_len and self.zero_off + self.zero_len == off:
                    self.zero_len += n
                else:
                    self.flush_zero()
                    self.zero_off, self.zero_len = off, n
                continue
            self.flush_zero()
            n = min(bs, w_len - i * bs)
            self._block(off, n, *block(i, n))

    def flush_zero(self) -> None:
        if self.zero_len:
            self.messages.append(ZeroRange(self.disk_id, self.zero_off, self.zero_len))
            self.st.zero_bytes_sent += self.zero_len
            self.zero_len = 0

    def _block(self, off: int, n: int, digest: bytes, payload: bytes) -> None:
        st = self.st
        payload, codec = self.packer.pack(payload)
        if codec is Codec.ZSTD:
            st.blocks_compressed += 1
        self.messages.append(Block(self.disk_id, off, n, digest, codec, payload))
        st.blocks_changed += 1
        st.payload_raw += n
        st.payload_wire += len(payload)


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
        ahead: HashAhead | None = None,
    ) -> None:
        self.disk_id = disk_id
        self.reader = reader
        self.bs = block_size
        self.size = reader.size
        self.builder = builder
        self.filter = filt.align(block_size).clip(self.size) if filt is not None else None
        geometry = Geometry(self.size, block_size)
        self.nblocks = geometry.blocks
        self.chunk_blocks = max(2, CHUNK_BYTES // block_size)
        self.window_blocks = max(1, WINDOW_BYTES // block_size)
        self._zero_hash = zero_hash(block_size)
        self._zero_hash_tail = zero_hash(geometry.tail) if self.size else b""
        self._kernel = kernel()
        #: hashes computed ahead by native threads (``native.ahead``); only for a disk read in full
        self.ahead = ahead if self.filter is None else None
        if ahead is not None and ahead.chunk_blocks != self.chunk_blocks:
            raise ValueError("hash-ahead runs with other chunks than the scanner")
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
        if self.ahead is not None:
            return self._scan_ahead(first, count, mode)
        start, end = first * self.bs, min((first + count) * self.bs, self.size)
        wanted = self._wanted(first, count)
        mapped = self.reader.map_range(start, end - start) if any(wanted) else None
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
        """Classify and hash the chunk window by window (the kernel), then emit what must be sent.

        A mapped chunk is one window; otherwise each window is read into ``buf`` first, and its
        changed blocks are copied out of ``buf`` before the next window overwrites it.
        """
        bs = self.bs
        st = ChunkStats()
        start, end = first * bs, min((first + count) * bs, self.size)
        old = self.builder.read_entries(first, count)
        old += bytes(count * HASH_LEN - len(old))
        hashes = bytearray(count * HASH_LEN)
        kinds = bytearray(count)
        out = _Emitter(self.disk_id, mode, st)
        segments = list(self.reader.data_extents(start, end)) if any(wanted) else []
        win = count if mapped is not None else self.window_blocks
        anchor = None if mapped is not None else (ctypes.c_char * len(buf)).from_buffer(buf)
        try:
            for k in range(0, count, win):
                n_blocks = min(win, count - k)
                w_start = start + k * bs
                w_len = min(w_start + n_blocks * bs, end) - w_start
                w_wanted = wanted[k : k + n_blocks]
                has_data = self._fill(
                    None if mapped else buf, w_start, w_start + w_len, w_wanted, segments, st
                )
                want = _want(w_wanted, has_data)
                data: memoryview | None
                if WANT_READ not in want:
                    address, data = 0, None
                elif mapped is not None:
                    address, data = mapped.address + k * bs, mapped.view[k * bs : k * bs + w_len]
                else:
                    assert anchor is not None
                    address, data = ctypes.addressof(anchor), memoryview(buf)[:w_len]
                w_hashes, w_kinds = bytearray(n_blocks * HASH_LEN), bytearray(n_blocks)
                hs = slice(k * HASH_LEN, (k + n_blocks) * HASH_LEN)
                self._kernel(
                    address,
                    w_len,
                    bs,
                    want,
                    old[hs],
                    self._zero_hash,
                    self._zero_hash_tail,
                    w_hashes,
                    w_kinds,
                    data,
                )
                hashes[hs], kinds[k : k + n_blocks] = w_hashes, w_kinds

                def block(
                    i: int, n: int, h: bytearray = w_hashes, d: memoryview | None = data
                ) -> tuple[bytes, bytes]:
                    assert d is not None
                    return bytes(h[i * HASH_LEN : (i + 1) * HASH_LEN]), bytes(d[i * bs : i * bs + n])

                out.window(w_start, w_len, bs, w_kinds, block)
                if data is not None:
                    data.release()
        finally:
            del anchor
        return self._finish(first, count, kinds, hashes, out)

    def _finish(self, first: int, count: int, kinds: bytearray, hashes: bytearray, out: _Emitter) -> Chunk:
        """Count the chunk's kinds, store its hashes in the map copy, return its messages."""
        bs, st = self.bs, out.st
        start, end = first * bs, min((first + count) * bs, self.size)
        out.flush_zero()
        st.blocks_unchanged += kinds.count(KIND_SAME)
        st.zero_blocks_skipped += kinds.count(KIND_ZERO_SAME)
        st.zero_blocks_sent += kinds.count(KIND_ZERO_NEW)
        skipped = kinds.count(KIND_SKIPPED)
        if skipped:  # n of each block outside the filter (only the disk's last block may be short)
            short = bs - (end - start - (count - 1) * bs)
            st.bytes_skipped_filter += skipped * bs - (short if kinds[-1] == KIND_SKIPPED else 0)
        st.bytes_scanned += (end - start) - st.bytes_skipped_filter
        self.builder.set_range(first, bytes(hashes))
        return Chunk(out.messages, end, st)

    def _scan_ahead(self, first: int, count: int, mode: Compress) -> Chunk:
        """The chunk from hash-ahead: compare its hashes with the map, read only what is sent.

        A changed block is read again and hashed again, so what is sent and its hash always agree
        even if the disk changed since the threads read it (a live file rather than a snapshot).
        """
        assert self.ahead is not None
        bs, chunk = self.bs, first // self.chunk_blocks
        hashes, flags, read = self.ahead.take(chunk, count)
        try:
            old = self.builder.read_entries(first, count)
            old += bytes(count * HASH_LEN - len(old))
            kinds = bytearray(count)
            ahead_classify(flags, hashes, old, kinds)
        finally:
            self.ahead.release(chunk)
        st = ChunkStats(bytes_read=read)
        start, end = first * bs, min((first + count) * bs, self.size)
        out = _Emitter(self.disk_id, mode, st)

        def block(i: int, n: int) -> tuple[bytes, bytes]:
            payload = self.reader.pread(start + i * bs, n)
            payload += bytes(n - len(payload))  # past a file's end: zeros, as the threads read it
            digest = hash_block(payload)
            hashes[i * HASH_LEN : (i + 1) * HASH_LEN] = digest
            return digest, payload

        out.window(start, end - start, bs, kinds, block)
        return self._finish(first, count, kinds, hashes, out)

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
        got = self.reader.pread_into(offset, target)
        if got < len(target):
            target[got:] = bytes(len(target) - got)
        return got


def start_ahead(reader: DiskReader, block_size: int, active: int | None = None) -> HashAhead | None:
    """Start hash-ahead for a disk read in full, when the reader and the build allow it, else None.

    It only saves time: if its threads cannot start, the disk is scanned chunk by chunk as before.
    """
    where = reader.region()
    if where is None or not ahead_available():
        return None
    tail = Geometry(reader.size, block_size).tail
    try:
        return HashAhead(
            where,
            reader.size,
            block_size,
            max(2, CHUNK_BYTES // block_size),
            zero_hash(block_size),
            zero_hash(tail),
            active=active,
        )
    except OSError as exc:
        log.warning("hash_ahead_unavailable", disk=reader.name, error=str(exc))
        return None
