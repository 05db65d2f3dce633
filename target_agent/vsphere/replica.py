"""The replica VM on the DR host: created at the first pass with the recorded hardware, or adopted.

The replica gets the source's hardware version, CPUs, memory, firmware, controllers, NICs (left
disconnected, so a failed-over replica does not clash with the source on the network) and thin
disks of the same sizes at the same controller slots. Its annotation marks it as ours, so a VM that
merely has the default name ``<vm>_replica`` is never adopted by mistake.

The VM is made by the shared client (:meth:`vsphere.client.VSphereClient.create_vm`) from the very
:class:`HardwareRecord` the pass works with; this module decides whether to create, adopt or grow.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from vsphere.client import VSphereClient
from vsphere.hardware import HardwareRecord
from vsphere.model import SNAPSHOT_MARKER, DiskInfo, VmInfo
from vzcommon.errors import InputError

log = logging.getLogger(__name__)

REPLICA_MARKER = f"{SNAPSHOT_MARKER} replica"


@dataclass(frozen=True)
class ReplicaVm:
    vm: VmInfo
    disks: dict[str, DiskInfo]  # stable source disk name -> the replica's disk (current file)
    created: bool
    grown: tuple[str, ...] = ()


def replica_name(hardware: HardwareRecord) -> str:
    return f"{hardware.vm_name}_replica"


def replica_annotation(hardware: HardwareRecord) -> str:
    return f"{REPLICA_MARKER} of {hardware.vm_name}, kept up to date by vzrep; do not edit its disks"


def _match_disks(hardware: HardwareRecord, vm: VmInfo) -> dict[str, DiskInfo]:
    by_slot = {(d.controller_type, d.bus_number, d.unit_number): d for d in vm.disks}
    out: dict[str, DiskInfo] = {}
    for rec in hardware.disks:
        d = by_slot.get((rec.controller_type, rec.bus_number, rec.unit_number))
        if d is None:
            raise InputError(
                f"the replica VM {vm.name} has no disk at {rec.controller_type} {rec.bus_number}:{rec.unit_number} "
                f"for source disk {rec.name}; configure the replica VM the same way as the source"
            )
        out[rec.name] = d
    return out


async def ensure_replica_vm(
    client: VSphereClient,
    hardware: HardwareRecord,
    *,
    existing: str | None = None,
    name: str | None = None,
    folder: str | None = None,
    datastore: str | None = None,
    resource_pool: str | None = None,
    host: str | None = None,
) -> ReplicaVm:
    """The replica VM for ``hardware``: ``existing`` (name or moid) if the job names one, else ours
    named ``name`` (default ``<vm>_replica``), created if it does not exist yet. Replica disks that
    are smaller than the recorded source disks (the source disk grew) are grown."""
    created = False
    if existing:
        vm = await client.find_vm(existing)
    else:
        name = name or replica_name(hardware)
        try:
            vm = await client.find_vm(name)
        except InputError:
            vm = await client.create_vm(
                hardware,
                name=name,
                annotation=replica_annotation(hardware),
                datastore=datastore,
                folder=folder,
                resource_pool=resource_pool,
                host=host,
            )
            created = True
            log.info("created replica VM %s (%s) for %s", vm.name, vm.moid, hardware.vm_name)
        else:
            if REPLICA_MARKER not in vm.annotation:
                raise InputError(
                    f"a VM named {name} exists but was not created by vzrep; name it as the job's existing "
                    "replica VM if it is meant to be one, or choose another replica name"
                )
    disks = _match_disks(hardware, vm)
    grown = []
    for rec in hardware.disks:
        d = disks[rec.name]
        if d.capacity < rec.capacity:
            await client.grow_disk(vm.moid, d.key, rec.capacity)
            grown.append(rec.name)
            log.info("grew replica disk %s of %s to %d bytes", rec.name, vm.name, rec.capacity)
    if grown:
        vm = await client.vm_info(vm.moid)
        disks = _match_disks(hardware, vm)
    return ReplicaVm(vm=vm, disks=disks, created=created, grown=tuple(grown))
