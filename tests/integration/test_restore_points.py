"""Restore points of a file replica: reverse increments, retention, export, and crashes at each step.

Five passes with random changes and one disk growth, three points kept: each point exported is
byte-identical to the source as it was when its pass committed (saved copies; qemu-img compare and
sha256sum of the flat extents judge), and a point older than the retention is refused by id.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from target_agent.storage import export as export_mod
from target_agent.storage import points as rp
from target_agent.storage import transaction as txn
from target_agent.storage.export import export_point
from tests.support.agents import Keys, Target, replicate, snapshot
from tests.support.tools import change_blocks, make_image, qemu_compare, sha256
from vzcommon.errors import ExitCode, IntegrityError, VzrepError

MiB = 1 << 20
VM = "rp"


def grow(path: Path, extra: int, seed: int) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size + extra)
        f.seek(size + extra // 2)
        f.write(os.urandom(64 * 1024))


@pytest.fixture
async def target3(tmp_path: Path, session_keys: Keys):
    t = await Target(tmp_path / "data", session_keys, restore_points=3).start()
    try:
        yield t
    finally:
        await t.stop()


async def five_passes(t: Target, tmp_path: Path) -> tuple[list[str], dict[str, Path]]:
    """Five committed passes (the fourth grows the disk); the source saved after each, by point id."""
    src = make_image(tmp_path / "d.img", 16 * MiB, data_blocks=80, seed=1)
    state, saved = tmp_path / "state", {}
    ids = []
    for n in range(5):
        if n:
            change_blocks(src, 25, seed=10 + n)
            change_blocks(src, 4, seed=20 + n, zero=True)
        if n == 3:
            grow(src, 4 * MiB, seed=30)
        report = await replicate(t.spec(), VM, {"d": src}, state)
        ids.append(report.generation)
        saved[report.generation] = tmp_path / f"saved-{n}.img"
        shutil.copy(src, saved[report.generation])
    return ids, saved


async def test_five_passes_three_points_each_exported_byte_identical(target3: Target, tmp_path: Path) -> None:
    ids, saved = await five_passes(target3, tmp_path)
    vdir = target3.vm(VM)
    points = rp.load(vdir)
    assert [p.id for p in points] == ids[-3:]
    assert points[0].increments == {} and all(p.increments for p in points[1:])
    assert sorted(d.name for d in (vdir / "points").iterdir()) == sorted(["index", *ids[-2:]])
    assert not list(vdir.glob("*.vzundo"))
    before = snapshot(vdir)
    for pid in ids[-3:]:
        out = tmp_path / f"export-{pid}"
        [desc] = export_point(target3.data_dir, VM, pid, out)
        qemu_compare(saved[pid], desc)
        flat = out / "d-flat.vmdk"
        assert flat.stat().st_size == saved[pid].stat().st_size  # older points at their old size
        assert sha256(flat) == sha256(saved[pid])
        assert flat.stat().st_blocks * 512 < flat.stat().st_size  # thin: zeros stayed holes
    assert snapshot(vdir) == before  # export touched neither the replica nor its points
    for old in ids[:2]:
        with pytest.raises(VzrepError, match=f"no restore point {old!r}.*older than the retention") as exc:
            export_point(target3.data_dir, VM, old, tmp_path / "nope")
        assert exc.value.exit_code == ExitCode.INPUT


async def test_points_and_export_through_the_cli(target3: Target, tmp_path: Path) -> None:
    ids, saved = await five_passes(target3, tmp_path)
    cmd = [sys.executable, "-m", "target_agent.cli"]
    out = subprocess.run(
        [*cmd, "points", "--data-dir", str(target3.data_dir), "--vm", VM, "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows = json.loads(out.stdout)["points"]
    assert [r["id"] for r in rows] == ids[-3:][::-1]  # newest first
    assert rows[0]["live"] and rows[0]["held_bytes"] == 0
    assert all(r["held_bytes"] > 0 and r["ours"] for r in rows[1:])
    assert rows[-1]["disks"]["d"] == 16 * MiB and rows[0]["disks"]["d"] == 20 * MiB
    res = subprocess.run(
        [*cmd, "export", "--data-dir", str(target3.data_dir), "--vm", VM, "--point", ids[-2], "--to", str(tmp_path / "x")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    qemu_compare(saved[ids[-2]], tmp_path / "x" / "d.vmdk")
    res = subprocess.run(
        [*cmd, "export", "--data-dir", str(target3.data_dir), "--vm", VM, "--point", ids[0], "--to", str(tmp_path / "y")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == ExitCode.INPUT and f"no restore point {ids[0]!r}" in res.stderr


async def test_a_damaged_increment_is_refused_before_anything_is_written(
    target3: Target, tmp_path: Path
) -> None:
    ids, _ = await five_passes(target3, tmp_path)
    inc = rp.increment_path(target3.vm(VM), ids[-1], "d")
    with open(inc, "r+b") as f:
        f.truncate(inc.stat().st_size - 100)
    out = tmp_path / "out"
    with pytest.raises(IntegrityError, match="is damaged") as exc:
        export_point(target3.data_dir, VM, ids[-3], out)
    assert exc.value.exit_code == ExitCode.INTEGRITY
    assert not out.exists() or list(out.iterdir()) == []
    # the newest point needs no increment: still exported
    export_point(target3.data_dir, VM, ids[-1], tmp_path / "live")


async def test_retention_of_one_keeps_no_increments(tmp_path: Path, session_keys: Keys) -> None:
    t = await Target(tmp_path / "data", session_keys, restore_points=1).start()
    try:
        ids, _ = await five_passes(t, tmp_path)
    finally:
        await t.stop()
    assert [p.id for p in rp.load(t.vm(VM))] == ids[-1:]
    assert sorted(x.name for x in (t.vm(VM) / "points").iterdir()) == ["index"]


@pytest.mark.parametrize("step", ["journal", "keep_increment", "write_index", "prune"])
async def test_a_crash_at_each_step_of_retention_loses_nothing(
    target3: Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """The commit dies at each step of keeping an increment and retiring the oldest; recovery (as at
    start-up) finishes it, and every kept point still exports byte-identical."""
    ids, saved = await five_passes(target3, tmp_path)
    src = tmp_path / "d.img"
    change_blocks(src, 30, seed=99)

    class Crash(Exception):
        pass

    def boom(*a: object, **k: object) -> None:
        raise Crash

    real_journal = txn.VmPass._journal
    if step == "journal":  # before the commit point: the pass is rolled back
        monkeypatch.setattr(
            txn.VmPass,
            "_journal",
            lambda self, state, *a: boom() if state == "committed" else real_journal(self, state, *a),
        )
    else:
        target = {"keep_increment": rp, "write_index": rp, "prune": rp}[step]
        monkeypatch.setattr(target, step, boom)
    with pytest.raises(VzrepError):
        await replicate(target3.spec(), VM, {"d": src}, tmp_path / "state")
    monkeypatch.undo()
    txn.recover_vm(target3.data_dir, VM)
    points = rp.load(target3.vm(VM))
    if step == "journal":
        assert [p.id for p in points] == ids[-3:]
    else:
        assert [p.id for p in points][:-1] == ids[-2:]  # the new point replaced the oldest
        saved[points[-1].id] = tmp_path / "saved-new.img"
        shutil.copy(src, saved[points[-1].id])
    assert sorted(d.name for d in (target3.vm(VM) / "points").iterdir()) == sorted(
        ["index", *(p.id for p in points[1:])]
    )
    for p in points:
        [desc] = export_point(target3.data_dir, VM, p.id, tmp_path / f"after-{step}-{p.id}")
        qemu_compare(saved[p.id], desc)


async def test_a_crashed_export_leaves_nothing_half_made(
    target3: Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids, saved = await five_passes(target3, tmp_path)
    before = snapshot(target3.vm(VM))
    out = tmp_path / "out"

    def boom(*a: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(export_mod, "_apply", boom)
    with pytest.raises(VzrepError, match="export of restore point"):
        export_point(target3.data_dir, VM, ids[-3], out)
    monkeypatch.undo()
    assert list(out.iterdir()) == []  # no disk, no hidden work directory
    assert snapshot(target3.vm(VM)) == before
    [desc] = export_point(target3.data_dir, VM, ids[-3], out)  # and it works afterwards
    qemu_compare(saved[ids[-3]], desc)
