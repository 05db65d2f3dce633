"""What to read from each disk: Changed Block Tracking, or a differential pass with its reason.

The target keeps an opaque per-disk ``change_id`` with its ``.vzmap`` and returns it at the start of
the next pass (:class:`StoredDiskState`). With it, ``QueryChangedDiskAreas`` lists the areas changed
since then and only those are read (mode ``cbt``). Every other case is a differential pass for that
disk -- read everything and compare with the target's map -- with the reason in the report:

* no changeId stored (first pass, or the previous pass was not a CBT pass); on a first pass into an
  empty replica, ``changeId "*"`` still narrows the read to the allocated areas;
* vSphere rejects the stored changeId (``InvalidArgument``: CBT was reset);
* the disk grew (vSphere resets CBT on resize);
* CBT is off and could not be enabled, or the snapshot disk carries no changeId;
* the target rebuilt its map (its hashes no longer describe the stored changeId's state).

The snapshot disk's own changeId is returned as ``new_change_id``; it must be stored with the map
only when the pass commits, never before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from source_agent.filters.extents import ExtentList, FilterKind
from vsphere.client import VSphereClient
from vsphere.model import CbtNotEnabled, ChangeIdRejected, DiskInfo

log = logging.getLogger(__name__)

Mode = Literal["cbt", "differential"]


@dataclass(frozen=True)
class StoredDiskState:
    """What the target's map says about one disk at the start of a pass."""

    change_id: str | None = None
    map_rebuilt: bool = False
    replica_empty: bool = False  # the replica holds no data yet: unallocated source areas can be skipped


@dataclass(frozen=True)
class DiskPlan:
    mode: Mode
    reason: str | None  # why the pass is differential; None in cbt mode
    extents: ExtentList | None  # the only ranges to read; None: read the whole disk
    new_change_id: str | None  # commit with the map; None: the next pass is differential again


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


async def plan_disk(
    client: VSphereClient,
    *,
    vm_moid: str,
    snapshot_moid: str,
    disk: DiskInfo,
    stored: StoredDiskState,
    cbt_unavailable: str | None,
    grown: tuple[int, int] | None,
) -> DiskPlan:
    """Decide the mode for one snapshot disk; ``cbt_unavailable`` is why CBT is off, if it is."""
    if cbt_unavailable:
        return DiskPlan("differential", cbt_unavailable, None, None)
    new_id = disk.change_id
    if new_id is None:
        return DiskPlan(
            "differential",
            "the snapshot disk has no changeId (CBT is not active on this disk yet)",
            None,
            None,
        )
    if grown is not None:
        old, cur = grown
        reason = f"the disk grew from {_size(old)} to {_size(cur)}; vSphere resets CBT on resize"
        return DiskPlan("differential", reason, None, new_id)
    if stored.map_rebuilt:
        return DiskPlan(
            "differential", "the target rebuilt its map, so the stored changeId is void", None, new_id
        )
    if stored.change_id is None:
        if stored.replica_empty:
            try:
                areas = await client.query_changed_areas(vm_moid, snapshot_moid, disk.key, "*", disk.capacity)
            except (ChangeIdRejected, CbtNotEnabled) as e:
                return DiskPlan("differential", f"first pass; allocated areas unknown: {e}", None, new_id)
            reason = 'first pass: no changeId stored; reading only the allocated areas (changeId "*")'
            return DiskPlan(
                "differential", reason, ExtentList.from_lengths(areas).clip(disk.capacity), new_id
            )
        return DiskPlan(
            "differential", "no changeId is stored with the target's map for this disk", None, new_id
        )
    try:
        areas = await client.query_changed_areas(
            vm_moid, snapshot_moid, disk.key, stored.change_id, disk.capacity
        )
    except ChangeIdRejected:
        reason = "vSphere rejected the stored changeId (CBT was reset on the VM, e.g. by a restore)"
        return DiskPlan("differential", reason, None, new_id)
    except CbtNotEnabled:
        return DiskPlan("differential", "CBT was turned off on the VM during the pass", None, None)
    return DiskPlan("cbt", None, ExtentList.from_lengths(areas).clip(disk.capacity), new_id)


def write_filter(work_dir: Path, name: str, extents: ExtentList, disk_size: int) -> Path:
    """The seed's ``<disk>.vztemp`` changed-block filter file; removed when the disk is done."""
    path = work_dir / f"{name}.vztemp"
    extents.save(path, FilterKind.CHANGED, disk_size)
    return path


async def ensure_cbt(client: VSphereClient, vm_moid: str, vm_name: str, enabled: bool) -> str | None:
    """Turn CBT on if it is off; return why CBT cannot be used, or None.

    CBT takes effect only after the VM is stunned and unstunned, so enabling it is followed by a
    snapshot create/remove cycle (logged: it briefly stuns a running VM).
    """
    from vsphere.model import CBT_STUN_SNAPSHOT_PREFIX, SNAPSHOT_MARKER
    from vzcommon.errors import VzrepError

    if enabled:
        return None
    log.info("Changed Block Tracking is off on VM %s: enabling it", vm_name)
    try:
        await client.set_cbt(vm_moid, True)
    except VzrepError as e:
        reason = f"CBT is off on the VM and could not be enabled: {e}"
        log.warning("%s", reason)
        return reason
    log.info("CBT enabled on VM %s; stun/unstun cycle (snapshot create + remove) to activate it", vm_name)
    snap = await client.create_snapshot(
        vm_moid, f"{CBT_STUN_SNAPSHOT_PREFIX}", f"{SNAPSHOT_MARKER} activates Changed Block Tracking", False
    )
    await client.remove_snapshot(snap.moid)
    return None
