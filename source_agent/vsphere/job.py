"""One source pass of a vSphere job, as an async context manager.

    async with vsphere_job(client, vm="web01", recorded=..., work_dir=..., locator=...) as job:
        for disk in job.disks:
            plan = await disk.plan(StoredDiskState(change_id=...))  # what the target's map says
            ... replicate disk.reader, reading only plan.extents when not None ...
            disk.finish()               # removes the disk's .vztemp filter file
        # commit: store job.change_ids() (and job.hardware) with the target map -- only now

(``source_agent.vsphere.glue`` turns each disk into the core session's ``DiskJob`` with a planner.)
Passing ``stored=`` plans every disk on entry instead.

Entering: clean up orphans of this VM; find the VM and the appliance; check the hardware against the
record (a change stops the pass; a grown disk is allowed); enable CBT if it is off; take the replication
snapshot; HotAdd the snapshot disks to the appliance and open them. Leaving, always -- also on error
or cancellation, shielded -- close the readers, detach the disks, remove the snapshot, delete the
.vztemp files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from source_agent.disks.base import DiskReader
from source_agent.disks.raw import RawReader
from source_agent.filters.extents import ExtentList
from source_agent.vsphere.cbt import DiskPlan, Mode, StoredDiskState, ensure_cbt, plan_disk, write_filter
from vsphere import hardware as hw
from vsphere.appliance import PRODUCT_UUID, find_appliance
from vsphere.cleanup import CleanupReport, cleanup_orphans, run_shielded
from vsphere.client import VSphereClient
from vsphere.devices import Locator, find_block_device, locate
from vsphere.model import (
    REPLICATION_SNAPSHOT_PREFIX,
    SNAPSHOT_MARKER,
    AttachedDisk,
    DiskInfo,
    HotAddRequest,
    SnapshotInfo,
    VmInfo,
)
from vzcommon.errors import VSphereError, VzrepError

log = logging.getLogger(__name__)


@dataclass
class VSphereDisk:
    name: str  # stable name (the replica's file name, the key of the target's map)
    key: int  # device key in the VM
    size: int
    reader: DiskReader
    device: Path
    attached: AttachedDisk
    snapshot_disk: DiskInfo
    #: the changeId to store with the target's map when the pass commits (None: CBT unusable)
    new_change_id: str | None
    mode: Mode = "differential"
    reason: str | None = "not planned yet"  # why differential; None in cbt mode
    extents: ExtentList | None = None  # read only these (None: the whole disk)
    filter_path: Path | None = None  # the .vztemp file holding ``extents``
    _job: VSphereJob | None = field(default=None, repr=False)

    async def plan(self, stored: StoredDiskState) -> DiskPlan:
        """Decide CBT or differential for this disk from what the target's map stores."""
        job = self._job
        assert job is not None
        p = await plan_disk(
            job.client,
            vm_moid=job.vm.moid,
            snapshot_moid=job.snapshot.moid,
            disk=self.snapshot_disk,
            stored=stored,
            cbt_unavailable=job.cbt_unavailable,
            grown=job.grown.get(self.key),
        )
        self.mode, self.reason, self.extents = p.mode, p.reason, p.extents
        self.new_change_id = p.new_change_id
        if p.reason:
            job.events.append(f"disk {self.name}: differential: {p.reason}")
        if p.extents is not None:
            self.filter_path = await asyncio.to_thread(
                write_filter, job.work_dir, self.name, p.extents, self.size
            )
            job.filters.append(self.filter_path)
        return p

    def finish(self) -> None:
        """The disk is replicated: remove its .vztemp filter file (idempotent)."""
        if self.filter_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.filter_path)


@dataclass
class VSphereJob:
    client: VSphereClient
    vm: VmInfo
    own_vm: VmInfo  # the appliance VM this agent runs in
    snapshot: SnapshotInfo
    hardware: hw.HardwareRecord  # store it at commit (it carries grown disk sizes)
    work_dir: Path
    cbt_unavailable: str | None
    grown: dict[int, tuple[int, int]]
    disks: list[VSphereDisk] = field(default_factory=list)
    orphans: CleanupReport = field(default_factory=CleanupReport)
    events: list[str] = field(default_factory=list)  # what the agent did, for the pass report
    filters: list[Path] = field(default_factory=list)

    def change_ids(self) -> dict[str, str | None]:
        """Per disk name, the changeId to commit with the target's map once the pass succeeded."""
        return {d.name: d.new_change_id for d in self.disks}


@contextlib.asynccontextmanager
async def vsphere_job(
    client: VSphereClient,
    *,
    vm: str,
    recorded: hw.HardwareRecord | None,
    work_dir: str | os.PathLike[str],
    stored: Mapping[str, StoredDiskState] | None = None,
    locator: Locator | None = None,
    appliance_vm: str | None = None,
    uuid_path: str | os.PathLike[str] = PRODUCT_UUID,
    quiesce: bool = False,
    locate_timeout: float = 30.0,
) -> AsyncIterator[VSphereJob]:
    info = await client.find_vm(vm)
    own_vm = await find_appliance(client, uuid_path=uuid_path, name=appliance_vm)
    if own_vm.moid == info.moid:
        raise VSphereError(f"VM {info.name} is the appliance itself; it cannot replicate itself")
    orphans = await cleanup_orphans(client, own_vm.moid, [info.moid])
    if not orphans.empty:
        info = await client.vm_info(info.moid)

    current = hw.HardwareRecord.from_vm(info, recorded)
    diff = hw.check(recorded, current) if recorded is not None else hw.HardwareDiff((), {})
    cbt_unavailable = await ensure_cbt(client, info.moid, info.name, info.cbt_enabled)

    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    snapshot = await client.create_snapshot(
        info.moid,
        f"{REPLICATION_SNAPSHOT_PREFIX} {stamp}",
        f"{SNAPSHOT_MARKER} replication snapshot of a vzrep pass; removed when the pass ends",
        quiesce,
    )
    job = VSphereJob(
        client=client,
        vm=info,
        own_vm=own_vm,
        snapshot=snapshot,
        hardware=current,
        work_dir=Path(work_dir),
        cbt_unavailable=cbt_unavailable,
        grown=diff.grown,
        orphans=orphans,
    )
    job.events += orphans.lines()
    if not info.cbt_enabled and cbt_unavailable is None:
        job.events.append("Changed Block Tracking was off: enabled it (with a snapshot stun/unstun cycle)")
    attached: list[AttachedDisk] = []
    try:
        snap_disks = await client.snapshot_disks(snapshot.moid)
        owner = f"{info.moid}/{snapshot.moid}"
        attached = await client.hotadd(
            own_vm.moid,
            [HotAddRequest(d.file_name, d.capacity, "independent_nonpersistent", owner) for d in snap_disks],
        )
        loc = locator or find_block_device
        for d, att in zip(snap_disks, attached, strict=True):
            rec = current.disk(d.key)
            name = rec.name if rec else f"disk{d.key}"
            device = await locate(loc, att, locate_timeout)
            reader = RawReader(device, name)
            disk = VSphereDisk(
                name=name,
                key=d.key,
                size=d.capacity,
                reader=reader,
                device=device,
                attached=att,
                snapshot_disk=d,
                new_change_id=None if cbt_unavailable else d.change_id,
                _job=job,
            )
            job.disks.append(disk)
            if reader.size != d.capacity:
                raise VSphereError(
                    f"the HotAdded device {device} of disk {name} has {reader.size} bytes but vSphere says "
                    f"{d.capacity}; the device lookup found the wrong disk"
                )
        if stored is not None:
            for disk in job.disks:
                await disk.plan(stored.get(disk.name, StoredDiskState()))
        yield job
    finally:
        await run_shielded(lambda: _cleanup(client, job, attached))


async def _cleanup(client: VSphereClient, job: VSphereJob, attached: list[AttachedDisk]) -> None:
    errors: list[str] = []
    for d in job.disks:
        d.reader.close()
    for f in job.filters:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f)
    if attached:
        try:
            await client.detach(job.own_vm.moid, attached)
        except VzrepError as e:
            errors.append(str(e))
    try:
        await client.remove_snapshot(job.snapshot.moid)
    except VzrepError as e:
        errors.append(str(e))
    if errors:
        msg = "; ".join(errors)
        log.error("vSphere clean-up after the pass failed (the next start retries it): %s", msg)
        raise VSphereError(f"vSphere clean-up after the pass failed; the next start retries it: {msg}")
