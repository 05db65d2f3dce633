"""The block scanner against an independent reading of the image (plain ``os.pread`` + BLAKE3).

The scanner reads each chunk in small windows into one reused buffer, skipping holes; these tests
cut windows across data segments, holes inside blocks, a filter and a short last block, and check
every map entry and every message against what the file really holds.
"""

from __future__ import annotations

import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from blake3 import blake3

from protocol.messages import Block, Codec, ZeroRange
from source_agent import pipeline
from source_agent.disks.raw import RawReader
from source_agent.filters.extents import ExtentList
from source_agent.native import ahead
from source_agent.pipeline import Compress, DiskScanner, DiskStats, start_ahead
from tests.support.tools import need, run
from vzcommon.blockhash import HASH_LEN, UNKNOWN_HASH
from vzcommon.vzmap import MapBuilder, MapFile

KiB = 1 << 10
MiB = 1 << 20


def sparse_image(path: Path, size: int, seed: int) -> None:
    """Data runs, written zero runs, holes, and 4 KiB islands inside otherwise sparse blocks."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        pos = 0
        while pos < size:
            run = min(rng.randrange(4 * KiB, 900 * KiB, 4 * KiB), size - pos)
            kind = rng.random()
            f.seek(pos)
            if kind < 0.4:
                f.write(rng.randbytes(run))
            elif kind < 0.6:
                f.write(bytes(run))
            elif kind < 0.75:
                f.write(rng.randbytes(4 * KiB))  # an island; the rest of the run stays a hole
            pos += run


def scan_all(
    reader: RawReader, bs: int, builder: MapBuilder, filt: ExtentList | None
) -> list[Block | ZeroRange]:
    st = DiskStats()
    scanner = DiskScanner(0, reader, bs, builder, st, filt)
    buf = scanner.new_buffer()
    msgs: list[Block | ZeroRange] = []
    for first in scanner.chunks():
        msgs.extend(scanner.scan(first, Compress.PROBE, buf).messages)
    return msgs


@pytest.mark.parametrize(
    ("bs", "window"),
    [(64 * KiB, 3 * 64 * KiB), (64 * KiB, 1 * MiB), (256 * KiB, 64 * KiB), (1 * MiB, 4 * MiB)],
)
@pytest.mark.parametrize("filtered", [False, True])
@pytest.mark.parametrize("read", ["auto", "pread"])
@pytest.mark.parametrize("kernel", ["auto", "python"])
def test_scan_matches_an_independent_reading(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    bs: int,
    window: int,
    filtered: bool,
    read: str,
    kernel: str,
) -> None:
    """Both read paths (the chunk mapped, as ``auto`` does on a local filesystem, or read window by
    window) and both kernels (the compiled one where built, and the Python one)."""
    monkeypatch.setenv("VZREP_READ", read)
    monkeypatch.setenv("VZREP_SCAN", kernel)
    monkeypatch.setattr(pipeline, "WINDOW_BYTES", window)
    monkeypatch.setattr(pipeline, "CHUNK_BYTES", 2 * MiB)  # several chunks, each in several windows
    size = 11 * MiB + 3 * 512  # the last block is short
    img = tmp_path / "d.img"
    sparse_image(img, size, seed=bs + window)
    filt = None
    if filtered:
        rng = random.Random(7)
        filt = ExtentList.from_lengths(
            (o, rng.randrange(4 * KiB, 600 * KiB, 4 * KiB)) for o in range(0, size, 1 * MiB)
        )
    reader = RawReader(img, "d")
    assert (reader.map_range(0, bs) is not None) == (read == "auto" and reader._mappable)
    builder = MapBuilder(tmp_path / "d.vzmap.next", bs, size, None)
    try:
        msgs = scan_all(reader, bs, builder, filt)
        fd = os.open(img, os.O_RDONLY)
        blocks = {m.offset: m for m in msgs if isinstance(m, Block)}
        zeros = ExtentList.from_lengths((m.offset, m.length) for m in msgs if isinstance(m, ZeroRange))
        try:
            for b in range(-(-size // bs)):
                off = b * bs
                data = os.pread(fd, bs, off)
                entry = builder.read_entries(b, 1)
                wanted = filt is None or any(s < off + len(data) and off < e for s, e in filt)
                if not wanted:
                    assert entry == UNKNOWN_HASH, f"block {b} outside the filter got an entry"
                    assert off not in blocks and not zeros.overlaps(off, off + len(data))
                    continue
                assert entry == blake3(data).digest(), f"block {b}: map entry is not the hash of its bytes"
                if data == bytes(len(data)):
                    assert zeros.overlaps(off, off + len(data)) and off not in blocks, f"zero block {b}"
                else:
                    msg = blocks.pop(off)
                    payload = msg.payload
                    if msg.codec == Codec.ZSTD:
                        import zstandard

                        payload = zstandard.ZstdDecompressor().decompress(payload, max_output_size=bs)
                    assert payload == data and msg.length == len(data), f"block {b}: payload differs"
            assert not blocks, "blocks sent that the disk does not hold"
        finally:
            os.close(fd)
    finally:
        builder.abort()
        reader.close()


def test_unchanged_blocks_are_skipped_and_only_changes_are_sent(tmp_path: Path) -> None:
    """A second scan against the first scan's map sends exactly the blocks changed in between."""
    bs, size = 64 * KiB, 8 * MiB
    img = tmp_path / "d.img"
    sparse_image(img, size, seed=5)
    reader = RawReader(img, "d")
    first = MapBuilder(tmp_path / "a.next", bs, size, None)
    scan_all(reader, bs, first, None)
    first.finish(generation="g1")
    from vzcommon.vzmap import MapFile

    changed = [3, 17, 18, 100, 127]
    with open(img, "r+b") as f:
        for b in changed:
            f.seek(b * bs + 1000)
            f.write(b"\x01changed")
    with MapFile.open(tmp_path / "a.next") as base:
        second = MapBuilder(tmp_path / "b.next", bs, size, base)
    try:
        msgs = scan_all(reader, bs, second, None)
        assert sorted(m.offset // bs for m in msgs if isinstance(m, Block)) == changed
        assert not [m for m in msgs if isinstance(m, ZeroRange)]
        assert len(second.read_entries(0, size // bs)) == size // bs * HASH_LEN
    finally:
        second.abort()
        reader.close()


# --- hash-ahead (``native.ahead``): the same scan, hashed by native threads ahead of the pipeline ---

needs_ahead = pytest.mark.skipif(
    not ahead.available(), reason="hash-ahead is not built or is turned off (test_ahead.py says which)"
)


def scan_concurrently(scanner: DiskScanner) -> tuple[list[Block | ZeroRange], DiskStats]:
    """All chunks, three at once as the session scans them, in disk order; their stats added up."""
    st = DiskStats(blocks_total=scanner.nblocks)
    msgs: list[Block | ZeroRange] = []
    with ThreadPoolExecutor(3) as pool:
        chunks = pool.map(
            lambda first: scanner.scan(first, Compress.PROBE, scanner.new_buffer()), scanner.chunks()
        )
        for chunk in chunks:
            msgs.extend(chunk.messages)
            st.add(chunk.stats)
    return msgs, st


def second_version(img: Path, size: int, bs: int, seed: int) -> None:
    """Change the image: data blocks altered, zeroed by writing or by punching a hole, and new data
    in blocks that were holes or zeros; everything else stays as it was."""
    rng = random.Random(seed)
    with open(img, "r+b") as f:
        old = [f.read(bs) for _ in range(-(-size // bs))]
        data = [b for b, blk in enumerate(old) if blk != bytes(len(blk))]
        empty = [b for b, blk in enumerate(old) if blk == bytes(len(blk))]
        assert len(data) >= 4 and len(empty) >= 2, "the image lacks data or zero blocks to change"
        k = len(data) // 4  # a quarter each: changed, zeroed by writing, zeroed by a hole; a quarter kept
        picked = rng.sample(data, 3 * k)
        for b in picked[:k]:  # changed in place
            f.seek(b * bs + rng.randrange(len(old[b]) - 8))
            f.write(rng.randbytes(8))
        for b in picked[k : 2 * k]:  # zeroed by writing zeros
            f.seek(b * bs)
            f.write(bytes(len(old[b])))
        for b in rng.sample(empty, len(empty) // 2):  # new data where there was none
            f.seek(b * bs + rng.randrange(0, len(old[b]), 512) // 4096 * 4096)
            f.write(rng.randbytes(min(4096, len(old[b]))))
    for b in picked[2 * k :]:  # zeroed by punching a hole
        run(need("fallocate"), "--punch-hole", "--keep-size", "-o", str(b * bs), "-l", str(bs), img)


@needs_ahead
@pytest.mark.parametrize("bs", [64 * KiB, 256 * KiB, 1 * MiB])
@pytest.mark.parametrize("read", ["auto", "pread"])
def test_hash_ahead_scans_exactly_like_the_scanner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bs: int, read: str
) -> None:
    """An incremental scan with hash-ahead sends the same messages (payloads included), counts the
    same and leaves the same map as without it; every kind of block occurs (same, changed, zero
    known, zero new), and the ring of 4 chunks wraps several times."""
    monkeypatch.setenv("VZREP_READ", read)
    monkeypatch.setattr(pipeline, "CHUNK_BYTES", 2 * MiB)
    monkeypatch.setattr(ahead, "LOOKAHEAD_BYTES", 0)
    size = 11 * MiB + 3 * 512
    nblocks = -(-size // bs)
    # Three files, each scanned once: the first version (for the map), and the second version twice
    # over, built the same way. On tmpfs a read through a mapping fills the holes it touches, so a
    # second scan of one file would find more data to read than the first did.
    v1_img, img, twin = tmp_path / "v1.img", tmp_path / "d.img", tmp_path / "twin.img"
    for p in (v1_img, img, twin):
        sparse_image(p, size, seed=bs)
    for p in (img, twin):
        second_version(p, size, bs, seed=bs + 1)
    v1_reader = RawReader(v1_img, "d")
    try:
        base = MapBuilder(tmp_path / "v1.next", bs, size, None)
        scan_all(v1_reader, bs, base, None)
        base.finish(generation="g1")
    finally:
        v1_reader.close()
    reader, twin_reader = RawReader(img, "d"), RawReader(twin, "d")
    try:
        with MapFile.open(tmp_path / "v1.next") as v1:
            plain_map = MapBuilder(tmp_path / "plain.next", bs, size, v1)
            ahead_map = MapBuilder(tmp_path / "ahead.next", bs, size, v1)
        try:
            plain, plain_st = scan_concurrently(DiskScanner(0, twin_reader, bs, plain_map, DiskStats()))
            hashing = start_ahead(reader, bs)
            assert hashing is not None
            try:
                scanner = DiskScanner(0, reader, bs, ahead_map, DiskStats(), ahead=hashing)
                assert scanner.ahead is hashing
                fast, fast_st = scan_concurrently(scanner)
            finally:
                hashing.close()
            assert fast == plain
            assert fast_st == plain_st
            assert ahead_map.read_entries(0, nblocks) == plain_map.read_entries(0, nblocks)
            assert plain_st.blocks_changed and plain_st.blocks_unchanged
            assert plain_st.zero_blocks_sent and plain_st.zero_blocks_skipped
            fd = os.open(img, os.O_RDONLY)
            try:
                for b in range(nblocks):
                    entry = ahead_map.read_entries(b, 1)
                    assert entry == blake3(os.pread(fd, bs, b * bs)).digest(), f"block {b}"
            finally:
                os.close(fd)
        finally:
            plain_map.abort()
            ahead_map.abort()
    finally:
        reader.close()
        twin_reader.close()


@needs_ahead
def test_a_filtered_scan_ignores_hash_ahead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ABM/CBT filter reads part of the disk: the scanner does not use the pool's hashes of all of it."""
    monkeypatch.setattr(pipeline, "CHUNK_BYTES", 2 * MiB)
    bs, size = 64 * KiB, 6 * MiB
    img = tmp_path / "d.img"
    sparse_image(img, size, seed=21)
    filt = ExtentList.from_lengths([(1 * MiB, 300 * KiB), (4 * MiB + 4 * KiB, 4 * KiB)])
    reader = RawReader(img, "d")
    plain_map = MapBuilder(tmp_path / "plain.next", bs, size, None)
    ahead_map = MapBuilder(tmp_path / "ahead.next", bs, size, None)
    hashing = start_ahead(reader, bs)
    assert hashing is not None
    try:
        scanner = DiskScanner(0, reader, bs, ahead_map, DiskStats(), filt, ahead=hashing)
        assert scanner.ahead is None
        got, _ = scan_concurrently(scanner)
        want, _ = scan_concurrently(DiskScanner(0, reader, bs, plain_map, DiskStats(), filt))
        assert got == want and got
        assert ahead_map.read_entries(0, size // bs) == plain_map.read_entries(0, size // bs)
    finally:
        hashing.close()
        plain_map.abort()
        ahead_map.abort()
        reader.close()


@needs_ahead
def test_hash_ahead_with_other_chunks_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks must line up (the pool's chunk c is the scanner's chunk c), or the scanner refuses it."""
    bs, size = 64 * KiB, 4 * MiB
    img = tmp_path / "d.img"
    sparse_image(img, size, seed=22)
    reader = RawReader(img, "d")
    builder = MapBuilder(tmp_path / "m.next", bs, size, None)
    monkeypatch.setattr(pipeline, "CHUNK_BYTES", 1 * MiB)
    hashing = start_ahead(reader, bs)
    assert hashing is not None
    try:
        monkeypatch.setattr(pipeline, "CHUNK_BYTES", 2 * MiB)
        with pytest.raises(ValueError, match="other chunks"):
            DiskScanner(0, reader, bs, builder, DiskStats(), ahead=hashing)
    finally:
        hashing.close()
        builder.abort()
        reader.close()


@needs_ahead
def test_a_block_changed_after_it_was_hashed_ahead_is_sent_as_it_is_now(tmp_path: Path) -> None:
    """A live file (not a snapshot) may change between the threads' read and the send: the block
    sent, its hash and the map entry all describe the bytes sent, so the target's check passes."""
    bs, size = 64 * KiB, 2 * MiB
    img = tmp_path / "d.img"
    rng = random.Random(8)
    img.write_bytes(rng.randbytes(size))
    reader = RawReader(img, "d")
    try:
        base = MapBuilder(tmp_path / "v1.next", bs, size, None)
        scan_all(reader, bs, base, None)
        base.finish(generation="g1")
        with open(img, "r+b") as f:  # version B: block 3 changed
            f.seek(3 * bs)
            f.write(rng.randbytes(bs))
        with MapFile.open(tmp_path / "v1.next") as v1:
            builder = MapBuilder(tmp_path / "v2.next", bs, size, v1)
        hashing = start_ahead(reader, bs)
        assert hashing is not None
        try:
            time.sleep(0.3)  # the pool hashes version B of the only chunk meanwhile (~1 ms of work)
            now = rng.randbytes(bs)
            with open(img, "r+b") as f:  # version C, after the threads read it
                f.seek(3 * bs)
                f.write(now)
            scanner = DiskScanner(0, reader, bs, builder, DiskStats(), ahead=hashing)
            chunk = scanner.scan(0, Compress.OFF, scanner.new_buffer())
        finally:
            hashing.close()
        blocks = [m for m in chunk.messages if isinstance(m, Block)]
        assert [(b.offset, b.payload) for b in blocks] == [(3 * bs, now)]
        assert blocks[0].hash == blake3(now).digest() == builder.read_entries(3, 1)
        builder.abort()
    finally:
        reader.close()


@needs_ahead
def test_hash_ahead_that_cannot_start_leaves_the_plain_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Threads that cannot start (here: more than the library takes) are not an error: no hash-ahead."""
    monkeypatch.setattr(ahead, "default_threads", lambda: 17)
    img = tmp_path / "d.img"
    sparse_image(img, 4 * MiB, seed=5)
    reader = RawReader(img, "d")
    try:
        assert start_ahead(reader, 64 * KiB) is None
    finally:
        reader.close()
