"""``vzrep-target verify``: a replica's bytes and restore points against their own records.

The replica is made by real passes; it is then damaged in ways its map cannot see, with ``dd
conv=notrunc`` (bytes flipped, a block zeroed) and ``truncate`` (a restore point's increment), and
verify must name exactly those ranges and that point, write nothing to the replica (sha256sum before
and after), and exit 11.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.console.backend import verify_state
from source_agent.tunnel import TargetSpec
from target_agent.storage import points as rp
from tests.support.agents import Keys, Target, replicate, wait_idle
from tests.support.proxy import CutProxy
from tests.support.tools import change_blocks, make_image, qemu_compare, run, sha256
from vzcommon.errors import ConnectionFailed, ExitCode

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


def console_verify(data_dir: Path) -> str:
    """The console Status page's "Last verify" cell, from the agent's real status output."""
    res = subprocess.run(
        [sys.executable, "-m", "target_agent.cli", "status", "--data-dir", str(data_dir), "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return verify_state(json.loads(res.stdout)["vms"][0])


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
    assert console_verify(replica).startswith("ok ")


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
    assert console_verify(replica).startswith("DAMAGED") and "1 point(s) damaged" in console_verify(replica)


@pytest.fixture
async def live(tmp_path: Path, session_keys: Keys):
    """A running target holding two passes of a 16 MiB disk; the target and the source image."""
    t = await Target(tmp_path / "live", session_keys, restore_points=4).start()
    src = make_image(tmp_path / "d.img", 16 * MiB, data_blocks=120, seed=5)
    try:
        for n in range(2):
            if n:
                change_blocks(src, 15, seed=30 + n)
            assert (await replicate(t.spec(), VM, {"d": src}, tmp_path / "state")).ok
        yield t, src
    finally:
        await t.stop()


async def source_cli(t: Target, src: Path, state: Path, *extra: str) -> tuple[int, list[dict]]:
    """``vzrep-source verify`` as a user runs it; its JSON reports (one per pass it ran)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "source_agent.cli", "verify", *t.pass_args(src, state, VM), "--json", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    text = out.decode().strip()
    reports = json.loads("[" + text.replace("}\n{", "},\n{") + "]") if text else []
    assert reports, err.decode()
    return proc.returncode or 0, reports


async def test_source_verify_names_the_damage_and_repair_fixes_it(live, tmp_path: Path) -> None:
    t, src = live
    vdir = t.vm(VM)
    flat = vdir / "d-flat.vmdk"
    rc, (clean,) = await source_cli(t, src, tmp_path / "state")
    assert rc == 0 and clean["disks"][0]["differing"] == [] and clean["disks"][0]["map_wrong_blocks"] == 0
    points_before = [p.id for p in rp.load(vdir)]
    dd(flat, 5 * BLOCK + 4000, 16, "/dev/urandom")  # rot the map cannot see
    with open(src, "rb") as f:
        data_block = next(i for i in range(16 * MiB // BLOCK) if f.read(BLOCK).strip(b"\0") and i > 100)
    dd(flat, data_block * BLOCK, BLOCK, "/dev/zero")
    before = sha256(flat)
    rc, (found,) = await source_cli(t, src, tmp_path / "state")
    assert rc == ExitCode.INTEGRITY
    assert console_verify(t.data_dir).startswith("DAMAGED") and "2 blocks differ" in console_verify(t.data_dir)
    d = found["disks"][0]
    assert [tuple(r) for r in d["differing"]] == [(5 * BLOCK, BLOCK), (data_block * BLOCK, BLOCK)]
    assert d["map_wrong_blocks"] == 2  # the map still described the bytes the pass wrote
    assert sha256(flat) == before and [p.id for p in rp.load(vdir)] == points_before  # nothing written
    assert found["total"]["wire_bytes_sent"] < 64 * 1024  # hashes travel, blocks do not
    rc, reports = await source_cli(t, src, tmp_path / "state", "--repair")
    assert rc == 0, reports
    first, repair, again = reports
    assert first["disks"][0]["differing"]  # the damage, found before the repair
    assert repair["disks"][0]["blocks_changed"] + repair["disks"][0]["zero_blocks_sent"] == 2
    assert again["disks"][0]["differing"] == [] and again["disks"][0]["map_wrong_blocks"] == 0
    qemu_compare(src, vdir / "d.vmdk")
    assert len(rp.load(vdir)) == len(points_before) + 1  # a repair is a pass: it makes a restore point
    assert console_verify(t.data_dir).startswith("ok ")  # the target kept the source's verdict


async def test_a_repair_cut_midway_rolls_back_like_any_pass(live, tmp_path: Path) -> None:
    """The connection is cut inside the repair's blocks: the target rolls the repair back (the replica
    is as damaged as before, byte for byte) and a later repair fixes it."""
    t, src = live
    vdir = t.vm(VM)
    flat = vdir / "d-flat.vmdk"
    for i in range(40, 140, 2):  # 50 damaged blocks: the repair's stream is long enough to cut inside
        dd(flat, i * BLOCK, 512, "/dev/urandom")
    damaged = sha256(flat)
    proxy = await CutProxy(t.port, cut_after=1 << 20).start()
    try:
        spec = TargetSpec("127.0.0.1", proxy.port, t.keys.client_key, t.keys.known_hosts(proxy.port, "kh-cut"))
        with pytest.raises(ConnectionFailed):  # the link stays cut: no resume (resume_window 0)
            await replicate(
                spec, VM, {"d": src}, tmp_path / "state", mode="repair", compress="none", resume_window=0
            )
        assert proxy.cut.is_set()  # the repair was under way when the link went
    finally:
        await proxy.stop()
    await wait_idle(vdir)  # the target saw the cut and rolled the repair back
    assert sha256(flat) == damaged
    rc, reports = await source_cli(t, src, tmp_path / "state", "--repair")
    assert rc == 0 and reports[-1]["disks"][0]["differing"] == []
    qemu_compare(src, vdir / "d.vmdk")
