"""Leave vSphere as we found it: detach HotAdded disks, then remove our snapshots.

Order matters: a snapshot's disk cannot be consolidated while the appliance still holds it. Clean-up
runs shielded from cancellation (:func:`run_shielded`), and at start-up :func:`cleanup_orphans` finds
what a crashed run left behind -- disks recorded in the appliance's ``vzrep.hotadd.*`` extraConfig
markers, and snapshots that carry our name prefix *and* our marker -- and reports what it removed.
Restore-point snapshots on replica VMs are never touched here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from vsphere.model import CBT_STUN_SNAPSHOT_PREFIX, REPLICATION_SNAPSHOT_PREFIX
from vzcommon.errors import VzrepError

if TYPE_CHECKING:
    from vsphere.client import VSphereClient

log = logging.getLogger(__name__)
T = TypeVar("T")


async def run_shielded(fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn()`` to completion even if the caller is cancelled meanwhile; then re-raise the cancel."""
    task = asyncio.ensure_future(fn())  # owned here: awaited until done below
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done() and task.cancelled():
                raise
            if task.done():
                try:
                    result = task.result()
                except BaseException:
                    log.exception("clean-up failed while the pass was being cancelled")
                    raise asyncio.CancelledError() from None
                cancelled = True
                break
            cancelled = True
        except BaseException:
            if cancelled:
                log.exception("clean-up failed while the pass was being cancelled")
                raise asyncio.CancelledError() from None
            raise
    if cancelled:
        raise asyncio.CancelledError()
    return result


@dataclass
class CleanupReport:
    detached: list[str] = field(default_factory=list)  # disk files detached from the appliance
    snapshots_removed: list[str] = field(default_factory=list)  # "vm-57: vzrep-replication ... (snapshot-70)"
    errors: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.detached or self.snapshots_removed or self.errors)

    def lines(self) -> list[str]:
        out = [f"detached left-over HotAdd disk {f}" for f in self.detached]
        out += [f"removed left-over snapshot {s}" for s in self.snapshots_removed]
        out += [f"clean-up failed: {e}" for e in self.errors]
        return out


def _ours_to_remove(name: str) -> bool:
    return name.startswith((REPLICATION_SNAPSHOT_PREFIX, CBT_STUN_SNAPSHOT_PREFIX))


async def cleanup_orphans(
    client: VSphereClient, appliance_moid: str, vm_moids: Iterable[str] | None = None
) -> CleanupReport:
    """Detach disks a crashed run left on the appliance and remove its snapshots.

    ``vm_moids=None`` (agent start-up, no job running) cleans every marked disk; otherwise only disks
    and snapshots of those VMs, so a job does not pull the disks of another job running beside it.
    """
    report = CleanupReport()
    wanted = None if vm_moids is None else set(vm_moids)
    scan: set[str] = set(wanted or ())
    try:
        marked = await client.list_hotadded(appliance_moid)
    except VzrepError as e:
        report.errors.append(str(e))
        marked = []
    mine = [d for d in marked if wanted is None or d.owner.split("/", 1)[0] in wanted]
    for d in mine:
        if d.owner:
            scan.add(d.owner.split("/", 1)[0])
    if mine:
        try:
            await client.detach(appliance_moid, mine)
            report.detached += [d.file_name for d in mine if d.key >= 0]
        except VzrepError as e:
            report.errors.append(str(e))
    for vm in sorted(scan):
        try:
            snaps = await client.list_snapshots(vm)
        except VzrepError as e:
            report.errors.append(str(e))
            continue
        for s in reversed(snaps):  # children first
            if s.ours and _ours_to_remove(s.name):
                try:
                    await client.remove_snapshot(s.moid)
                    report.snapshots_removed.append(f"{vm}: {s.name} ({s.moid})")
                except VzrepError as e:
                    report.errors.append(str(e))
    for line in report.lines():
        log.warning("%s", line)
    return report
