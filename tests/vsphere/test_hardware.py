"""The one hardware model: a hardware.json written by earlier releases still loads, and the record a
source job stores is what the client creates a replica VM from."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.vsphere.conftest import HOST
from vsphere.client import VSphereClient
from vsphere.hardware import DiskRecord, HardwareRecord, NicRecord
from vzcommon.errors import InputError

#: ``vsphere/<vm>/hardware.json`` as the source agent has written it since format_version 1
V1 = (
    '{"cores_per_socket": 1, "disks": [{"bus_number": 0, "capacity": 4194304, "controller_type": '
    '"ParaVirtualSCSIController", "key": 2000, "name": "web01", "unit_number": 0}, {"bus_number": 0, '
    '"capacity": 8388608, "controller_type": "ParaVirtualSCSIController", "key": 2001, "name": "web01_1", '
    '"unit_number": 1}], "firmware": "efi", "format_version": 1, "guest_id": "otherGuest64", '
    '"hardware_version": "vmx-13", "memory_mb": 512, "nics": [{"key": 4000, "network": "VM Network", '
    '"type": "VirtualVmxnet3"}], "num_cpu": 2, "vm_name": "web01"}'
)


def test_a_version_1_record_loads_and_is_written_the_same_way() -> None:
    rec = HardwareRecord.from_json(V1)
    assert rec == HardwareRecord(
        vm_name="web01",
        hardware_version="vmx-13",
        guest_id="otherGuest64",
        firmware="efi",
        num_cpu=2,
        cores_per_socket=1,
        memory_mb=512,
        disks=(
            DiskRecord(2000, "web01", 4 << 20, "ParaVirtualSCSIController", 0, 0),
            DiskRecord(2001, "web01_1", 8 << 20, "ParaVirtualSCSIController", 0, 1),
        ),
        nics=(NicRecord(4000, "VirtualVmxnet3", "VM Network"),),
    )
    assert rec.to_json() == V1


def test_an_unknown_format_version_is_refused() -> None:
    raw = json.loads(V1)
    raw["format_version"] = 2
    with pytest.raises(InputError, match="recorded VM hardware is unreadable"):
        HardwareRecord.from_json(json.dumps(raw))


@pytest.mark.vcsim
async def test_create_vm_takes_the_stored_record(client: VSphereClient) -> None:
    rec = HardwareRecord.from_json(V1)
    name = f"from-record-{uuid.uuid4().hex[:6]}"
    vm = await client.create_vm(
        rec,
        name=name,
        annotation="made from hardware.json",
        datastore=None,
        folder=None,
        resource_pool=None,
        host=HOST,
    )
    try:
        assert (vm.name, vm.annotation) == (name, "made from hardware.json")
        got = HardwareRecord.from_vm(vm)
        for attr in ("hardware_version", "guest_id", "firmware", "num_cpu", "cores_per_socket", "memory_mb"):
            assert getattr(got, attr) == getattr(rec, attr), attr
        slots = [(d.controller_type, d.bus_number, d.unit_number, d.capacity) for d in got.disks]
        assert slots == [(d.controller_type, d.bus_number, d.unit_number, d.capacity) for d in rec.disks]
        assert [(n.type, n.network) for n in got.nics] == [("VirtualVmxnet3", "VM Network")]
        assert all(d.thin for d in vm.disks)
    finally:
        await client.destroy_vm(vm.moid)
