"""Reads through mmap: used only where SIGBUS cannot be expected, and they read what ``pread`` reads."""

from __future__ import annotations

import ctypes
import os
import random
import subprocess
from pathlib import Path

import pytest

from source_agent.disks import open_disk
from source_agent.disks.mapping import LOCAL_FILESYSTEMS, filesystem_type, map_range, mappable
from source_agent.disks.raw import RawReader
from source_agent.disks.vmdk import VmdkFlatReader
from tests.support.tools import need, run
from vzcommon.errors import InputError

MiB = 1 << 20


def test_filesystem_type_agrees_with_stat(tmp_path: Path) -> None:
    """Our mountinfo lookup names the same filesystem type as coreutils' ``stat -f``."""
    probe = tmp_path / "f"
    probe.write_bytes(b"x")
    theirs = subprocess.run(
        ["stat", "-f", "-c", "%T", str(probe)], capture_output=True, text=True, check=True
    )
    fd = os.open(probe, os.O_RDONLY)
    try:
        ours = filesystem_type(fd)
    finally:
        os.close(fd)
    assert ours  # found at all
    # stat -f reports ext2/ext3/ext4 all as "ext2/ext3"; otherwise the names are the same
    assert ours == theirs.stdout.strip() or (ours.startswith("ext") and theirs.stdout.startswith("ext"))


def test_mapped_range_reads_like_pread_and_holes_read_as_zeros(tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    data = random.Random(2).randbytes(MiB)
    with open(img, "wb") as f:
        f.truncate(8 * MiB)
        f.seek(3 * MiB + 512)  # not page aligned on either side
        f.write(data)
    r = RawReader(img, "d")
    try:
        fd = os.open(img, os.O_RDONLY)
        if filesystem_type(fd) not in LOCAL_FILESYSTEMS:
            pytest.skip(f"{tmp_path} is on {filesystem_type(fd)!r}: mapping is off there by design")
        os.close(fd)
        m = r.map_range(2 * MiB, 4 * MiB)
        assert m is not None
        assert bytes(m.view[MiB + 512 : 2 * MiB + 512]) == data == r.pread(3 * MiB + 512, MiB)
        # the address the scan kernel reads at: the same bytes as the view
        assert ctypes.string_at(m.address, MiB) == bytes(MiB)
        assert ctypes.string_at(m.address + MiB + 512, MiB) == data
        m.close()
        assert r.map_range(7 * MiB, 2 * MiB) is None  # past the end: read with pread instead
        odd = map_range(r._fd, 3 * MiB + 512, 4096)  # an offset inside a page is allowed
        assert odd is not None and bytes(odd.view) == data[:4096]
        odd.close()
    finally:
        r.close()


def test_operator_switch_and_non_regular_files_are_never_mapped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(bytes(MiB))
    monkeypatch.setenv("VZREP_READ", "pread")
    r = RawReader(img, "d")
    assert r.map_range(0, MiB) is None
    r.check_size()  # unchanged: fine
    os.truncate(img, MiB // 2)
    with pytest.raises(InputError, match="shrank from 1048576 to 524288 bytes"):
        r.check_size()
    r.close()
    monkeypatch.delenv("VZREP_READ")
    fd = os.open("/dev/null", os.O_RDONLY)  # a character device: never mapped
    try:
        assert not mappable(fd)
    finally:
        os.close(fd)


def test_flat_vmdk_maps_within_one_extent_only_and_never_past_a_short_extent_file(tmp_path: Path) -> None:
    desc = tmp_path / "sys.vmdk"
    run(need("qemu-img"), "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", desc, "4M")
    r = open_disk(desc, "sys")
    assert isinstance(r, VmdkFlatReader)
    try:
        if not r._mappable[0]:
            pytest.skip("the extent is not on a local filesystem: mapping is off there by design")
        m = r.map_range(MiB, MiB)
        assert m is not None and ctypes.string_at(m.address, MiB) == bytes(MiB)
        m.close()
        os.truncate(tmp_path / "sys-flat.vmdk", 2 * MiB)  # the extent file is now shorter than declared
        assert r.map_range(MiB, 2 * MiB) is None  # would reach past the file's end: not mapped
        buf = bytearray(b"\xff" * 2 * MiB)
        assert r.pread_into(MiB, memoryview(buf)) == 2 * MiB and buf == bytes(2 * MiB)  # reads as zeros
        with pytest.raises(InputError, match="shrank during the pass"):
            r.check_size()  # ... which a pass must not take for the disk's content
    finally:
        r.close()
