"""Disks in formats qemu reads, as sources: every reader's bytes equal ``qemu-img convert -O raw`` of
the image, and only the allocated areas are read (holes stay holes)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from source_agent.disks import QemuReader, VmdkFlatReader, open_disk
from tests.support.seeds import KINDS, make_seed
from tests.support.tools import make_image, need, run
from vzcommon.errors import ImageError, InputError

MiB = 1 << 20


def qemu_spec(image: Path) -> str:
    """What qemu-img is given to read ``image``: an OVA's disk member as a byte range of the tar."""
    if image.suffix != ".ova":
        return str(image)
    with tarfile.open(image) as tar:
        m = next(m for m in tar.getmembers() if m.name.endswith(".vmdk"))
    return json.dumps(
        {"driver": "vmdk", "file": {"driver": "raw", "offset": m.offset_data, "size": m.size,
                                    "file": {"driver": "file", "filename": str(image)}}}
    ).join(["json:", ""])  # fmt: skip


def read_all(reader: QemuReader | VmdkFlatReader, out: Path) -> None:
    """The disk as a raw file, written only where the reader says data may be."""
    with open(out, "wb") as f:
        f.truncate(reader.size)
        for off, n in reader.data_extents():
            buf = bytearray(n)
            assert reader.pread_into(off, memoryview(buf)) == n
            f.seek(off)
            f.write(buf)


@pytest.mark.parametrize(
    "kind", [k for k in KINDS if k not in ("raw", "monolithicFlat", "twoGbMaxExtentFlat")]
)
def test_reader_equals_qemu_img_convert(tmp_path: Path, kind: str) -> None:
    raw = make_image(tmp_path / "src.img", 8 * MiB, data_blocks=30, seed=3)
    image = make_seed(kind, raw, tmp_path / "seed")
    r = open_disk(image, "d")
    try:
        assert isinstance(r, QemuReader) and r.size == 8 * MiB
        assert r.map_range(0, 65536) is None and r.region() is None
        read_all(r, tmp_path / "ours.raw")
        if kind not in ("vhdx",):  # qemu's VHDX driver reports every block as data
            assert sum(n for _, n in r.data_extents()) <= 40 * 65536  # 30 data blocks (+9 in chains)
        r.check_size()
    finally:
        r.close()
    run(need("qemu-img"), "convert", "-O", "raw", qemu_spec(image), tmp_path / "qemu.raw")
    assert (tmp_path / "ours.raw").read_bytes() == (tmp_path / "qemu.raw").read_bytes()
    assert (tmp_path / "qemu.raw").read_bytes() == raw.read_bytes()


def test_ova_member_by_name_and_a_missing_one(tmp_path: Path) -> None:
    raw = make_image(tmp_path / "src.img", 4 * MiB, data_blocks=10, seed=4)
    ova = make_seed("ova", raw, tmp_path / "seed")
    r = open_disk(ova / "web-disk1.vmdk", "d")
    try:
        assert r.pread(0, 4 * MiB) == raw.read_bytes()
    finally:
        r.close()
    with pytest.raises(ImageError, match="no disk member 'other.vmdk'; its disks: web-disk1.vmdk"):
        open_disk(ova / "other.vmdk", "d")


def test_flat_vmdks_keep_the_direct_reader(tmp_path: Path) -> None:
    raw = make_image(tmp_path / "src.img", 4 * MiB, data_blocks=10, seed=5)
    r = open_disk(make_seed("monolithicFlat", raw, tmp_path / "seed"), "d")
    assert isinstance(r, VmdkFlatReader)  # mapped reads and hash-ahead stay
    r.close()


def test_damaged_sources_are_refused_with_the_file_named(tmp_path: Path) -> None:
    raw = make_image(tmp_path / "src.img", 4 * MiB, data_blocks=10, seed=6)
    q = make_seed("qcow2", raw, tmp_path / "q")
    with open(q, "r+b") as f:
        f.write(b"XXXX")  # the magic
    with pytest.raises(ImageError, match=rf"{q}: the name says qcow2 but the file has no valid qcow2 header"):
        open_disk(q, "d")
    s = make_seed("streamOptimized", raw, tmp_path / "s")
    with open(s, "r+b") as f:
        f.truncate(s.stat().st_size // 2)
    with pytest.raises(InputError, match=rf"{s} could not be checked \(damaged or truncated\?\)"):
        open_disk(s, "d")
