"""The block scanner against an independent reading of the image (plain ``os.pread`` + BLAKE3).

The scanner reads each chunk in small windows into one reused buffer, skipping holes; these tests
cut windows across data segments, holes inside blocks, a filter and a short last block, and check
every map entry and every message against what the file really holds.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from blake3 import blake3

from protocol.messages import Block, Codec, ZeroRange
from source_agent import pipeline
from source_agent.disks.raw import RawReader
from source_agent.filters.extents import ExtentList
from source_agent.pipeline import Compress, DiskScanner, DiskStats
from vzcommon.blockhash import HASH_LEN, UNKNOWN_HASH
from vzcommon.vzmap import MapBuilder

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
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bs: int, window: int, filtered: bool, read: str, kernel: str
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
