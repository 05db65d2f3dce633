"""XFS against xfsprogs: the active map covers all space xfs_db does not list as free and every file's
block map, and a replica made of the active extents only passes xfs_repair -n with identical files.

xfsprogs cannot delete files offline, so "deleted data" is simulated the honest way: the image is
filled with garbage before mkfs.xfs -K (no discard), so free space holds stale bytes a replica skips.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import pytest

from source_agent.filters.extents import ExtentList
from source_agent.filters.volume import crc32c
from tests.source_agent.filters.helpers import MiB, abm, covers, make_files, replicate, run, write_at

SIZE = 320 * MiB  # mkfs.xfs refuses anything under 300 MB
FILES = {f"f{i}.bin": (i * 6151 + 1) * 1009 % (5 * MiB) + 1 for i in range(16)}


def make_xfs(tmp: Path, mkfs_args: list[str]) -> tuple[Path, dict[str, bytes]]:
    img = tmp / "xfs.img"
    with open(img, "wb") as f:
        f.truncate(SIZE)
    stale = bytes(range(256)) * 4096
    for off in range(0, SIZE, 16 * MiB):  # stale data in what will be free space
        write_at(img, off, stale)
    content = make_files(tmp / "files", FILES, seed=5)
    proto = tmp / "proto"
    lines = ["boot", "0 0", "d--755 0 0"]
    lines += [f"{name} ---644 0 0 {tmp / 'files' / name}" for name in FILES]
    proto.write_text("\n".join([*lines, "$", ""]))
    run("mkfs.xfs", "-q", "-f", "-K", *mkfs_args, "-p", proto, img)
    return img, content


def xfs_geometry(img: Path) -> tuple[int, int]:
    out = run("xfs_db", "-r", "-c", "sb 0", "-c", "print blocksize agblocks", img).stdout.decode()
    vals = dict(re.findall(r"(\w+) = (\d+)", out))
    return int(vals["blocksize"]), int(vals["agblocks"])


def used_by_xfs_db(img: Path) -> list[tuple[int, int]]:
    """Everything xfs_db's free space report (freesp -d) does not list, in bytes."""
    bs, agblocks = xfs_geometry(img)
    out = run("xfs_db", "-r", "-c", "freesp -d", img).stdout.decode()
    free = [
        ((int(ag) * agblocks + int(bno)) * bs, (int(ag) * agblocks + int(bno) + int(n)) * bs)
        for ag, bno, n in re.findall(r"^\s+(\d+)\s+(\d+)\s+(\d+)\s*$", out, re.M)
    ]
    assert free, out
    return list(ExtentList.full(SIZE).subtract(ExtentList(free)))


def file_extents(img: Path, name: str) -> tuple[list[tuple[int, int]], int]:
    """A file's byte ranges (from xfs_db bmap) and its size."""
    bs, agblocks = xfs_geometry(img)
    out = run("xfs_db", "-r", "-c", f"path /{name}", "-c", "bmap", "-c", "print core.size", img).stdout.decode()
    ranges = []
    for off, ag, bno, n in re.findall(r"data offset (\d+) startblock \d+ \((\d+)/(\d+)\) count (\d+)", out):
        start = (int(ag) * agblocks + int(bno)) * bs
        ranges.append((int(off) * bs, start, int(n) * bs))
    size = int(re.search(r"core.size = (\d+)", out).group(1))  # type: ignore[union-attr]
    return [(s, s + n) for _, s, n in sorted(ranges)], size


def read_file(img: Path, name: str) -> bytes:
    ranges, size = file_extents(img, name)
    parts = []
    with open(img, "rb") as f:
        for s, e in ranges:
            f.seek(s)
            parts.append(f.read(e - s))
    return b"".join(parts)[:size]


@pytest.mark.parametrize("args", [["-d", "agcount=4"], ["-m", "crc=0", "-d", "agcount=3"]], ids=["v5", "v4"])
def test_xfs_replica_from_active_blocks_only(tmp_path: Path, args: list[str]) -> None:
    img, content = make_xfs(tmp_path, args)
    active = abm(img)
    assert active.total < 0.5 * SIZE
    assert covers(active, used_by_xfs_db(img)) == []
    for name in content:
        assert covers(active, file_extents(img, name)[0]) == [], name
    dst = tmp_path / "replica.img"
    replicate(img, dst, active)
    res = run("xfs_repair", "-n", "-f", dst, check=False)
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()
    for name, data in content.items():
        assert read_file(dst, name) == data, name


def _log_offset(img: Path) -> int:
    bs, agblocks = xfs_geometry(img)
    out = run("xfs_db", "-r", "-c", "sb 0", "-c", "print logstart agblklog", img).stdout.decode()
    vals = dict(re.findall(r"(\w+) = (\d+)", out))
    fsb, log = int(vals["logstart"]), int(vals["agblklog"])
    return ((fsb >> log) * agblocks + (fsb & ((1 << log) - 1))) * bs


@pytest.mark.parametrize("damage", ["agf", "superblock", "dirty-log"])
def test_damaged_xfs_is_fully_active(tmp_path: Path, damage: str) -> None:
    img, _ = make_xfs(tmp_path, ["-d", "agcount=2"])
    if damage == "agf":
        write_at(img, 512 + 52, b"\x00\x00\x00\x07")  # AG 0's free block count no longer adds up
    elif damage == "superblock":
        write_at(img, 84, b"\x00\x00\x00\x01")  # agblocks
    else:
        write_at(img, _log_offset(img) + 512 + 9, b"\x00")  # the unmount record loses its flag
    assert abm(img) == ExtentList.full(SIZE)


def _share_tree_blocks(img: Path, levels: int) -> None:
    """Make AG 0's free space tree ``levels`` deep, each interior node pointing all its records at one
    child and the one leaf empty: every per-block check passes, only the sharing is wrong."""
    with open(img, "r+b") as f:
        fd = f.fileno()
        sb = os.pread(fd, 512, 0)
        ss, bs = struct.unpack_from(">H", sb, 102)[0], struct.unpack_from(">I", sb, 4)[0]
        hdr = 56
        maxrecs = (bs - hdr) // 12
        blocks = [200 + i for i in range(levels)]  # blocks[k]: the node of level k
        for level, agbno in enumerate(blocks):
            blk = bytearray(bs)
            blk[:4] = b"AB3B"
            struct.pack_into(">HH", blk, 4, level, maxrecs if level else 0)
            struct.pack_into(">Q", blk, 16, agbno * bs // 512)
            for i in range(maxrecs if level else 0):
                struct.pack_into(">I", blk, hdr + maxrecs * 8 + 4 * i, blocks[level - 1])
            os.pwrite(fd, bytes(blk), agbno * bs)
        agf = bytearray(os.pread(fd, ss, ss))
        struct.pack_into(">I", agf, 16, blocks[-1])  # root
        struct.pack_into(">I", agf, 28, levels)
        struct.pack_into(">I", agf, 52, 0)  # free blocks: none, as the tree says
        agf[216:220] = bytes(4)
        struct.pack_into("<I", agf, 216, crc32c(bytes(agf)))
        os.pwrite(fd, bytes(agf), ss)


def test_free_space_tree_that_reaches_a_block_twice_is_fully_active(tmp_path: Path) -> None:
    """Found by review of the fuzz targets (fuzz/corpus/xfs/crash-shared-tree-blocks, 9 levels: a hang
    of maxrecs ** 8 reads). At 3 levels the old walk read the leaf 113,569 times and trusted it."""
    img = tmp_path / "xfs.img"
    with open(img, "wb") as f:
        f.truncate(SIZE)
    run("mkfs.xfs", "-q", "-f", "-d", "agcount=4", img)
    _share_tree_blocks(img, 3)
    assert abm(img) == ExtentList.full(SIZE)
