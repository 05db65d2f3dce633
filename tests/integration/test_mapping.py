"""Replica mapping (``vzrep-target map``): onto another job's replica with its restore points and a
foreign file, onto a copy made by another tool, and crashes on either side of the commit point.

Judges: ``qemu-img compare`` (replica equal to the source), sha256 (the foreign file untouched, the
mapped point exported equal to the copy as it was), the target's own index and ``points --json``.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest

from source_agent.jobs.runner import run_job
from target_agent import cli as target_cli
from target_agent.storage import mapping
from target_agent.storage import points as rp
from target_agent.storage.export import export_point
from target_agent.storage.lock import VmLock
from target_agent.storage.transaction import recover_all, recover_vm
from tests.support.agents import Target, replicate
from tests.support.jobs import job_of, write_job
from tests.support.tools import change_blocks, make_image, qemu_compare, run, sha256
from vzcommon import fsio
from vzcommon.errors import BusyError, InputError

MiB = 1 << 20
BS = 64 << 10


def target_main(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    assert target_cli.main(list(args)) == 0
    return capsys.readouterr().out


async def test_mapping_onto_another_jobs_replica_keeps_its_3_points_and_adds_one(
    tmp_path: Path, target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    state, old_job = tmp_path / "state", str(uuid.uuid4())
    disk = make_image(tmp_path / "web.img", 16 * MiB, data_blocks=60)
    for n in range(3):  # another job made 3 restore points of VM "web-old"
        if n:
            change_blocks(disk, 5, seed=n)
        assert (await replicate(target.spec(), "web-old", {"disk0": disk}, state / "other", job=old_job)).ok
    old = target.vm("web-old")
    # another tool took a snapshot over the replica's disk: a qcow2 delta whose backing file is ours
    run(
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "disk0-flat.vmdk",
        "-F",
        "raw",
        str(old / "disk0-snap1.qcow2"),
    )
    foreign = sha256(old / "disk0-snap1.qcow2")
    assert mapping.foreign_files(old) == ["disk0-snap1.qcow2"]

    out = target_main(
        capsys, "map", "--data-dir", str(target.data_dir), "--vm", "web", "--from-vm", "web-old"
    )
    assert "3 restore points, kept" in out and not old.exists()
    changed = change_blocks(disk, 6, seed=42)
    path = write_job(
        tmp_path / "job.toml", target, [{"name": "web", "disks": [f"disk0={disk}"], "map_from_vm": "web-old"}],
        state_dir=state, mapping=True, restore_points=4,
    )  # fmt: skip
    job = job_of(path)
    (res,) = await run_job(job, state)
    assert res.status == "replicated" and res.report is not None
    d = res.report.disks[0]
    # the map came along: compared, not re-read from the target's bytes; only the changed blocks sent
    assert d.map_status == "sending" and not d.map_rebuilt and d.blocks_changed == len(changed) == 6
    assert d.payload_raw == 6 * BS and d.wire_bytes < 6 * BS + 4096
    qemu_compare(disk, target.vm("web") / "disk0.vmdk")
    doc = json.loads(
        target_main(capsys, "points", "--data-dir", str(target.data_dir), "--vm", "web", "--json")
    )
    assert [p["job"] for p in doc["points"]] == [job.id, old_job, old_job, old_job]  # 3 of ours became 4
    assert doc["foreign"] == ["disk0-snap1.qcow2"]
    assert all("snap1" not in json.dumps(p) for p in doc["points"])
    # retention (4) drops the oldest of ours at the next pass, never the foreign file
    change_blocks(disk, 2, seed=43)
    (res,) = await run_job(job, state)
    assert res.status == "replicated"
    kept = rp.load(target.vm("web"))
    assert len(kept) == 4 and [p.job for p in kept] == [old_job, old_job, job.id, job.id]
    assert sha256(target.vm("web") / "disk0-snap1.qcow2") == foreign


async def test_mapping_onto_a_copy_made_by_another_tool_leaves_2_points(
    tmp_path: Path, target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    disk = make_image(tmp_path / "db.img", 32 * MiB, data_blocks=200)
    copies = tmp_path / "data" / "copies"  # on the data dir's filesystem: mapping moves, never copies
    copies.mkdir(parents=True)
    run(
        "qemu-img",
        "convert",
        "-q",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        str(disk),
        str(copies / "db.vmdk"),
    )
    copy_sum = sha256(copies / "db-flat.vmdk")
    changed = change_blocks(disk, 10, seed=7)  # ~2 % of the 512 blocks
    out = target_main(
        capsys,
        "map",
        "--data-dir",
        str(target.data_dir),
        "--vm",
        "db",
        "--disk",
        f"disk0={copies / 'db.vmdk'}",
    )
    assert "restore point" in out and "(mapped)" in out
    assert not (copies / "db.vmdk").exists() and not (copies / "db-flat.vmdk").exists()  # moved in
    path = write_job(
        tmp_path / "job.toml", target, [{"name": "db", "disks": [f"disk0={disk}"], "map_disks": {"disk0": "x"}}],
        state_dir=tmp_path / "state", mapping=True,
    )  # fmt: skip
    (res,) = await run_job(job_of(path), tmp_path / "state")
    assert res.status == "replicated" and res.report is not None
    d = res.report.disks[0]
    assert d.map_rebuilt and d.blocks_changed == len(changed) == 10
    print(
        f"first pass after mapping: {d.blocks_changed} blocks changed ({d.payload_raw} bytes), {d.wire_bytes} bytes on the wire"
    )
    assert d.wire_bytes < 10 * BS + 4096  # the differences only (random data: compression gains nothing)
    qemu_compare(disk, target.vm("db") / "disk0.vmdk")
    points = rp.load(target.vm("db"))
    assert [p.origin for p in points] == ["mapped", "pass"]
    out_dir = tmp_path / "export"
    export_point(target.data_dir, "db", points[0].id, out_dir)  # the mapped state, as the copy was
    assert sha256(out_dir / "disk0-flat.vmdk") == copy_sum


def test_bad_copies_are_refused_and_change_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    sparse = data / "sparse.vmdk"
    run("qemu-img", "create", "-q", "-f", "vmdk", str(sparse), "1M")
    before = sha256(sparse)
    with pytest.raises(InputError, match="is a sparse VMDK .* image, not flat bytes.*vzrep-target seed"):
        mapping.map_disks(data, "vm1", {"disk0": sparse})
    odd = data / "odd.img"
    odd.write_bytes(b"x" * 1000)
    with pytest.raises(InputError, match="not a whole number of 512-byte sectors"):
        mapping.map_disks(data, "vm1", {"disk0": odd})
    with pytest.raises(InputError, match="no replica of VM 'nope'"):
        mapping.map_from_vm(data, "vm1", "nope")
    assert sha256(sparse) == before and sorted(p.name for p in data.iterdir()) == ["odd.img", "sparse.vmdk"]


def test_a_crash_before_the_commit_point_leaves_the_copy_where_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    copy = make_image(data / "copy.img", 4 * MiB, data_blocks=10)
    before = sha256(copy)

    def crash(src: Path, dst: Path) -> None:
        if Path(src).name.startswith(mapping.STAGING_PREFIX):  # the staging directory's rename
            raise OSError(5, "injected crash at the commit point")
        rename(src, dst)

    rename = fsio.replace
    monkeypatch.setattr(fsio, "replace", crash)
    with pytest.raises(OSError, match="injected"):
        mapping.map_disks(data, "vm1", {"disk0": copy})
    monkeypatch.undo()
    # no replica, no staging left (only the lock file one ``map`` of a VM at a time takes)
    assert sha256(copy) == before and os_listing(data) == [".map-vm1.lock", "copy.img"]
    assert "mapped onto" in mapping.map_disks(data, "vm1", {"disk0": copy})  # it can simply run again
    assert not copy.exists() and [p.origin for p in rp.load(data / "vm1")] == ["mapped"]


def test_start_up_recovery_removes_the_staging_of_a_mapping_that_crashed_before_its_commit(
    tmp_path: Path,
) -> None:
    """Before, only a next ``map`` of that VM removed it: hard links to the copy stayed forever."""
    data, crashed = tmp_path / "data", tmp_path / "crashed"
    data.mkdir()
    copy = make_image(data / "copy.img", 4 * MiB, data_blocks=10)
    before = sha256(copy)

    def crash(src: Path, dst: Path) -> None:
        if Path(src).name.startswith(mapping.STAGING_PREFIX):  # the process dies at the commit point
            shutil.copytree(data, crashed, symlinks=True)
            raise RuntimeError("crashed")
        rename(src, dst)

    rename = fsio.replace
    uninstall = fsio.install({"replace": crash})
    try:
        with pytest.raises(RuntimeError, match="crashed"):
            mapping.map_disks(data, "vm1", {"disk0": copy})
    finally:
        uninstall()
    staging = [p.name for p in crashed.iterdir() if p.is_dir()]
    assert len(staging) == 1 and staging[0].startswith(".map-vm1.")
    assert recover_all(crashed) == {
        "vm1": f"removed the staging directory of an interrupted mapping: {staging[0]}"
    }
    assert os_listing(crashed) == [".map-vm1.lock", "copy.img"] and sha256(crashed / "copy.img") == before
    assert (crashed / "copy.img").stat().st_nlink == 1  # no hard link of it left anywhere


def test_a_crash_after_the_commit_point_is_finished_by_recovery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    copy = make_image(data / "copy.img", 4 * MiB, data_blocks=10)
    before = sha256(copy)
    monkeypatch.setattr(mapping, "finish", lambda vdir: None)  # the process dies right after the rename
    mapping.map_disks(data, "vm1", {"disk0": copy})
    monkeypatch.undo()
    vdir = data / "vm1"
    assert copy.exists() and (vdir / mapping.RECORD).exists()  # the copy's old name still links to it
    assert mapping.foreign_files(vdir) == []
    recover_vm(data, "vm1")  # what every pass's begin and the agent's start-up run
    assert not copy.exists() and not (vdir / mapping.RECORD).exists()
    assert sha256(vdir / "disk0-flat.vmdk") == before


def os_listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


async def test_from_vm_waits_for_a_running_pass_and_refuses_onto_a_replica(
    tmp_path: Path, target: Target
) -> None:
    state = tmp_path / "state"
    for vm, seed in (("a", 1), ("b", 2)):
        disk = make_image(tmp_path / f"{vm}.img", 4 * MiB, data_blocks=5, seed=seed)
        assert (await replicate(target.spec(), vm, {"disk0": disk}, state)).ok
    before = {vm: sorted(p.name for p in target.vm(vm).iterdir()) for vm in "ab"}
    with VmLock(target.vm("a"), "a"), pytest.raises(BusyError, match="already running"):
        mapping.map_from_vm(target.data_dir, "c", "a")  # a pass of "a" holds its lock
    with pytest.raises(InputError, match="VM 'b' already has a replica"):
        mapping.map_from_vm(target.data_dir, "b", "a")
    assert {vm: sorted(p.name for p in target.vm(vm).iterdir()) for vm in "ab"} == before
    assert not target.vm("c").exists()
