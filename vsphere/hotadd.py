"""HotAdd: attach existing disk files to an appliance VM, detach them, and the markers between.

Each attached disk is recorded in the appliance's extraConfig (``vzrep.hotadd.scsiB-U`` ->
``{"file": ..., "owner": ...}``) in the same reconfiguration that attaches it, so a crash leaves a
trace the next start finds (:func:`vsphere.cleanup.cleanup_orphans`); detaching clears the marker in
the reconfiguration that removes the device. Neither touches the disk files (no file operation).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from typing import Any

from vsphere.faults import blocking
from vsphere.inventory import Inventory
from vsphere.model import HOTADD_MARKER_PREFIX, AttachedDisk, DiskInfo, HotAddRequest
from vsphere.vmomi import vim
from vzcommon.errors import VSphereError

_SCSI_UNITS = [u for u in range(16) if u != 7]  # unit 7 is the controller itself


class HotAdd(Inventory):
    @blocking("HotAdd disks to the appliance")
    def hotadd(self, appliance_moid: str, requests: Sequence[HotAddRequest]) -> list[AttachedDisk]:
        """Attach existing disk files (no file operation), and record each in the appliance's
        extraConfig in the same reconfiguration, so a crash leaves a trace the next start finds."""
        app = self._vm(appliance_moid)
        devices = app.config.hardware.device
        free = self._free_scsi_slots(devices)
        if len(free) < len(requests):
            raise VSphereError(
                f"the appliance VM {appliance_moid} has {len(free)} free SCSI slots, {len(requests)} needed; "
                "add a SCSI controller to the appliance"
            )
        changes, extra = [], []
        for i, (req, (ctrl, unit)) in enumerate(zip(requests, free, strict=False)):
            disk = vim.vm.device.VirtualDisk(
                key=-100 - i,
                controllerKey=ctrl.key,
                unitNumber=unit,
                capacityInKB=req.capacity // 1024,
                backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                    fileName=req.file_name, diskMode=req.mode
                ),
            )
            changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=disk))
            marker = f"{HOTADD_MARKER_PREFIX}scsi{ctrl.busNumber}-{unit}"
            value = json.dumps({"file": req.file_name, "owner": req.owner})
            extra.append(vim.option.OptionValue(key=marker, value=value))
        spec = vim.vm.ConfigSpec(deviceChange=changes, extraConfig=extra)
        self._wait(app.ReconfigVM_Task(spec=spec), f"HotAdd to appliance {appliance_moid}")
        attached = {a.file_name: a for a in self._marked(app)}
        out = []
        for req in requests:
            if req.file_name not in attached:
                raise VSphereError(f"HotAdd of {req.file_name} reported success but the appliance lacks it")
            out.append(attached[req.file_name])
        return out

    @staticmethod
    def _free_scsi_slots(devices: Sequence[Any]) -> list[tuple[Any, int]]:
        used = {
            (d.controllerKey, d.unitNumber) for d in devices if getattr(d, "unitNumber", None) is not None
        }
        free: list[tuple[Any, int]] = []
        for c in devices:
            if isinstance(c, vim.vm.device.VirtualSCSIController):
                free.extend((c, u) for u in _SCSI_UNITS if (c.key, u) not in used)
        return free

    def _marked(self, app: Any) -> list[AttachedDisk]:
        info = self._vm_info(app)
        markers: dict[str, dict[str, str]] = {}
        for key, value in info.extra_config.items():
            if key.startswith(HOTADD_MARKER_PREFIX) and value:
                with contextlib.suppress(ValueError):
                    markers[key] = json.loads(value)
        by_file = {m.get("file"): (k, m) for k, m in markers.items()}
        out = []
        for d in info.disks:
            if d.file_name in by_file:
                key, m = by_file.pop(d.file_name)
                out.append(_attached(appliance=info.moid, disk=d, marker=key, owner=m.get("owner", "")))
        for key, m in by_file.values():  # a marker without its disk: report it so it gets cleared
            out.append(
                AttachedDisk(
                    info.moid, -1, m.get("file", ""), 0, "", -1, -1, "", None, key, m.get("owner", "")
                )
            )
        return out

    @blocking("list disks HotAdded to the appliance")
    def list_hotadded(self, appliance_moid: str) -> list[AttachedDisk]:
        return self._marked(self._vm(appliance_moid))

    @blocking("detach disks from the appliance")
    def detach(self, appliance_moid: str, disks: Sequence[AttachedDisk]) -> None:
        """Remove the devices (keeping their files: no file operation) and clear their markers."""
        app = self._vm(appliance_moid)
        devices = {d.key: d for d in app.config.hardware.device}
        changes = [
            vim.vm.device.VirtualDeviceSpec(operation="remove", device=devices[d.key])
            for d in disks
            if d.key in devices and isinstance(devices[d.key], vim.vm.device.VirtualDisk)
        ]
        extra = [vim.option.OptionValue(key=d.marker, value="") for d in disks if d.marker]
        if not changes and not extra:
            return
        spec = vim.vm.ConfigSpec(deviceChange=changes, extraConfig=extra)
        self._wait(app.ReconfigVM_Task(spec=spec), f"detach disks from appliance {appliance_moid}")


def _attached(*, appliance: str, disk: DiskInfo, marker: str | None, owner: str) -> AttachedDisk:
    return AttachedDisk(
        appliance=appliance,
        key=disk.key,
        file_name=disk.file_name,
        capacity=disk.capacity,
        controller_type=disk.controller_type,
        bus_number=disk.bus_number,
        unit_number=disk.unit_number,
        disk_mode=disk.disk_mode,
        uuid=disk.uuid,
        marker=marker,
        owner=owner,
    )
