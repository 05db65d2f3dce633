"""A crashed pass leaves orphans that the next start cleans; hardware changes stop the pass; the
HotAdd device lookup finds the disk under /dev/disk."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from source_agent.vsphere.cbt import StoredDiskState
from source_agent.vsphere.job import vsphere_job
from tests.vsphere.conftest import ROOT, Lab, Vcsim
from vsphere.cleanup import cleanup_orphans
from vsphere.devices import find_block_device
from vsphere.hardware import HardwareChanged, HardwareRecord
from vsphere.model import REPLICATION_SNAPSHOT_PREFIX

pytestmark = pytest.mark.vcsim


async def test_crash_between_hotadd_and_cleanup_is_cleaned_at_next_start(lab: Lab, vcsim: Vcsim) -> None:
    cfg = {
        "host": vcsim.host,
        "port": str(vcsim.port),
        "user": vcsim.user,
        "password": vcsim.password,
        "thumbprint": vcsim.thumbprint,
        "vm": lab.vm.name,
        "work_dir": str(lab.work_dir),
        "uuid_path": str(lab.uuid_path),
        "roots": json.dumps({k: str(v) for k, v in lab.roots.items()}),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.vsphere.crash_helper",
        json.dumps(cfg),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line == b"ATTACHED\n"
    finally:
        proc.send_signal(signal.SIGKILL)  # no finally blocks run: a crash
        await proc.wait()

    left = await lab.client.list_hotadded(lab.appliance.moid)
    assert [d.file_name for d in left] == [lab.vm.disks[0].file_name]
    snaps = await lab.client.list_snapshots(lab.vm.moid)
    assert [s.name.split()[0] for s in snaps] == [REPLICATION_SNAPSHOT_PREFIX]

    # a user's own snapshot is never touched
    await lab.client.create_snapshot(lab.vm.moid, "before-upgrade", "taken by the admin", False)
    report = await cleanup_orphans(lab.client, lab.appliance.moid)  # agent start-up: everything marked
    assert report.detached == [lab.vm.disks[0].file_name]
    assert len(report.snapshots_removed) == 1 and REPLICATION_SNAPSHOT_PREFIX in report.snapshots_removed[0]
    assert not report.errors
    assert await lab.client.list_hotadded(lab.appliance.moid) == []
    assert [s.name for s in await lab.client.list_snapshots(lab.vm.moid)] == ["before-upgrade"]


async def test_next_pass_cleans_its_own_orphans_and_reports_them(lab: Lab, vcsim: Vcsim) -> None:
    # leave orphans the way a crash does: snapshot + HotAdd without clean-up
    from vsphere.model import HotAddRequest

    snap = await lab.client.create_snapshot(
        lab.vm.moid, f"{REPLICATION_SNAPSHOT_PREFIX} x", "[vzrep] r", False
    )
    d = lab.vm.disks[0]
    await lab.client.hotadd(
        lab.appliance.moid,
        [HotAddRequest(d.file_name, d.capacity, "independent_nonpersistent", f"{lab.vm.moid}/{snap.moid}")],
    )
    async with vsphere_job(
        lab.client,
        vm=lab.vm.name,
        stored={},
        recorded=None,
        work_dir=lab.work_dir,
        locator=lab.locator,
        uuid_path=lab.uuid_path,
    ) as j:
        assert j.orphans.detached == [d.file_name]
        assert any(snap.moid in s for s in j.orphans.snapshots_removed)
        assert any("left-over" in e for e in j.events)
        assert len(await lab.client.list_snapshots(lab.vm.moid)) == 1  # only this pass's snapshot
    assert await lab.client.list_snapshots(lab.vm.moid) == []


async def test_hardware_change_stops_the_pass_with_what_changed(lab: Lab) -> None:
    recorded = HardwareRecord.from_vm(lab.vm)
    assert HardwareRecord.from_json(recorded.to_json()) == recorded
    await lab.client.reconfigure(lab.vm.moid, num_cpu=4, memory_mb=1024)
    with pytest.raises(HardwareChanged) as err:
        async with vsphere_job(
            lab.client,
            vm=lab.vm.name,
            stored={},
            recorded=recorded,
            work_dir=lab.work_dir,
            locator=lab.locator,
            uuid_path=lab.uuid_path,
        ):
            pytest.fail("the pass must not start")
    msg = str(err.value)
    assert "CPUs 1 -> 4" in msg and "memory (MB) 256 -> 1024" in msg
    assert "configure the target VM the same way" in msg and "edit the job" in msg
    assert err.value.exit_code == 3
    assert await lab.client.list_snapshots(lab.vm.moid) == []  # stopped before the snapshot


async def test_device_lookup_by_scsi_unit_and_uuid(lab: Lab, tmp_path: Path) -> None:
    """The appliance's /dev/disk tree, pointed at vcsim's datastore file of the HotAdded disk."""
    async with vsphere_job(
        lab.client,
        vm=lab.vm.name,
        stored={},
        recorded=None,
        work_dir=lab.work_dir,
        locator=lab.locator,
        uuid_path=lab.uuid_path,
    ) as j:
        att = j.disks[0].attached
        flat = lab.flat_file(att.file_name)
        dev = tmp_path / "dev" / "disk"
        (dev / "by-path").mkdir(parents=True)
        (dev / "by-id").mkdir()
        os.symlink(flat, dev / "by-path" / f"pci-0000:03:00.0-scsi-0:0:{att.unit_number}:0")
        os.symlink(
            tmp_path / "elsewhere", dev / "by-path" / f"pci-0000:03:00.0-scsi-0:0:{att.unit_number + 1}:0"
        )
        assert find_block_device(att, dev_root=dev) == flat.resolve()
        wwn = "6000c29a1b2c3d4e5f60718293a4b5c6"
        os.symlink(flat, dev / "by-id" / f"wwn-0x{wwn}")
        from dataclasses import replace

        assert (
            find_block_device(
                replace(att, uuid="6000C29a-1b2c-3d4e-5f60-718293a4b5c6", unit_number=9), dev_root=dev
            )
            == flat.resolve()
        )


async def test_job_with_stored_state_for_two_disks(client, tmp_path) -> None:
    """Two disks: names are distinct and each gets its own plan."""
    from tests.vsphere.conftest import APPLIANCE, make_vm
    from vsphere.devices import DatastoreFileLocator

    vm = await make_vm(client, "two-disks", disks=2)
    try:
        app = await client.find_vm(APPLIANCE)
        uuid_path = tmp_path / "uuid"
        uuid_path.write_text(app.bios_uuid)
        roots = await client.datastore_paths()
        names = HardwareRecord.from_vm(vm).disks
        assert len({d.name for d in names}) == 2
        async with vsphere_job(
            client,
            vm=vm.moid,
            stored={names[0].name: StoredDiskState(change_id="bogus")},
            recorded=None,
            work_dir=tmp_path,
            locator=DatastoreFileLocator(roots),
            uuid_path=uuid_path,
        ) as j:
            assert [d.name for d in j.disks] == [d.name for d in names]
            assert "rejected" in (j.disks[0].reason or "") and "no changeId" in (j.disks[1].reason or "")
    finally:
        await client.destroy_vm(vm.moid)
