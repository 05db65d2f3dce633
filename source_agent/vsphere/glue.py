"""Turn the disks of a :class:`VSphereJob` into the core session's ``DiskJob`` s.

The core session opens each disk on the target, which answers ``DiskReady`` with what its map
stores (the changeId committed at the previous pass, whether the replica is new, whether the map had
to be rebuilt); the planner below turns that into a CBT or differential plan for the disk. The
disk's ``change_id`` is the replication snapshot's changeId, which the target stores with the map
only when the pass commits. It travels percent-encoded (see :func:`encode_change_id`).
"""

from __future__ import annotations

from urllib.parse import quote, unquote

from protocol.messages import DiskReady, MapStatus
from source_agent.planning import Plan, Planner
from source_agent.session import DiskJob
from source_agent.vsphere.cbt import StoredDiskState
from source_agent.vsphere.job import VSphereDisk, VSphereJob


def encode_change_id(change_id: str | None) -> str:
    """vSphere changeIds hold spaces ("52 de ... 7a/12"); the protocol's tokens may not: percent-encode."""
    return quote(change_id, safe="/*") if change_id else ""


def decode_change_id(token: str) -> str | None:
    return unquote(token) if token else None


def stored_state(ready: DiskReady) -> StoredDiskState:
    return StoredDiskState(
        change_id=decode_change_id(ready.stored_change_id),
        map_rebuilt=ready.map_rebuilt,
        replica_empty=ready.map_status == MapStatus.EMPTY and ready.replica_size == 0,
    )


def planner(disk: VSphereDisk) -> Planner:
    async def plan(ready: DiskReady) -> Plan:
        p = await disk.plan(stored_state(ready))
        return Plan(filter=p.extents, mode=p.mode, reason=p.reason or "")

    return plan


def disk_jobs(job: VSphereJob) -> list[DiskJob]:
    return [
        DiskJob(reader=d.reader, change_id=encode_change_id(d.new_change_id), planner=planner(d))
        for d in job.disks
    ]
