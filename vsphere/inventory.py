"""Finding VMs (by name, moid or BIOS UUID) and reading their hardware into plain records."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import Any

from vsphere.faults import blocking
from vsphere.model import ControllerInfo, DiskInfo, NicInfo, VmInfo
from vsphere.session import Session
from vsphere.vmomi import vim, vmodl
from vzcommon.errors import InputError, VSphereError


def device_type(device: Any) -> str:
    """``vim.vm.device.ParaVirtualSCSIController`` -> ``"ParaVirtualSCSIController"``."""
    return type(device).__name__.rsplit(".", 1)[-1]


def controllers_of(devices: Iterable[Any]) -> dict[int, ControllerInfo]:
    """The disk controllers among a VM's (or a snapshot's) devices, by device key."""
    return {
        d.key: ControllerInfo(d.key, device_type(d), d.busNumber)
        for d in devices
        if isinstance(d, vim.vm.device.VirtualController) and hasattr(d, "busNumber")
    }


def disk_info(d: Any, controllers: dict[int, ControllerInfo]) -> DiskInfo:
    ctrl = controllers.get(d.controllerKey)
    b = d.backing
    capacity = int(d.capacityInBytes or 0) or int(d.capacityInKB) * 1024
    return DiskInfo(
        key=d.key,
        file_name=getattr(b, "fileName", "") or "",
        capacity=capacity,
        controller_key=d.controllerKey,
        controller_type=ctrl.type if ctrl else "",
        bus_number=ctrl.bus_number if ctrl else -1,
        unit_number=d.unitNumber if d.unitNumber is not None else -1,
        disk_mode=getattr(b, "diskMode", "") or "",
        thin=getattr(b, "thinProvisioned", None),
        uuid=getattr(b, "uuid", None) or None,
        change_id=getattr(b, "changeId", None) or None,
    )


class Inventory(Session):
    """VMs and their hardware; datastores."""

    def _vms_named(self, name: str) -> list[Any]:
        out = []
        for v in self._all(vim.VirtualMachine):
            try:
                if v.name == name:
                    out.append(v)
            except vmodl.fault.ManagedObjectNotFound:  # deleted while we looked
                continue
        return out

    def _vm_info(self, vm: Any) -> VmInfo:
        cfg = vm.config
        if cfg is None:
            raise VSphereError(f"VM {vm._moId} has no configuration (inaccessible or being created)")
        hw = cfg.hardware
        controllers = controllers_of(hw.device)
        disks: list[DiskInfo] = []
        nics: list[NicInfo] = []
        for d in hw.device:
            if isinstance(d, vim.vm.device.VirtualDisk):
                disks.append(disk_info(d, controllers))
            elif isinstance(d, vim.vm.device.VirtualEthernetCard):
                nics.append(NicInfo(d.key, device_type(d), self._nic_network(d)))
        runtime = vm.runtime
        extra: dict[str, str] = {}
        for opt in cfg.extraConfig or []:
            extra[opt.key] = str(opt.value)  # the last value of a key wins
        return VmInfo(
            moid=vm._moId,
            name=cfg.name,
            bios_uuid=cfg.uuid or "",
            instance_uuid=cfg.instanceUuid or "",
            hardware_version=cfg.version,
            num_cpu=hw.numCPU,
            cores_per_socket=hw.numCoresPerSocket or 1,
            memory_mb=hw.memoryMB,
            guest_id=cfg.guestId or "",
            firmware=cfg.firmware or "bios",
            cbt_enabled=bool(cfg.changeTrackingEnabled),
            power_state=str(runtime.powerState),
            template=bool(cfg.template),
            host=runtime.host._moId if runtime.host is not None else None,
            datastores=tuple(sorted({d.datastore for d in disks})),
            controllers=tuple(controllers.values()),
            disks=tuple(disks),
            nics=tuple(nics),
            extra_config=extra,
            annotation=cfg.annotation or "",
        )

    def _nic_network(self, nic: Any) -> str | None:
        b = nic.backing
        if isinstance(b, vim.vm.device.VirtualEthernetCard.NetworkBackingInfo):
            return str(b.deviceName) if b.deviceName else None
        if isinstance(b, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo) and b.port:
            for net in self._all(vim.Network):
                if isinstance(net, vim.dvs.DistributedVirtualPortgroup) and net.key == b.port.portgroupKey:
                    return str(net.name)
        return None

    @blocking("read the VM")
    def vm_info(self, moid: str) -> VmInfo:
        return self._vm_info(self._vm(moid))

    @blocking("find the VM")
    def find_vm(self, name_or_moid: str) -> VmInfo:
        """A VM by moid (``vm-123``) or by name; a name that is not unique is refused."""
        if name_or_moid.startswith("vm-"):
            with contextlib.suppress(vmodl.fault.ManagedObjectNotFound):
                return self._vm_info(self._vm(name_or_moid))
        matches = self._vms_named(name_or_moid)
        if not matches:
            raise InputError(
                f"no VM named {name_or_moid!r} on {self.host}; check the name (it is case-sensitive) "
                "or give its managed object id (vm-NNN)"
            )
        if len(matches) > 1:
            ids = ", ".join(sorted(v._moId for v in matches))
            raise InputError(f"{len(matches)} VMs are named {name_or_moid!r} ({ids}); give the moid instead")
        return self._vm_info(matches[0])

    @blocking("find the VM by BIOS UUID")
    def find_vm_by_bios_uuid(self, candidates: Sequence[str]) -> VmInfo | None:
        index = self._content.searchIndex
        for uuid in candidates:
            vm = index.FindByUuid(None, uuid, True, False)
            if vm is not None:
                return self._vm_info(vm)
        return None

    @blocking("list the datastores of a VM's host")
    def host_datastores(self, vm_moid: str) -> list[str]:
        """Datastores the VM's ESXi host can see (HotAdd needs the source disks' datastores there)."""
        host = self._vm(vm_moid).runtime.host
        return sorted(ds.name for ds in host.datastore) if host is not None else []

    @blocking("read a datastore")
    def datastore_paths(self) -> dict[str, str]:
        """Datastore name -> its URL (a local directory on vcsim, ``ds:///vmfs/...`` on ESXi)."""
        return {ds.name: ds.summary.url for ds in self._all(vim.Datastore)}
