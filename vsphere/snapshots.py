"""Snapshots: create, remove, revert to, list (the whole tree, as plain records), the current one,
and a snapshot's disks.

Which snapshots are ours, and which may be removed, is decided by their callers (the source job,
:mod:`vsphere.cleanup`, the target's restore points) from :attr:`SnapshotInfo.ours`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from vsphere.faults import blocking
from vsphere.inventory import Inventory, controllers_of, disk_info
from vsphere.model import DiskInfo, SnapshotInfo
from vsphere.vmomi import vim
from vzcommon.errors import VSphereError


class Snapshots(Inventory):
    @blocking("create a snapshot")
    def create_snapshot(self, vm_moid: str, name: str, description: str, quiesce: bool) -> SnapshotInfo:
        vm = self._vm(vm_moid)
        task = vm.CreateSnapshot_Task(name=name, description=description, memory=False, quiesce=quiesce)
        snap = self._wait(task, f"create snapshot {name!r} of {vm_moid}")
        for s in self._snapshots(vm):
            if s.moid == snap._moId:
                return s
        raise VSphereError(f"snapshot {snap._moId} of {vm_moid} vanished right after it was created")

    @blocking("remove a snapshot")
    def remove_snapshot(self, snapshot_moid: str) -> None:
        task = self._snap(snapshot_moid).RemoveSnapshot_Task(removeChildren=False, consolidate=True)
        self._wait(task, f"remove snapshot {snapshot_moid}")

    @blocking("revert to a snapshot")
    def revert_to_snapshot(self, snapshot_moid: str) -> None:
        """The VM's disks and configuration as the snapshot has them; the snapshot becomes current.
        What the VM wrote since the current snapshot and was not snapshotted is discarded."""
        task = self._snap(snapshot_moid).RevertToSnapshot_Task(suppressPowerOn=True)
        self._wait(task, f"revert to snapshot {snapshot_moid}")

    @blocking("read the current snapshot")
    def current_snapshot(self, vm_moid: str) -> str | None:
        """The moid of the snapshot the VM runs from (None: no snapshot)."""
        cur = self._props(self._vm(vm_moid), ["snapshot.currentSnapshot"])["snapshot.currentSnapshot"]
        return cur._moId if cur is not None else None

    @blocking("list snapshots")
    def list_snapshots(self, vm_moid: str) -> list[SnapshotInfo]:
        return self._snapshots(self._vm(vm_moid))

    def _snapshots(self, vm: Any) -> list[SnapshotInfo]:
        tree = self._props(vm, ["snapshot"])["snapshot"]
        out: list[SnapshotInfo] = []

        def walk(nodes: Iterable[Any], parent: str | None) -> None:
            for n in nodes or []:
                moid = n.snapshot._moId
                out.append(SnapshotInfo(moid, n.name, n.description or "", n.createTime, vm._moId, parent))
                walk(n.childSnapshotList, moid)

        if tree is not None:
            walk(tree.rootSnapshotList, None)
        return out

    @blocking("read the snapshot's disks")
    def snapshot_disks(self, snapshot_moid: str) -> list[DiskInfo]:
        hw = self._snap(snapshot_moid).config.hardware
        controllers = controllers_of(hw.device)
        return [disk_info(d, controllers) for d in hw.device if isinstance(d, vim.vm.device.VirtualDisk)]
