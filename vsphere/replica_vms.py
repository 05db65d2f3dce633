"""VMs the DR side makes and changes: create one from a :class:`HardwareRecord`, grow a disk,
reconfigure, power off and delete, mark as template.

:meth:`ReplicaVms.create_vm` takes the very record the source job stored at its first pass (one
hardware model, :mod:`vsphere.hardware`): the same hardware version, guest OS, firmware, CPUs,
memory, the controllers and thin disks at the recorded slots and sizes, and the NICs on their
networks, left disconnected. Whether to create, adopt or grow a replica is the target job's policy
(``target_agent/vsphere/replica.py``).
"""

from __future__ import annotations

from typing import Any

from vsphere.faults import blocking
from vsphere.hardware import HardwareRecord
from vsphere.inventory import Inventory
from vsphere.model import VmInfo
from vsphere.power import network_backing
from vsphere.vmomi import vim
from vzcommon.errors import InputError


class ReplicaVms(Inventory):
    @blocking("create the replica VM")
    def create_vm(
        self,
        hardware: HardwareRecord,
        *,
        name: str | None = None,
        annotation: str = "",
        datastore: str | None,
        folder: str | None,
        resource_pool: str | None,
        host: str | None,
    ) -> VmInfo:
        """A new VM with ``hardware``, named ``name`` (default: the recorded VM name)."""
        name = name or hardware.vm_name
        host_obj, ds_obj, pool, target_folder = self._placement(datastore, folder, resource_pool, host)
        if self._vms_named(name):
            raise InputError(f"a VM named {name!r} already exists; name it as the job's replica VM")
        networks = {n.name: n for n in host_obj.network}
        config = vim.vm.ConfigSpec(
            name=name,
            version=hardware.hardware_version,
            guestId=hardware.guest_id,
            firmware=hardware.firmware,
            numCPUs=hardware.num_cpu,
            numCoresPerSocket=hardware.cores_per_socket,
            memoryMB=hardware.memory_mb,
            annotation=annotation,
            files=vim.vm.FileInfo(vmPathName=f"[{ds_obj.name}]"),
            deviceChange=_disk_changes(hardware, ds_obj.name) + _nic_changes(hardware, networks),
        )
        vm = self._wait(
            target_folder.CreateVM_Task(config=config, pool=pool, host=host_obj), "create replica VM"
        )
        return self._vm_info(vm)

    def _placement(
        self, datastore: str | None, folder: str | None, resource_pool: str | None, host: str | None
    ) -> tuple[Any, Any, Any, Any]:
        """Host, datastore, resource pool and folder for a new VM (defaults: the first host, its
        first datastore, its cluster's root pool, the first datacenter's VM folder)."""
        dc = self._content.rootFolder.childEntity[0]
        hosts = self._all(vim.HostSystem)
        host_obj = next((h for h in hosts if h._moId == host or h.name == host), None) if host else None
        if host and host_obj is None:
            raise InputError(f"no ESXi host {host!r} on {self.host}")
        if host_obj is None:
            host_obj = hosts[0]
        ds_obj = (
            host_obj.datastore[0]
            if not datastore
            else next((d for d in host_obj.datastore if d.name == datastore or d._moId == datastore), None)
        )
        if ds_obj is None:
            raise InputError(f"host {host_obj.name} has no datastore {datastore!r}")
        pool = host_obj.parent.resourcePool
        if resource_pool:
            pool = next((p for p in self._all(vim.ResourcePool) if resource_pool in (p.name, p._moId)), None)
            if pool is None:
                raise InputError(f"no resource pool {resource_pool!r} on {self.host}")
        target_folder = dc.vmFolder
        if folder:
            target_folder = next((f for f in self._all(vim.Folder) if folder in (f.name, f._moId)), None)
            if target_folder is None:
                raise InputError(f"no VM folder {folder!r} on {self.host}")
        return host_obj, ds_obj, pool, target_folder

    @blocking("grow a disk")
    def grow_disk(self, vm_moid: str, disk_key: int, capacity: int) -> None:
        vm = self._vm(vm_moid)
        disk = next(d for d in vm.config.hardware.device if d.key == disk_key)
        disk.capacityInKB = capacity // 1024
        disk.capacityInBytes = capacity
        spec = vim.vm.ConfigSpec(
            deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="edit", device=disk)]
        )
        self._wait(vm.ReconfigVM_Task(spec=spec), f"grow disk {disk_key} of {vm_moid}")

    @blocking("set a VM's hardware")
    def reconfigure(self, vm_moid: str, *, num_cpu: int | None = None, memory_mb: int | None = None) -> None:
        """Change CPUs/memory (used by tests and by an operator aligning a replica)."""
        spec = vim.vm.ConfigSpec(numCPUs=num_cpu, memoryMB=memory_mb)
        self._wait(self._vm(vm_moid).ReconfigVM_Task(spec=spec), f"reconfigure {vm_moid}")

    @blocking("delete a VM")
    def destroy_vm(self, vm_moid: str) -> None:
        vm = self._vm(vm_moid)
        if vm.runtime.powerState == vim.VirtualMachinePowerState.poweredOn:
            self._wait(vm.PowerOffVM_Task(), f"power off {vm_moid}")
        self._wait(vm.Destroy_Task(), f"delete {vm_moid}")

    @blocking("mark a VM as template")
    def mark_as_template(self, vm_moid: str) -> None:
        vm = self._vm(vm_moid)
        if vm.runtime.powerState == vim.VirtualMachinePowerState.poweredOn:
            self._wait(vm.PowerOffVM_Task(), f"power off {vm_moid}")
        vm.MarkAsTemplate()


def _disk_changes(hardware: HardwareRecord, datastore: str) -> list[Any]:
    """One controller per recorded (type, bus), then thin disks at the recorded units, created."""
    changes = []
    ctrl_keys: dict[tuple[str, int], int] = {}
    for d in hardware.disks:
        if (d.controller_type, d.bus_number) not in ctrl_keys:
            key = -200 - len(ctrl_keys)
            ctrl_keys[(d.controller_type, d.bus_number)] = key
            ctrl = getattr(vim.vm.device, d.controller_type)(key=key, busNumber=d.bus_number)
            if isinstance(ctrl, vim.vm.device.VirtualSCSIController):
                ctrl.sharedBus = "noSharing"
            changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=ctrl))
    for i, d in enumerate(hardware.disks):
        disk = vim.vm.device.VirtualDisk(
            key=-300 - i,
            controllerKey=ctrl_keys[(d.controller_type, d.bus_number)],
            unitNumber=d.unit_number,
            capacityInKB=d.capacity // 1024,
            backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                fileName=f"[{datastore}]", diskMode="persistent", thinProvisioned=True
            ),
        )
        changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=disk, fileOperation="create"))
    return changes


def _nic_changes(hardware: HardwareRecord, networks: dict[str, Any]) -> list[Any]:
    """The recorded NICs on the host's networks of the same names, disconnected."""
    changes = []
    for i, n in enumerate(hardware.nics):
        nic = getattr(vim.vm.device, n.type)(key=-400 - i)
        net = networks.get(n.network) if n.network else None
        if net is not None and n.network:
            nic.backing = network_backing(net, n.network)
        else:  # keep the NIC, unconnected; the report tells the user to pick a network
            nic.backing = vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName=n.network or "")
        nic.connectable = vim.vm.device.VirtualDevice.ConnectInfo(startConnected=False, connected=False)
        changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=nic))
    return changes
