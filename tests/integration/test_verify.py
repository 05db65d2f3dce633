"""``vzrep-target verify``: a replica's bytes and restore points against their own records.

The replica is made by real passes; it is then damaged in ways its map cannot see, with ``dd
conv=notrunc`` (bytes flipped, a block zeroed) and ``truncate`` (a restore point's increment), and
verify must name exactly those ranges and that point, write nothing to the replica (sha256sum before
and after), and exit 11.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from target_agent.storage import points as rp
from tests.support.agents import Keys, Target, replicate
from tests.support.tools import change_blocks, make_image, run, sha256
from vzcommon.errors import ExitCode

MiB = 1 << 20
BLOCK = 64 * 1024
VM = "ver"


def verify(data_dir: Path) -> tuple[int, dict]:
    res = subprocess.run(
        [sys.executable, "-m", "target_agent.cli", "verify", "--data-dir", str(data_dir), "--vm", VM, "--json"],
        capture_output=True,
        text=True,
    )
    assert res.stdout, res.stderr
    return res.returncode, json.loads(res.stdout)


@pytest.fixture
async def replica(tmp_path: Path, session_keys: Keys):
    """Three passes (three restore points) of a 16 MiB disk; the target's data dir."""
    t = await Target(tmp_path / "data", session_keys, restore_points=3).start()
    src = make_image(tmp_path / "d.img", 16 * MiB, data_blocks=120, seed=3)
    try:
        for n in range(3):
            if n:
                change_blocks(src, 20, seed=10 + n)
            assert (await replicate(t.spec(), VM, {"d": src}, tmp_path / "state")).ok
    finally:
        await t.stop()
    return t.data_dir


def dd(path: Path, offset: int, length: int, source: str) -> None:
    run("dd", f"if={source}", f"of={path}", "bs=1", f"seek={offset}", f"count={length}", "conv=notrunc",
        "status=none")  # fmt: skip


async def test_a_clean_replica_verifies_and_is_not_written(replica: Path) -> None:
    flat = replica / VM / "d-flat.vmdk"
    before = sha256(flat)
    rc, report = verify(replica)
    assert rc == 0 and report["ok"], report
    (disk,) = report["disks"]
    assert disk["bytes_compared"] == 16 * MiB and disk["differing"] == []
    assert len(report["points"]) == 2 and not any(report["points"].values())  # two have increments
    assert sha256(flat) == before
    status = subprocess.run(
        [sys.executable, "-m", "target_agent.cli", "status", "--data-dir", str(replica), "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(status.stdout)["vms"][0]["last_verify"]["ok"] is True


async def test_damage_the_map_cannot_see_is_named_exactly(replica: Path) -> None:
    vdir = replica / VM
    flat = vdir / "d-flat.vmdk"
    dd(flat, 3 * BLOCK + 100, 7, "/dev/urandom")  # bytes flipped inside block 3
    dd(flat, 200 * BLOCK, BLOCK, "/dev/urandom")  # block 200 and 201 overwritten (a rogue `dd`)
    dd(flat, 201 * BLOCK, BLOCK, "/dev/urandom")
    with open(flat, "rb") as f:  # a data block zeroed: pick one the replica holds data in
        data_block = next(i for i in range(16 * MiB // BLOCK) if f.read(BLOCK).strip(b"\0") and i > 210)
    dd(flat, data_block * BLOCK, BLOCK, "/dev/zero")
    newest_inc = rp.load(vdir)[-1]
    inc = rp.increment_path(vdir, newest_inc.id, "d")
    run("truncate", "-s", f"{inc.stat().st_size - 1000}", inc)
    before = sha256(flat)
    rc, report = verify(replica)
    assert rc == ExitCode.INTEGRITY and not report["ok"]
    (disk,) = report["disks"]
    assert [tuple(r) for r in disk["differing"]] == [
        (3 * BLOCK, BLOCK), (200 * BLOCK, 2 * BLOCK), (data_block * BLOCK, BLOCK),
    ]  # fmt: skip
    damaged = {p: why for p, why in report["points"].items() if why}
    assert list(damaged) == [newest_inc.id] and "damaged" in damaged[newest_inc.id]
    assert sha256(flat) == before  # verify writes nothing to the replica
