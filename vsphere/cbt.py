"""Changed Block Tracking at the API level: turn it on or off, ask which areas changed.

What to *do* with the answer (CBT or a differential pass, and why) is the source job's business:
``source_agent/vsphere/cbt.py``.
"""

from __future__ import annotations

from vsphere.faults import blocking
from vsphere.model import CbtNotEnabled, ChangeIdRejected
from vsphere.session import Session
from vsphere.vmomi import vim, vmodl


class ChangeTracking(Session):
    @blocking("change Changed Block Tracking")
    def set_cbt(self, vm_moid: str, enabled: bool) -> None:
        vm = self._vm(vm_moid)
        self._wait(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(changeTrackingEnabled=enabled)), "set CBT")

    @blocking("query changed disk areas")
    def query_changed_areas(
        self, vm_moid: str, snapshot_moid: str, disk_key: int, change_id: str, capacity: int
    ) -> list[tuple[int, int]]:
        """``(offset, length)`` areas changed since ``change_id`` ("*": all allocated areas)."""
        vm, snap = self._vm(vm_moid), self._snap(snapshot_moid)
        out: list[tuple[int, int]] = []
        offset = 0
        while offset < capacity:
            try:
                info = vm.QueryChangedDiskAreas(
                    snapshot=snap, deviceKey=disk_key, startOffset=offset, changeId=change_id
                )
            except vmodl.fault.InvalidArgument as e:
                if offset == 0 and (e.invalidProperty in (None, "changeId")):
                    raise ChangeIdRejected(
                        f"vSphere rejected the stored changeId {change_id!r} for disk {disk_key} "
                        "(CBT was reset)"
                    ) from e
                raise
            except vmodl.fault.NotSupported as e:
                raise CbtNotEnabled(f"Changed Block Tracking is not enabled on {vm_moid}: {e.msg}") from e
            out.extend((a.start, a.length) for a in info.changedArea or [])
            if not info.length:
                break
            offset = info.startOffset + info.length
        return out
