"""Partition tables made by sfdisk (MBR with logical partitions, GPT), swap by mkswap, filesystems inside.

Judges: every block dumpe2fs reports in use is active; each partition of a replica built from the
active extents only passes e2fsck and gives back its files; swap keeps only its header page.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from source_agent.filters.extents import ExtentList
from tests.source_agent.filters.extfs import dump_files, fsck_clean, make_ext, used_ranges
from tests.source_agent.filters.helpers import (
    MiB,
    abm,
    covers,
    embed,
    extract,
    replicate,
    run,
    sparse_image,
    write_at,
)

FILES = {f"p{i}.bin": (i * 4099 + 1) * 1013 % (2 * MiB) + 1 for i in range(10)}
DELETE = [n for i, n in enumerate(FILES) if i % 2]


def layout(img: Path) -> dict[str, tuple[int, int, str]]:
    """``{node suffix: (offset, length, type)}`` as sfdisk reports them."""
    table = json.loads(run("sfdisk", "-J", img).stdout)["partitiontable"]
    ss = table.get("sectorsize", 512)
    return {
        p["node"][len(str(img)) :]: (p["start"] * ss, p["size"] * ss, str(p.get("type", "")))
        for p in table["partitions"]
    }


def build_disk(tmp: Path, script: str, size: int) -> tuple[Path, dict[str, dict[str, bytes]], dict[str, tuple[int, int, str]]]:
    """Partition with sfdisk, then put ext4/ext2 or swap into each data partition."""
    img = sparse_image(tmp / "disk.img", size)
    run("sfdisk", "-q", img, input=script.encode())
    parts = layout(img)
    contents: dict[str, dict[str, bytes]] = {}
    for node, (off, length, ptype) in parts.items():
        if ptype.lower() in ("5", "f", "85"):
            continue
        part = tmp / f"part{node}.img"
        if ptype.lower() in ("82", "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"):
            sparse_image(part, length)
            run("mkswap", "-q", part)
        else:
            fstype = "ext2" if node.endswith("6") or node.endswith("3") else "ext4"
            contents[node] = make_ext(part, length, ["-b", "1024"], FILES, DELETE, seed=len(node), fstype=fstype)
        embed(img, off, part)
    return img, contents, parts


def check_disk(tmp: Path, img: Path, contents: dict[str, dict[str, bytes]], parts: dict[str, tuple[int, int, str]]) -> ExtentList:
    active = abm(img)
    dst = tmp / "replica.img"
    replicate(img, dst, active)
    for node, kept in contents.items():
        off, length, _ = parts[node]
        src_part = extract(img, off, length, tmp / f"src{node}.img")
        assert covers(active, used_ranges(src_part, offset=off)) == [], node
        part = extract(dst, off, length, tmp / f"replica{node}.img")
        fsck_clean(part)
        assert dump_files(part, list(kept)) == kept
    return active


MBR = "label: dos\n,40M,83\n,,E\n,8M,82\n,40M,83\n"
GPT = "label: gpt\n,40M,L\n,8M,S\n,40M,L\n"


def test_mbr_with_logical_partitions(tmp_path: Path) -> None:
    img, contents, parts = build_disk(tmp_path, MBR, 128 * MiB)
    active = check_disk(tmp_path, img, contents, parts)
    first = min(off for off, _, _ in parts.values())
    assert covers(active, [(0, first)]) == []  # MBR and boot loader gap
    ext_off = parts["2"][0]
    assert covers(active, [(ext_off, ext_off + 512)]) == []  # the first EBR
    swap_off, swap_len, _ = parts["5"]
    assert active.intersect(ExtentList([(swap_off, swap_off + swap_len)])) == ExtentList(
        [(swap_off, swap_off + 4096)]
    )
    end = max(off + n for off, n, _ in parts.values())
    assert not active.overlaps(end, 128 * MiB)  # unpartitioned tail
    assert active.total < 0.5 * 128 * MiB


def test_swap_kept_on_request(tmp_path: Path) -> None:
    img, _, parts = build_disk(tmp_path, MBR, 128 * MiB)
    swap_off, swap_len, _ = parts["5"]
    kept = abm(img, skip_swap=False)
    assert covers(kept, [(swap_off, swap_off + swap_len)]) == []


@pytest.mark.parametrize("damage", ["none", "primary", "both"])
def test_gpt_primary_and_backup(tmp_path: Path, damage: str) -> None:
    size = 128 * MiB
    img, contents, parts = build_disk(tmp_path, GPT, size)
    if damage in ("primary", "both"):
        write_at(img, 512 + 24, b"garbage!")  # the header no longer passes its CRC
    if damage == "both":
        write_at(img, size - 512 + 24, b"garbage!")
        assert abm(img) == ExtentList.full(size)
        return
    active = check_disk(tmp_path, img, contents, parts)
    assert covers(active, [(0, 34 * 512), (size - 33 * 512, size)]) == []
    swap_off, swap_len, _ = parts["2"]
    assert not active.overlaps(swap_off + 4096, swap_off + swap_len)
