"""One source pass of a vSphere job, as an async context manager.

    async with vsphere_job(client, vm="web01", stored=..., recorded=..., work_dir=..., locator=...) as job:
        for disk in job.disks:          # DiskReader, name, extents, mode, reason, new_change_id
            ... replicate disk.reader, reading only disk.extents when not None ...
            disk.finish()               # removes the disk's .vztemp filter file
        # commit: store job.change_ids() (and job.hardware) with the target map -- only now

Entering: clean up orphans of this VM; find the VM and the appliance; check the hardware against the
record (a change stops the pass; a grown disk is allowed); enable CBT if it is off; take the replication
snapshot; plan each disk (CBT or differential, with the reason); HotAdd the snapshot disks to the
appliance and open them. Leaving, always -- also on error or cancellation, shielded -- close the
readers, detach the disks, remove the snapshot, delete the .vztemp files.
"""

from __future__ import annotations

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
from source_agent.vsphere import hardware as hw
from source_agent.vsphere.adapter import HotAddRequest, VSphereClient
from source_agent.vsphere.appliance import PRODUCT_UUID, find_appliance
from source_agent.vsphere.cbt import Mode, StoredDiskState, ensure_cbt, plan_disk, write_filter
from source_agent.vsphere.cleanup import CleanupReport, cleanup_orphans, run_shielded
from source_agent.vsphere.devices import Locator, find_block_device, locate
from source_agent.vsphere.model import (
    REPLICATION_SNAPSHOT_PREFIX,
    SNAPSHOT_MARKER,
    AttachedDisk,
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
    mode: Mode
    reason: str | None  # why differential; None in cbt mode
    extents: ExtentList | None  # read only these (None: the whole disk)
    new_change_id: str | None  # store with the map at commit, not before
    filter_path: Path | None  # the .vztemp file holding ``extents``
    device: Path
    attached: AttachedDisk

    def finish(self) -> None:
        """The disk is replicated: remove its .vztemp filter file (idempotent)."""
        if self.filter_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.filter_path)


@dataclass
class VSphereJob:
    vm: VmInfo
    appliance: VmInfo
    snapshot: SnapshotInfo
    hardware: hw.HardwareRecord  # store it at commit (it carries grown disk sizes)
    disks: list[VSphereDisk] = field(default_factory=list)
    orphans: CleanupReport = field(default_factory=CleanupReport)
    events: list[str] = field(default_factory=list)  # what the agent did, for the pass report

    def change_ids(self) -> dict[str, str | None]:
        """Per disk name, the changeId to commit with the target's map once the pass succeeded."""
        return {d.name: d.new_change_id for d in self.disks}


@contextlib.asynccontextmanager
async def vsphere_job(
    client: VSphereClient,
    *,
    vm: str,
    stored: Mapping[str, StoredDiskState],
    recorded: hw.HardwareRecord | None,
    work_dir: str | os.PathLike[str],
    locator: Locator | None = None,
    appliance_vm: str | None = None,
    uuid_path: str | os.PathLike[str] = PRODUCT_UUID,
    quiesce: bool = False,
    locate_timeout: float = 30.0,
) -> AsyncIterator[VSphereJob]:
    info = await client.find_vm(vm)
    appliance = await find_appliance(client, uuid_path=uuid_path, name=appliance_vm)
    if appliance.moid == info.moid:
        raise VSphereError(f"VM {info.name} is the appliance itself; it cannot replicate itself")
    orphans = await cleanup_orphans(client, appliance.moid, [info.moid])
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
    job = VSphereJob(vm=info, appliance=appliance, snapshot=snapshot, hardware=current, orphans=orphans)
    job.events += orphans.lines()
    if not info.cbt_enabled and cbt_unavailable is None:
        job.events.append("Changed Block Tracking was off: enabled it (with a snapshot stun/unstun cycle)")
    attached: list[AttachedDisk] = []
    filters: list[Path] = []
    wdir = Path(work_dir)
    try:
        snap_disks = await client.snapshot_disks(snapshot.moid)
        requests = []
        for d in snap_disks:
            rec = current.disk(d.key)
            name = rec.name if rec else f"disk{d.key}"
            plan = await plan_disk(
                client,
                vm_moid=info.moid,
                snapshot_moid=snapshot.moid,
                disk=d,
                stored=stored.get(name, StoredDiskState()),
                cbt_unavailable=cbt_unavailable,
                grown=diff.grown.get(d.key),
            )
            if plan.reason:
                job.events.append(f"disk {name}: differential: {plan.reason}")
            fpath = None
            if plan.extents is not None:
                fpath = write_filter(wdir, name, plan.extents, d.capacity)
                filters.append(fpath)
            requests.append((d, name, plan, fpath))
        attached = await client.hotadd(
            appliance.moid,
            [
                HotAddRequest(
                    d.file_name, d.capacity, "independent_nonpersistent", f"{info.moid}/{snapshot.moid}"
                )
                for d, *_ in requests
            ],
        )
        loc = locator or find_block_device
        for (d, name, plan, fpath), att in zip(requests, attached, strict=True):
            device = await locate(loc, att, locate_timeout)
            reader = RawReader(device, name)
            if reader.size != d.capacity:
                reader.close()
                raise VSphereError(
                    f"the HotAdded device {device} of disk {name} has {reader.size} bytes but vSphere says "
                    f"{d.capacity}; the device lookup found the wrong disk"
                )
            job.disks.append(
                VSphereDisk(
                    name=name,
                    key=d.key,
                    size=d.capacity,
                    reader=reader,
                    mode=plan.mode,
                    reason=plan.reason,
                    extents=plan.extents,
                    new_change_id=plan.new_change_id,
                    filter_path=fpath,
                    device=device,
                    attached=att,
                )
            )
        yield job
    finally:
        await run_shielded(lambda: _cleanup(client, job, attached, filters))


async def _cleanup(
    client: VSphereClient, job: VSphereJob, attached: list[AttachedDisk], filters: list[Path]
) -> None:
    errors: list[str] = []
    for d in job.disks:
        d.reader.close()
        d.finish()
    for f in filters:  # written for disks that never got attached
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f)
    if attached:
        try:
            await client.detach(job.appliance.moid, attached)
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
