"""A pass with Active Block Mapping on: deleted data is not read or sent; the replica's filesystem
is clean and every file reads back byte-identical (judged by e2fsck and debugfs)."""

from __future__ import annotations

import random
from pathlib import Path

from source_agent.planning import AbmSettings
from tests.support.agents import Target, replicate
from tests.support.tools import e2fsck_clean, make_ext4, run


def files_in(image: Path) -> list[str]:
    out = run("debugfs", "-R", "ls -p /dir0", image).stdout
    return sorted(
        line.split("/")[5]
        for line in out.splitlines()
        if line.count("/") >= 6 and line.split("/")[5].endswith(".bin")
    )


async def test_abm_skips_deleted_data_and_replica_is_clean(target: Target, tmp_path: Path) -> None:
    fs = make_ext4(tmp_path / "fs.img", 96, tmp_path / "tree", files=60)
    # Fill then delete a big file: its blocks keep their (random) bytes but are free in the bitmap.
    big = tmp_path / "big.bin"
    big.write_bytes(random.Random(4).randbytes(24 << 20))
    run("debugfs", "-w", "-R", f"write {big} big.bin", fs)
    run("debugfs", "-w", "-R", "rm big.bin", fs)
    state = tmp_path / "state"
    on = await replicate(target.spec(), "abm", {"fs": fs}, state, abm=AbmSettings(enabled=True))
    d = on.disks[0]
    assert d.mode == "differential+abm"
    assert d.bytes_skipped_filter > 20 << 20  # the deleted file's blocks were never read
    assert d.payload_raw < 40 << 20
    replica = target.vm("abm") / "fs-flat.vmdk"
    e2fsck_clean(replica)
    for name in files_in(fs):
        a, b = tmp_path / "a", tmp_path / "b"
        run("debugfs", "-R", f"dump /dir0/{name} {a}", fs)
        run("debugfs", "-R", f"dump /dir0/{name} {b}", replica)
        assert a.read_bytes() == b.read_bytes(), name
    # The filter files are the seed's working files: gone once the disk is done.
    assert not list((state / "work" / "abm").glob("*.vztemp"))
    # A block that becomes active later is sent: write a new file into the freed space.
    new = tmp_path / "new.bin"
    new.write_bytes(random.Random(5).randbytes(3 << 20))
    run("debugfs", "-w", "-R", f"write {new} new.bin", fs)
    r2 = await replicate(target.spec(), "abm", {"fs": fs}, state, abm=AbmSettings(enabled=True))
    assert r2.disks[0].blocks_changed >= 48
    e2fsck_clean(replica)
    out = tmp_path / "out.bin"
    run("debugfs", "-R", f"dump new.bin {out}", replica)
    assert out.read_bytes() == new.read_bytes()
    # With ABM off the same disk is read in full.
    off = await replicate(target.spec(), "abm-off", {"fs": fs}, tmp_path / "s2")
    assert off.disks[0].bytes_skipped_filter == 0 and off.disks[0].bytes_read > d.bytes_read
