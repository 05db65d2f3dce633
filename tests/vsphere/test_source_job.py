"""A source pass against vcsim: real bytes in the datastore, real snapshots, HotAdd and CBT."""

from __future__ import annotations

import asyncio
import os

import pytest

from source_agent.filters.extents import ExtentList, FilterKind
from source_agent.vsphere.cbt import StoredDiskState
from source_agent.vsphere.job import vsphere_job
from tests.vsphere.conftest import BLOCK, Lab
from vsphere.model import HOTADD_MARKER_PREFIX

pytestmark = pytest.mark.vcsim


def blocks(*idx: int) -> ExtentList:
    return ExtentList((i * BLOCK, (i + 1) * BLOCK) for i in idx)


async def assert_clean(lab: Lab) -> None:
    """No snapshot of ours on the VM, no HotAdd disk or marker left on the appliance."""
    assert await lab.client.list_snapshots(lab.vm.moid) == []
    assert await lab.client.list_hotadded(lab.appliance.moid) == []
    app = await lab.client.vm_info(lab.appliance.moid)
    assert not [d for d in app.disks if d.file_name.split("] ")[1].startswith(lab.vm.name)]
    assert not [k for k, v in app.extra_config.items() if k.startswith(HOTADD_MARKER_PREFIX) and v]
    assert list(lab.work_dir.iterdir()) == []


def job(lab: Lab, stored=None, recorded=None):
    return vsphere_job(
        lab.client,
        vm=lab.vm.name,
        stored=stored or {},
        recorded=recorded,
        work_dir=lab.work_dir,
        locator=lab.locator,
        uuid_path=lab.uuid_path,
    )


async def test_cbt_reports_exactly_the_changed_blocks_and_data_flows(lab: Lab) -> None:
    lab.write_blocks({0: 0x11, 2: 0x22})
    assert not lab.vm.cbt_enabled
    async with job(lab, {"": StoredDiskState()}) as j:
        assert any("enabled it" in e for e in j.events)
        (disk,) = j.disks
        assert disk.name == lab.vm.name  # after the disk file, "<vm>.vmdk"
        assert disk.mode == "differential" and "no changeId" in (disk.reason or "")
        assert disk.extents is None
        assert disk.new_change_id
        assert disk.reader.pread(2 * BLOCK, 4) == b"\x22" * 4
        first_id = disk.new_change_id
        hw = j.hardware
    await assert_clean(lab)

    # first pass into an empty replica: changeId "*" narrows the read to the allocated blocks
    async with job(lab, {disk.name: StoredDiskState(replica_empty=True)}, hw) as j:
        (disk,) = j.disks
        assert disk.mode == "differential" and 'changeId "*"' in (disk.reason or "")
        assert disk.extents == blocks(0, 2)
        first_id = disk.new_change_id
    await assert_clean(lab)

    # the guest rewrites block 2 and writes block 5; block 0 stays
    lab.write_blocks({0: 0x11, 2: 0x23, 5: 0x55})
    async with job(lab, {disk.name: StoredDiskState(change_id=first_id)}, hw) as j:
        (disk,) = j.disks
        assert disk.mode == "cbt" and disk.reason is None
        assert disk.extents == blocks(2, 5)
        assert disk.filter_path is not None
        exts, kind, size = ExtentList.load(disk.filter_path)
        assert (exts, kind, size) == (blocks(2, 5), FilterKind.CHANGED, disk.size)
        data = {s: disk.reader.pread(s, e - s) for s, e in disk.extents}
        assert data == {2 * BLOCK: b"\x23" * BLOCK, 5 * BLOCK: b"\x55" * BLOCK}
        assert disk.new_change_id and disk.new_change_id != first_id
        disk.finish()
        assert not disk.filter_path.exists()
    await assert_clean(lab)


async def test_unknown_change_id_falls_back(lab: Lab) -> None:
    bogus = "52 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00/7"
    async with job(lab, {lab.vm.name: StoredDiskState(change_id=bogus)}) as j:
        (disk,) = j.disks
        assert disk.mode == "differential" and "rejected the stored changeId" in (disk.reason or "")
        assert disk.extents is None and disk.new_change_id
    await assert_clean(lab)


async def test_rebuilt_target_map_falls_back(lab: Lab) -> None:
    async with job(lab) as j:
        cid = j.disks[0].new_change_id
    async with job(lab, {lab.vm.name: StoredDiskState(change_id=cid, map_rebuilt=True)}) as j:
        (disk,) = j.disks
        assert disk.mode == "differential" and "rebuilt its map" in (disk.reason or "")


async def test_grown_disk_falls_back_and_is_recorded(lab: Lab) -> None:
    async with job(lab) as j:
        hw, cid = j.hardware, j.disks[0].new_change_id
    await lab.client.grow_disk(lab.vm.moid, lab.vm.disks[0].key, 8 << 20)
    os.truncate(lab.flat_file(lab.vm.disks[0].file_name), 8 << 20)  # ESXi grows the flat file
    async with job(lab, {lab.vm.name: StoredDiskState(change_id=cid)}, hw) as j:
        (disk,) = j.disks
        assert disk.mode == "differential" and "grew from 4 MiB to 8 MiB" in (disk.reason or "")
        assert disk.size == 8 << 20 and j.hardware.disks[0].capacity == 8 << 20
        assert j.hardware.disks[0].name == hw.disks[0].name


async def test_cbt_that_cannot_be_enabled_falls_back(lab: Lab) -> None:
    # vcsim refuses reconfiguring a template (NotSupported), as vCenter refuses CBT on some VMs
    await lab.client.mark_as_template(lab.vm.moid)
    async with job(lab) as j:
        (disk,) = j.disks
        assert disk.mode == "differential"
        assert "could not be enabled" in (disk.reason or "") and "NotSupported" in (disk.reason or "")
        assert disk.new_change_id is None
    await assert_clean(lab)


async def test_failure_inside_the_pass_cleans_up(lab: Lab) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        async with job(lab, {lab.vm.name: StoredDiskState(replica_empty=True)}):
            assert await lab.client.list_hotadded(lab.appliance.moid)
            raise RuntimeError("boom")
    await assert_clean(lab)


async def test_cancellation_cleans_up(lab: Lab) -> None:
    entered = asyncio.Event()

    async def run() -> None:
        async with job(lab, {lab.vm.name: StoredDiskState(replica_empty=True)}):
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.ensure_future(run())
    await asyncio.wait_for(entered.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await assert_clean(lab)
