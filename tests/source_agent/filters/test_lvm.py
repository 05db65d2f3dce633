"""LVM2 made by the real lvm tools on a loop device, without device-mapper (``--driverloaded n``).

The LV contents are filesystems made with mkfs.ext4 and laid into the PV along the segments lvm
reports, so a two-segment LV really is scattered. Judges as for ext: dumpe2fs coverage, e2fsck and
files read back from each LV rebuilt out of the replica.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from source_agent.filters.extents import ExtentList
from source_agent.filters.lvm import parse_config
from tests.source_agent.filters.extfs import dump_files, fsck_clean, make_ext, used_ranges
from tests.source_agent.filters.helpers import MiB, abm, covers, replicate, run, sparse_image, tool

SIZE = 160 * MiB
FILES = {f"l{i}.bin": (i * 3571 + 1) * 1019 % (2 * MiB) + 1 for i in range(10)}
DELETE = [n for i, n in enumerate(FILES) if i % 3 == 0]


def lvm(loop: str, *args: str) -> str:
    conf = (
        f'devices {{ filter = [ "a|^{loop}$|", "r|.*|" ] }} backup {{ backup = 0 archive = 0 }}'
    )
    return run("lvm", args[0], "--driverloaded", "n", "--config", conf, *args[1:]).stdout.decode()


def make_pv(img: Path) -> tuple[int, int, dict[str, list[tuple[int, int, int]]]]:
    """Create VG ``vgabm`` with a two-segment LV and a one-segment LV.

    Returns ``(pe_start, extent_size, {lv: [(lv offset, disk offset, length)]})``."""
    tool("losetup")
    res = subprocess.run(["losetup", "-f", "--show", str(img)], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        pytest.skip(f"losetup cannot attach a loop device here: {res.stderr.strip()}")
    loop = res.stdout.strip()
    try:
        lvm(loop, "pvcreate", "-y", "-ff", loop)
        lvm(loop, "vgcreate", "-s", "4M", "vgabm", loop)
        lvm(loop, "lvcreate", "-an", "-Zn", "-y", "-L", "24M", "-n", "data", "vgabm")
        lvm(loop, "lvcreate", "-an", "-Zn", "-y", "-L", "28M", "-n", "small", "vgabm")
        lvm(loop, "lvextend", "-L", "+20M", "vgabm/data")
        pv = json.loads(lvm(loop, "pvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", "pe_start"))
        vg = json.loads(
            lvm(loop, "vgs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", "vg_extent_size")
        )
        segs = json.loads(
            lvm(loop, "lvs", "--reportformat", "json", "--segments", "-o", "lv_name,seg_start_pe,seg_pe_ranges")
        )
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)
    pe_start = int(pv["report"][0]["pv"][0]["pe_start"])
    ext = int(vg["report"][0]["vg"][0]["vg_extent_size"])
    out: dict[str, list[tuple[int, int, int]]] = {}
    for seg in segs["report"][0]["seg"]:
        first, last = (int(x) for x in seg["seg_pe_ranges"].rsplit(":", 1)[1].split("-"))
        le = int(seg["seg_start_pe"])
        out.setdefault(seg["lv_name"], []).append((le * ext, pe_start + first * ext, (last - first + 1) * ext))
    return pe_start, ext, out


def scatter(img: Path, lv_img: Path, segs: list[tuple[int, int, int]]) -> None:
    with open(lv_img, "rb") as fi, open(img, "r+b") as fo:
        for lv_off, disk_off, n in segs:
            fi.seek(lv_off)
            fo.seek(disk_off)
            fo.write(fi.read(n))


def gather(img: Path, out: Path, segs: list[tuple[int, int, int]]) -> Path:
    sparse_image(out, sum(n for _, _, n in segs))
    with open(img, "rb") as fi, open(out, "r+b") as fo:
        for lv_off, disk_off, n in segs:
            fi.seek(disk_off)
            fo.seek(lv_off)
            fo.write(fi.read(n))
    return out


def test_lvm_linear_lvs_are_parsed(tmp_path: Path) -> None:
    img = sparse_image(tmp_path / "pv.img", SIZE)
    pe_start, ext, lvs = make_pv(img)
    assert len(lvs["data"]) == 2, lvs  # the extension made a second segment
    kept = {}
    for name, segs in lvs.items():
        lv_img = tmp_path / f"{name}.img"
        kept[name] = make_ext(lv_img, sum(n for _, _, n in segs), ["-b", "1024"], FILES, DELETE, seed=len(name))
        scatter(img, lv_img, segs)
    active = abm(img)
    assert covers(active, [(0, pe_start)]) == []  # label and metadata area
    assert active.total < 0.5 * SIZE
    used_pe_end = max(d + n for segs in lvs.values() for _, d, n in segs)
    assert not active.overlaps(used_pe_end, pe_start + (SIZE - pe_start) // ext * ext)  # free extents
    dst = tmp_path / "replica.img"
    replicate(img, dst, active)
    for name, segs in lvs.items():
        src_lv = gather(img, tmp_path / f"src-{name}.img", segs)
        lv_active = ExtentList(
            (lo + s - d, lo + e - d)
            for lo, d, n in segs
            for s, e in active.intersect(ExtentList([(d, d + n)]))
        )
        assert covers(lv_active, used_ranges(src_lv)) == [], name
        rep_lv = gather(dst, tmp_path / f"rep-{name}.img", segs)
        fsck_clean(rep_lv)
        assert dump_files(rep_lv, list(kept[name])) == kept[name]


def test_lvm_metadata_text_parser() -> None:
    text = """vg { id = "x" extent_size = 8192 # comment
      physical_volumes { pv0 { id = "a-b" pe_start = 2048 pe_count = 10 } }
      logical_volumes { lv { status = ["READ", "VISIBLE"] segment1 { start_extent = 0 extent_count = 2
        type = "striped" stripes = [ "pv0", 3 ] } } } }
      contents = "Text Format Volume Group"\n"""
    cfg = parse_config(text)
    vg = cfg["vg"]
    assert isinstance(vg, dict) and vg["extent_size"] == 8192
    lvs = vg["logical_volumes"]
    assert isinstance(lvs, dict)
    lv = lvs["lv"]
    assert isinstance(lv, dict)
    seg = lv["segment1"]
    assert isinstance(seg, dict) and seg["stripes"] == ["pv0", 3]


def test_metadata_size_is_bounded_before_it_is_read() -> None:
    """Found by review of the fuzz targets (fuzz/corpus/lvm/crash-huge-metadata-size): the metadata
    area header's size fields were trusted before the CRC could be checked, so 1 GiB was read (3 GiB:
    MemoryError). The PV is the fuzzer's hand-made seed on a 4 GiB sparse disk."""
    import struct

    from fuzz.image import SparseImage, encode
    from fuzz.seeds import _LVM_TEXT, _pv
    from source_agent.filters import lvm as lvm_parser
    from source_agent.filters.lvm import lvm_crc
    from source_agent.filters.volume import NotParsed, Volume

    img = bytearray(_pv(32 * MiB, _LVM_TEXT))
    big = 1 << 30
    struct.pack_into("<QQ", img, 512 + 32 + 72, 4096, big)  # the PV header's metadata area: 1 GiB
    label = bytearray(img[512:1024])
    struct.pack_into("<I", label, 16, lvm_crc(bytes(label[20:])))
    img[512:1024] = label
    mda = bytearray(img[4096:4608])
    struct.pack_into("<Q", mda, 32, big)  # area size
    struct.pack_into("<Q", mda, 48, big - 1024)  # text size
    struct.pack_into("<I", mda, 0, lvm_crc(bytes(mda[4:])))
    img[4096:4608] = mda
    sparse = bytearray(encode(bytes(img)))
    struct.pack_into("<I", sparse, 0, (4 << 20) - 1)  # a disk of 4 GiB less 1 KiB (the size is in KiB)
    vol = Volume.whole(SparseImage(bytes(sparse)))
    with pytest.raises(NotParsed, match="larger than we read"):
        lvm_parser.active_disk_ranges(vol, lambda lv: [])
