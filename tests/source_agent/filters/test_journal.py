"""A snapshot of a mounted ext4: the newest bitmap lives only in the journal (needs_recovery).

Built honestly with e2fsprogs: image A, then B = A plus a new file (debugfs write). C holds B's data
blocks, A's metadata on disk, and B's metadata in a committed journal transaction (debugfs
``jo``/``jw``/``jc``), which is what a crash-consistent snapshot looks like. The on-disk bitmap says
the new file's blocks are free; ABM must keep them, and e2fsck's journal replay on the replica must
give the file back.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
from pathlib import Path

import pytest

from source_agent.filters import ext
from source_agent.filters.extents import ExtentList
from source_agent.filters.volume import NotParsed, Volume
from tests.source_agent.filters.extfs import used_ranges
from tests.source_agent.filters.helpers import FileReader, MiB, abm, covers, replicate, run

BS = 1024


def _blocks(img: Path) -> list[bytes]:
    data = img.read_bytes()
    return [data[i : i + BS] for i in range(0, len(data), BS)]


def test_bitmaps_only_in_the_journal_are_honoured(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.img", tmp_path / "b.img", tmp_path / "c.img"
    with open(a, "wb") as f:
        f.truncate(32 * MiB)
    run("mkfs.ext4", "-F", "-q", "-b", str(BS), a)
    shutil.copy(a, b)
    new = tmp_path / "new.bin"
    new.write_bytes(random.Random(11).randbytes(300_000))
    run("debugfs", "-w", "-R", f"write {new} new.bin", b)
    stat = run("debugfs", "-R", "ex new.bin", b).stdout.decode()
    data_blocks = set()
    for line in stat.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 8 and parts[-4].isdigit() and parts[-2].isdigit():
            first, last = int(parts[-4]), int(parts[-2])
            data_blocks |= set(range(first, last + 1))
    assert data_blocks, stat
    old, newer = _blocks(a), _blocks(b)
    meta = [i for i in range(len(old)) if old[i] != newer[i] and i not in data_blocks and i != 1]
    assert meta, "writing a file changed no metadata block"
    shutil.copy(b, c)
    (tmp_path / "meta.bin").write_bytes(b"".join(newer[i] for i in meta))
    script = tmp_path / "jw.debugfs"
    script.write_text(f"jo\njw -b {','.join(map(str, meta))} {tmp_path / 'meta.bin'}\njc\n")
    run("debugfs", "-w", "-f", script, c)
    with open(c, "r+b") as f:  # the metadata on disk goes back to before the write
        for i in meta:
            f.seek(i * BS)
            f.write(old[i])
    assert "needs_recovery" in run("dumpe2fs", "-h", c).stdout.decode()
    file_ranges = [(blk * BS, (blk + 1) * BS) for blk in sorted(data_blocks)]
    assert covers_any_missing(used_ranges(c), file_ranges), "the on-disk bitmap already has the file"

    active = abm(c)
    assert covers(active, file_ranges) == [], "blocks allocated in the journal were skipped"
    replica = tmp_path / "replica.img"
    replicate(c, replica, active, block=4096)
    res = run("e2fsck", "-fy", replica, check=False)
    assert res.returncode in (0, 1), res.stdout.decode()  # 1: journal replayed, fixed
    out = tmp_path / "out.bin"
    run("debugfs", "-R", f"dump new.bin {out}", replica)
    assert out.read_bytes() == new.read_bytes()


def covers_any_missing(used: list[tuple[int, int]], ranges: list[tuple[int, int]]) -> bool:
    from source_agent.filters.extents import ExtentList

    return bool(covers(ExtentList(used), ranges))


def _share_journal_tree_nodes(img: Path, depth: int) -> None:
    """Give journal inode 8 an extent tree ``depth`` deep whose index nodes point every entry at the
    one node below (the leaf maps 340 extents), and ask for recovery (needs_recovery)."""
    with open(img, "r+b") as f:
        fd = f.fileno()
        sb = bytearray(os.pread(fd, 1024, 1024))
        bs = 1024 << struct.unpack_from("<I", sb, 24)[0]
        isz = struct.unpack_from("<H", sb, 88)[0]
        struct.pack_into("<I", sb, 0x60, struct.unpack_from("<I", sb, 0x60)[0] | 0x4)
        os.pwrite(fd, bytes(sb), 1024)
        itable = struct.unpack_from("<I", os.pread(fd, 64, bs if bs > 1024 else 2048), 8)[0]
        inode_at = itable * bs + 7 * isz
        inode = bytearray(os.pread(fd, isz, inode_at))
        n = (bs - 12) // 12
        nodes = [100 + d for d in range(depth)]  # nodes[d]: the node of depth d (0: the leaf)
        for d, blk in enumerate(nodes):
            node = bytearray(bs)
            struct.pack_into("<HHHHI", node, 0, 0xF30A, n, n, d, 0)
            for i in range(n):
                if d:
                    struct.pack_into("<IIHH", node, 12 + 12 * i, i, nodes[d - 1], 0, 0)
                else:
                    struct.pack_into("<IHHI", node, 12 + 12 * i, i, 1, 0, 200 + i)
            os.pwrite(fd, bytes(node), blk * bs)
        struct.pack_into("<HHHHI", inode, 0x28, 0xF30A, 1, 4, depth, 0)
        struct.pack_into("<IIHH", inode, 0x28 + 12, 0, nodes[-1], 0, 0)
        os.pwrite(fd, bytes(inode), inode_at)


def test_journal_extent_tree_that_reaches_a_block_twice_is_fully_active(tmp_path: Path) -> None:
    """Found by review of the fuzz targets (fuzz/corpus/ext/crash-shared-journal-extent-tree): at
    depth 4 the walk was 340 ** 4 reads and as many list entries (a hang, then out of memory). At
    depth 2 it took 115,600 extents from a tree that reaches its leaf 340 times."""
    img = tmp_path / "ext.img"
    with open(img, "wb") as f:
        f.truncate(8 * MiB)
    run("mkfs.ext4", "-q", "-F", "-O", "^metadata_csum", img)
    _share_journal_tree_nodes(img, 2)
    assert abm(img) == ExtentList.full(8 * MiB)
    reader = FileReader(img)
    try:
        with pytest.raises(NotParsed, match="extent tree reaches block 100 twice"):
            ext.active_ranges(Volume.whole(reader))
    finally:
        reader.close()
