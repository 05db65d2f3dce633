"""Target side against vcsim: replica VM creation, HotAdd of its disks, restore points."""

from __future__ import annotations

import os
import uuid

import pytest

from target_agent.vsphere.hotadd import replica_disks
from target_agent.vsphere.replica import ensure_replica_vm
from target_agent.vsphere.restore_points import list_restore_points, take_restore_point
from tests.vsphere.conftest import Lab, make_vm
from vsphere.hardware import HardwareRecord
from vzcommon.errors import InputError

pytestmark = pytest.mark.vcsim

TARGET_APPLIANCE = "DC0_C0_RP0_VM0"


async def test_replica_is_created_with_the_recorded_hardware_then_adopted(lab: Lab) -> None:
    hw = HardwareRecord.from_vm(lab.vm)
    rep = await ensure_replica_vm(lab.client, hw, datastore="LocalDS_0", host="DC0_C0_H0")
    try:
        assert rep.created and rep.vm.name == f"{lab.vm.name}_replica"
        got = HardwareRecord.from_vm(rep.vm, hw)
        assert (got.num_cpu, got.memory_mb, got.hardware_version, got.firmware) == (1, 256, "vmx-13", "bios")
        assert [(d.controller_type, d.bus_number, d.unit_number, d.capacity) for d in got.disks] == [
            (d.controller_type, d.bus_number, d.unit_number, d.capacity) for d in hw.disks
        ]
        assert [n.type for n in got.nics] == ["VirtualVmxnet3"]
        assert all(d.thin for d in rep.vm.disks)
        again = await ensure_replica_vm(lab.client, hw)
        assert not again.created and again.vm.moid == rep.vm.moid

        # the source disk grew: the replica disk grows with it
        grown = HardwareRecord(
            **{
                **hw.__dict__,
                "disks": (hw.disks[0].__class__(**{**hw.disks[0].__dict__, "capacity": 8 << 20}),),
            }
        )
        rep2 = await ensure_replica_vm(lab.client, grown)
        assert rep2.grown == (hw.disks[0].name,) and rep2.disks[hw.disks[0].name].capacity == 8 << 20
    finally:
        await lab.client.destroy_vm(rep.vm.moid)


async def test_a_foreign_vm_with_the_default_name_is_not_adopted(lab: Lab) -> None:
    hw = HardwareRecord.from_vm(lab.vm)
    foreign = await make_vm(lab.client, f"{lab.vm.name}_replica")
    try:
        with pytest.raises(InputError, match="was not created by vzrep"):
            await ensure_replica_vm(lab.client, hw)
        rep = await ensure_replica_vm(lab.client, hw, existing=foreign.moid)  # the job names it
        assert rep.vm.moid == foreign.moid and not rep.created
    finally:
        await lab.client.destroy_vm(foreign.moid)


async def test_replica_disks_are_hotadded_written_and_detached(lab: Lab) -> None:
    hw = HardwareRecord.from_vm(lab.vm)
    rep = await ensure_replica_vm(lab.client, hw, name=f"r-{uuid.uuid4().hex[:6]}")
    appliance = await lab.client.find_vm(TARGET_APPLIANCE)
    try:
        flat = lab.flat_file(rep.vm.disks[0].file_name)
        os.truncate(flat, rep.vm.disks[0].capacity)
        async with replica_disks(lab.client, rep, appliance.moid, locator=lab.locator) as devs:
            dev = devs[hw.disks[0].name]
            assert dev.attached.disk_mode == "independent_persistent"
            fd = os.open(dev.path, os.O_WRONLY)
            try:
                os.pwrite(fd, b"\x42" * 4096, 65536)
            finally:
                os.close(fd)
        assert await lab.client.list_hotadded(appliance.moid) == []
        fd = os.open(flat, os.O_RDONLY)
        try:
            assert os.pread(fd, 4096, 65536) == b"\x42" * 4096
        finally:
            os.close(fd)

        with pytest.raises(RuntimeError):
            async with replica_disks(lab.client, rep, appliance.moid, locator=lab.locator):
                raise RuntimeError("the pass failed (rolled back before this point)")
        assert await lab.client.list_hotadded(appliance.moid) == []
    finally:
        await lab.client.destroy_vm(rep.vm.moid)


async def test_restore_points_keep_the_newest_n_and_never_touch_foreign_snapshots(lab: Lab) -> None:
    await lab.client.create_snapshot(lab.vm.moid, "admin-check", "made by hand", False)
    removed = []
    for i in range(5):
        report = await take_restore_point(lab.client, lab.vm.moid, pass_id=f"p{i}", retention=3)
        assert f'"pass": "p{i}"' in report.created.description
        removed += [s.moid for s in report.removed]
    points = await list_restore_points(lab.client, lab.vm.moid)
    assert len(points) == 3 and len(removed) == 2
    assert all(f'"pass": "p{i}"' in p.description for i, p in zip(range(2, 5), points, strict=True))
    names = [s.name for s in await lab.client.list_snapshots(lab.vm.moid)]
    assert "admin-check" in names and len(names) == 4
    with pytest.raises(InputError):
        await take_restore_point(lab.client, lab.vm.moid, pass_id="x", retention=0)
