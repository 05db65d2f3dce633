"""Source disk readers against images made by qemu-img."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from source_agent.disks import default_name, open_disk, parse_disk_spec
from source_agent.disks.raw import RawReader
from source_agent.disks.vmdk import VmdkFlatReader
from tests.support.tools import need, run
from vzcommon.errors import InputError

MiB = 1 << 20


def test_raw_reader_finds_holes(tmp_path: Path) -> None:
    img = tmp_path / "a.img"
    with open(img, "wb") as f:
        f.truncate(8 * MiB)
        f.seek(3 * MiB)
        f.write(b"x" * 4096)
    r = RawReader(img, "a")
    try:
        ext = list(r.data_extents())
        assert sum(n for _, n in ext) < 1 * MiB and ext[0][0] <= 3 * MiB < ext[0][0] + ext[0][1]
        assert r.pread(3 * MiB, 4) == b"xxxx" and r.size == 8 * MiB
    finally:
        r.close()


def test_flat_vmdk_from_qemu_img_reads_like_its_extent(tmp_path: Path) -> None:
    desc = tmp_path / "sys.vmdk"
    run(need("qemu-img"), "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", desc, "4M")
    data = random.Random(1).randbytes(MiB)
    with open(tmp_path / "sys-flat.vmdk", "r+b") as f:
        f.seek(MiB)
        f.write(data)
    r = open_disk(desc, "sys")
    assert isinstance(r, VmdkFlatReader) and r.size == 4 * MiB
    assert r.pread(MiB, MiB) == data and r.pread(0, 16) == bytes(16)
    r.close()


def test_split_flat_vmdk_with_several_extents(tmp_path: Path) -> None:
    desc = tmp_path / "big.vmdk"
    run(need("qemu-img"), "create", "-q", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentFlat", desc, "5G")
    r = open_disk(desc, "big")
    assert isinstance(r, VmdkFlatReader) and r.size == 5 << 30 and len(r._parts) == 3
    with open(tmp_path / "big-f002.vmdk", "r+b") as f:
        f.seek(5)
        f.write(b"hello")
    assert r.pread((2 << 30) + 5, 5) == b"hello"
    assert r.pread((2 << 30) - 2, 4) == bytes(4)  # a read across two extents
    ext = list(r.data_extents())
    assert any(s <= (2 << 30) + 5 < s + n for s, n in ext)  # the written bytes are inside the data
    assert sum(n for _, n in ext) < 1 << 20  # the rest of the 5 GiB are holes: never read
    r.close()


def test_names_and_bad_sizes(tmp_path: Path) -> None:
    assert default_name(Path("/x/web01-flat.vmdk")) == "web01" and default_name(Path("d.img")) == "d"
    assert parse_disk_spec("boot=/dev/sdb") == ("boot", Path("/dev/sdb"))
    odd = tmp_path / "odd.img"
    odd.write_bytes(b"x" * 1000)
    with pytest.raises(InputError, match="multiple of 512"):
        open_disk(odd, "odd")
    with pytest.raises(InputError, match="cannot open"):
        open_disk(tmp_path / "missing.img", "m")
    with pytest.raises(InputError, match="invalid disk name"):
        open_disk(odd, "../x")
