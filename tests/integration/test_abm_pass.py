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


async def test_abm_replication_of_ntfs_and_xfs_judged_by_their_own_tools(
    target: Target, tmp_path: Path
) -> None:
    """NTFS and XFS through the real pass with ABM on: ntfsfix -n / xfs_repair -n pass on the replica
    and every file reads back byte-identical (ntfscat; XFS through xfs_db's block map)."""
    from tests.source_agent.filters.helpers import run as frun
    from tests.source_agent.filters.test_ntfs import make_ntfs
    from tests.source_agent.filters.test_xfs import make_xfs, read_file

    (tmp_path / "n").mkdir()
    (tmp_path / "x").mkdir()
    ntfs, ntfs_files = make_ntfs(tmp_path / "n")
    xfs, xfs_files = make_xfs(tmp_path / "x", ["-d", "agcount=4"])
    r = await replicate(
        target.spec(), "fs", {"ntfs": ntfs, "xfs": xfs}, tmp_path / "st", abm=AbmSettings(enabled=True)
    )
    assert [d.mode for d in r.disks] == ["differential+abm"] * 2
    assert all(d.bytes_skipped_filter > 0 for d in r.disks)  # free space was never read
    vdir = target.vm("fs")
    res = frun("ntfsfix", "-n", vdir / "ntfs-flat.vmdk", check=False)
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()
    for name, data in ntfs_files.items():
        assert frun("ntfscat", vdir / "ntfs-flat.vmdk", f"/{name}").stdout == data, name
    res = frun("xfs_repair", "-n", "-f", vdir / "xfs-flat.vmdk", check=False)
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()
    for name, data in xfs_files.items():
        assert read_file(vdir / "xfs-flat.vmdk", name) == data, name
