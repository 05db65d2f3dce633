"""ext2/3/4 against e2fsprogs: the active map covers what dumpe2fs says is used, and a replica made
of the active extents only passes e2fsck and gives back every file byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest

from source_agent.filters.extents import ExtentList
from tests.source_agent.filters.extfs import DELETE, FILES, dump_files, fsck_clean, make_ext, used_ranges
from tests.source_agent.filters.helpers import MiB, abm, covers, replicate, write_at

CONFIGS = {
    "ext4-flex_bg-64bit-csum": ("ext4", 160 * MiB, ["-b", "4096", "-g", "8192"]),
    "ext4-no-flex_bg-1k": ("ext4", 96 * MiB, ["-b", "1024", "-O", "^flex_bg"]),
    "ext4-64bit-uninit_bg": ("ext4", 128 * MiB, ["-b", "4096", "-g", "4096", "-O", "64bit,^metadata_csum,uninit_bg"]),
    "ext4-32bit-meta_bg": ("ext4", 96 * MiB, ["-b", "1024", "-O", "^64bit,meta_bg,^resize_inode"]),
    "ext4-bigalloc": ("ext4", 128 * MiB, ["-b", "1024", "-O", "bigalloc", "-C", "16384"]),
    "ext3": ("ext3", 96 * MiB, ["-b", "2048"]),
    "ext2": ("ext2", 96 * MiB, ["-b", "4096", "-g", "4096"]),
}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_ext_replica_from_active_blocks_only(tmp_path: Path, config: str) -> None:
    fstype, size, args = CONFIGS[config]
    src = tmp_path / "src.img"
    kept = make_ext(src, size, args, FILES, DELETE, fstype=fstype)
    active = abm(src)
    assert active.total < 0.6 * size, f"ABM filtered nothing: {active.total} of {size} bytes active"
    assert covers(active, used_ranges(src)) == [], "a block dumpe2fs reports in use is not active"
    dst = tmp_path / "replica.img"
    replicate(src, dst, active)
    fsck_clean(dst)
    assert dump_files(dst, list(kept)) == kept


def test_corrupt_superblock_is_fully_active(tmp_path: Path) -> None:
    src = tmp_path / "src.img"
    make_ext(src, 64 * MiB, ["-b", "4096"], {"a.bin": MiB}, [])
    write_at(src, 1024 + 0x18, b"\x77\x77\x77\x77")  # log block size: garbage
    assert abm(src) == ExtentList.full(64 * MiB)


def test_garbage_bitmap_keeps_its_group_active(tmp_path: Path) -> None:
    """A block bitmap that disagrees with its group's free count keeps the whole group active."""
    src = tmp_path / "src.img"
    kept = make_ext(src, 96 * MiB, ["-b", "1024", "-O", "^flex_bg,^metadata_csum"], FILES, DELETE)
    out = __import__("subprocess").run(["dumpe2fs", str(src)], capture_output=True, text=True).stdout
    import re

    m = re.search(r"Group 2: \(Blocks (\d+)-(\d+)\).*?Block bitmap at (\d+)", out, re.S)
    assert m, out[:2000]
    first, last, bitmap = (int(x) for x in m.groups())
    write_at(src, bitmap * 1024, b"\0" * 1024)  # the group now looks empty
    active = abm(src)
    assert covers(active, [(first * 1024, (last + 1) * 1024)]) == []
    dst = tmp_path / "replica.img"
    replicate(src, dst, active)
    assert dump_files(dst, list(kept)) == kept


def test_random_garbage_disk_is_fully_active(tmp_path: Path) -> None:
    src = tmp_path / "src.img"
    src.write_bytes(__import__("random").Random(7).randbytes(4 * MiB))
    assert abm(src) == ExtentList.full(4 * MiB)
