"""Restore points: a snapshot of the replica VM after each successful pass, N kept (default 7).

Ours are recognised by name prefix *and* the marker in the description (which also carries the
pass id), so snapshots an operator takes on the replica are never counted or removed. Removing the
oldest restore point consolidates it into the next one; the replica's current state is unaffected.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from vsphere.client import VSphereClient
from vsphere.model import RESTORE_POINT_PREFIX, SNAPSHOT_MARKER, SnapshotInfo
from vzcommon.errors import InputError

log = logging.getLogger(__name__)

DEFAULT_RETENTION = 7


@dataclass
class RestorePointReport:
    created: SnapshotInfo
    removed: list[SnapshotInfo] = field(default_factory=list)


def is_restore_point(s: SnapshotInfo) -> bool:
    return s.ours and s.name.startswith(RESTORE_POINT_PREFIX)


async def list_restore_points(client: VSphereClient, replica_moid: str) -> list[SnapshotInfo]:
    """Ours, oldest first."""
    snaps = [s for s in await client.list_snapshots(replica_moid) if is_restore_point(s)]
    return sorted(snaps, key=lambda s: (s.created is None, s.created or datetime.min.replace(tzinfo=UTC)))


async def take_restore_point(
    client: VSphereClient, replica_moid: str, *, pass_id: str, retention: int = DEFAULT_RETENTION
) -> RestorePointReport:
    if retention < 1:
        raise InputError(f"restore point retention must be at least 1, not {retention}")
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    description = f"{SNAPSHOT_MARKER} restore point " + json.dumps({"pass": pass_id, "time": stamp})
    created = await client.create_snapshot(
        replica_moid, f"{RESTORE_POINT_PREFIX} {stamp}", description, False
    )
    report = RestorePointReport(created)
    points = await list_restore_points(client, replica_moid)
    for old in points[: max(0, len(points) - retention)]:
        await client.remove_snapshot(old.moid)
        report.removed.append(old)
        log.info("removed the oldest restore point %s (%s) of %s", old.name, old.moid, replica_moid)
    return report
