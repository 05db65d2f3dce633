"""The source's cache of target maps: where it lives, what a pass may use, a commit replacing it only
when the target confirms, and damaged cache files ignored (and removed) rather than trusted."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from blake3 import blake3

from source_agent.mapcache import MapCache, target_label
from vzcommon.vzmap import HEADER_SIZE, MapFile

BS = 64 * 1024
SIZE = 10 * BS + 512  # 11 entries, the last one a partial block
H = 32


def entry(i: int) -> bytes:
    return bytes([i + 1]) * H


def committed(cache: MapCache, disk: str = "d0", generation: str = "g1", entries: int = 11) -> bytes:
    """Build and commit a map whose entry i is ``entry(i)``; return its entries."""
    b = cache.builder(disk, BS, SIZE, None)
    hashes = b"".join(entry(i) for i in range(entries))
    b.set_range(0, hashes)
    cache.commit(disk, b, generation)
    return hashes


def test_target_label_and_where_the_maps_live(tmp_path: Path) -> None:
    assert target_label("dr-target", 2222) == "dr-target:2222"
    cache = MapCache(tmp_path, target_label("dr-target", 2222), "web01")
    assert cache.path("sys") == tmp_path / "maps" / "dr-target_2222" / "web01" / "sys.vzmap"
    # anything that could leave the directory or name it oddly is replaced
    odd = MapCache(tmp_path, "::1:22", "a/../b")
    assert odd.path("x y") == tmp_path / "maps" / "__1_22" / "a_.._b" / "x_y.vzmap"
    assert odd.path("x y").resolve().is_relative_to(tmp_path / "maps")


def test_a_committed_map_is_cached_as_a_verified_vzmap(tmp_path: Path) -> None:
    cache = MapCache(tmp_path, "t:22", "vm")
    assert cache.cached("d0", BS, SIZE) is None  # nothing yet
    hashes = committed(cache)
    raw = cache.path("d0").read_bytes()
    # the file by its layout alone: header, entries, BLAKE3 of both
    assert raw[:8] == b"VZMAP\x00\r\n"
    assert struct.unpack_from("<IQQ", raw, 12) == (BS, SIZE, 11)
    assert raw[HEADER_SIZE:-32] == hashes
    assert raw[-32:] == blake3(raw[:-32]).digest()
    m = cache.cached("d0", BS, SIZE)
    assert m is not None
    with m:
        assert (m.header.block_size, m.header.disk_size, m.header.generation) == (BS, SIZE, "g1")
        assert m.read_entries(0, 11) == hashes
    assert sorted(os.listdir(cache.dir)) == ["d0.vzmap"]  # the .next is gone


def test_the_cache_changes_only_at_commit(tmp_path: Path) -> None:
    cache = MapCache(tmp_path, "t:22", "vm")
    old = committed(cache, generation="g1")
    base = cache.cached("d0", BS, SIZE)
    assert base is not None
    b = cache.builder("d0", BS, SIZE, base)
    base.close()
    assert b.path == cache.dir / "d0.vzmap.next"
    assert b.read_entries(0, 11) == old  # starts as a copy of the cached map
    b.set_range(3, b"\xee" * H)
    m = cache.cached("d0", BS, SIZE)  # a pass that fails here leaves the old map in place
    assert m is not None
    with m:
        assert (m.header.generation, m.read_entries(0, 11)) == ("g1", old)
    cache.commit("d0", b, "g2")
    m = cache.cached("d0", BS, SIZE)
    assert m is not None
    with m:
        assert m.header.generation == "g2"
        assert m.read_entries(0, 11) == old[: 3 * H] + b"\xee" * H + old[4 * H :]
    assert not (cache.dir / "d0.vzmap.next").exists()


def test_a_map_for_another_block_size_or_a_larger_disk_is_not_used(tmp_path: Path) -> None:
    cache = MapCache(tmp_path, "t:22", "vm")
    committed(cache)
    assert cache.cached("d0", 2 * BS, SIZE) is None
    assert cache.cached("d0", BS, SIZE - 512) is None  # the disk shrank
    assert cache.path("d0").exists()  # not damaged: kept for the pass it fits
    grown = cache.cached("d0", BS, SIZE + 4 * BS)  # a grown disk: its old blocks still count
    assert grown is not None
    with grown:
        assert grown.header.disk_size == SIZE


@pytest.mark.parametrize(
    "damage",
    ["flip-entry", "flip-header", "truncate", "garbage", "empty", "wrong-length"],
)
def test_a_damaged_cache_is_ignored_and_removed(tmp_path: Path, damage: str) -> None:
    cache = MapCache(tmp_path, "t:22", "vm")
    committed(cache)
    p = cache.path("d0")
    raw = bytearray(p.read_bytes())
    if damage == "flip-entry":
        raw[HEADER_SIZE + 5 * H] ^= 0x01
    elif damage == "flip-header":
        raw[100] ^= 0x80  # inside the generation field
    elif damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "garbage":
        raw = bytearray(os.urandom(len(raw)))
    elif damage == "empty":
        raw = bytearray()
    else:
        raw += b"\0"
    p.write_bytes(bytes(raw))
    assert cache.cached("d0", BS, SIZE) is None
    assert not p.exists()  # a bad cache is dropped, and the next pass builds a new one
    committed(cache, generation="g3")
    m = cache.cached("d0", BS, SIZE)
    assert m is not None
    with m:
        assert m.header.generation == "g3"


def test_forget_and_the_separation_of_targets_vms_and_disks(tmp_path: Path) -> None:
    a = MapCache(tmp_path, "a:22", "vm")
    b = MapCache(tmp_path, "b:22", "vm")
    c = MapCache(tmp_path, "a:22", "vm2")
    committed(a, "d0", "ga")
    committed(a, "d1", "ga1")
    committed(b, "d0", "gb")
    assert c.cached("d0", BS, SIZE) is None
    for cache, disk, gen in ((a, "d0", "ga"), (a, "d1", "ga1"), (b, "d0", "gb")):
        m = cache.cached(disk, BS, SIZE)
        assert m is not None
        with m:
            assert m.header.generation == gen
    a.forget("d0")
    assert a.cached("d0", BS, SIZE) is None
    assert a.path("d1").exists() and b.path("d0").exists()
    a.forget("d0")  # forgetting twice is fine
    with MapFile.open(b.path("d0")) as m:
        assert m.header.generation == "gb"
