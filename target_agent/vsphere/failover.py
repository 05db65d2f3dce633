"""Failover of a vSphere replica: run the replica VM from one of its restore points, then undo or commit.

The state is the file replicas' record (:mod:`target_agent.storage.failover`, ``DATA_DIR/<vm>/failover``),
with ``"kind": "vsphere"``. Any state but ``test`` makes the target refuse passes (exit 15), so the
replica VM cannot change under a failover. The states and their steps, each safe to run again after a
crash (the record says how far it got):

* ``failing-over`` -- written first. Then a snapshot of the replica's current state is taken
  (``vzrep-failover-before``, or ``vzrep-failover-test`` for ``--test``; ours: prefix and marker), so the
  replica can come back to exactly what its maps describe; then the VM is reverted to the restore
  point, powered on, and (not for a test) its NICs connected, on the networks the replica has.
* ``failed-over`` / ``testing`` -- the VM runs from the point. A test keeps the NICs disconnected, and
  replication is paused while it runs (a vSphere VM has one current state: it cannot run the test
  and take passes at the same time).
* ``--undo`` (``undoing`` while it runs): power off, revert to the before snapshot -- which discards
  what the VM wrote while failed over --, remove that snapshot, disconnect the NICs, clear the record;
  passes are taken again and find the replica as the last pass left it.
* ``committed`` -- ``--commit`` removes the before snapshot and the restore points newer than the one
  failed over to (kept until then, so ``--undo`` could return): the VM keeps running and is
  production. The maps in DATA_DIR no longer describe its disks and are removed; the older restore
  points stay as snapshots (they are still what the VM was). Passes stay refused until failback and ``--release``.

Restore points are :func:`restore_points.is_restore_point` snapshots, named by moid or name; foreign
snapshots are never a failover target and are never touched.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from target_agent.storage import failover as fo
from target_agent.storage.transaction import now
from target_agent.vsphere.mapping import mapped_replica_vm
from target_agent.vsphere.replica import REPLICA_MARKER
from target_agent.vsphere.restore_points import is_restore_point
from vsphere import privileges
from vsphere.client import VSphereClient
from vsphere.model import SNAPSHOT_MARKER, SnapshotInfo, VmInfo
from vzcommon.durable import unlink_durable
from vzcommon.errors import InputError, VSphereError
from vzcommon.records import read_record

BEFORE_PREFIX = "vzrep-failover-before"
TEST_PREFIX = "vzrep-failover-test"


def _recorded_replica(vdir: Path, vm: str) -> str | None:
    from target_agent.vsphere.job import RECORD, RECORD_MAGIC

    if not vdir.is_dir():
        raise InputError(f"no replica of VM {vm!r} in {vdir.parent}")
    if not (vdir / RECORD).exists():
        return None
    moid = read_record(vdir / RECORD, RECORD_MAGIC).get("replica_vm")
    return str(moid) if moid else None


async def find_replica(client: VSphereClient, vdir: Path, vm: str) -> VmInfo:
    """The replica VM the passes wrote: the moid recorded in ``vsphere-replica.json``, else ``<vm>_replica``;
    it must carry our annotation, unless the operator mapped the VM onto it (``mapping``)."""
    mapped = await asyncio.to_thread(mapped_replica_vm, vdir)
    if mapped is not None:
        return await client.find_vm(mapped)
    moid = await asyncio.to_thread(_recorded_replica, vdir, vm)
    rep = await client.find_vm(moid or f"{vm}_replica")
    if REPLICA_MARKER not in rep.annotation:
        raise InputError(
            f"VM {rep.name} ({rep.moid}) is not a vzrep replica (no {REPLICA_MARKER!r} annotation)"
        )
    return rep


def _by_time(snaps: list[SnapshotInfo]) -> list[SnapshotInfo]:
    return sorted(snaps, key=lambda s: (s.created is None, s.created.timestamp() if s.created else 0.0))


def pick_point(snaps: list[SnapshotInfo], point_id: str | None, vm: str) -> SnapshotInfo:
    """The restore point named by moid or name (default: the newest)."""
    points = _by_time([s for s in snaps if is_restore_point(s)])
    if not points:
        raise InputError(f"VM {vm!r}'s replica has no restore point yet: nothing to fail over to")
    if point_id is None:
        return points[-1]
    named = [s for s in points if point_id in (s.moid, s.name)]
    if len(named) > 1:  # names carry the time to the second: passes close together share one
        raise InputError(
            f"{len(named)} restore points of VM {vm!r} are named {point_id!r}: name one by its id"
            f" ({', '.join(s.moid for s in named)})"
        )
    if named:
        return named[0]
    if any(point_id in (s.moid, s.name) for s in snaps):
        raise InputError(
            f"snapshot {point_id!r} is not a vzrep restore point: only restore points can be failed over to"
        )
    raise InputError(
        f"VM {vm!r} has no restore point {point_id!r}; `vzrep-target points --vcenter ...` lists them"
        f" ({', '.join(s.moid for s in points)})"
    )


def _mark(snaps: list[SnapshotInfo], prefix: str) -> SnapshotInfo | None:
    return next((s for s in snaps if s.ours and s.name.startswith(prefix)), None)


async def start(
    client: VSphereClient,
    data_dir: Path,
    vm: str,
    point_id: str | None,
    *,
    test: bool = False,
    network_map: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Fail over (``test``: a test failover) to a point; the state record afterwards.

    ``network_map`` (source network name -> DR network name) moves the replica's NICs before they are
    connected; the networks each NIC had are recorded, and ``--undo`` puts them back."""
    vdir = data_dir / vm
    st = await asyncio.to_thread(fo.read_state, vdir)
    if st is not None and st.get("state") != "failing-over":
        raise InputError(f"VM {vm!r} is already {st.get('state')}; end that first (`failover --undo`)")
    if st is not None and bool(st.get("test")) != test:
        raise InputError(
            f"VM {vm!r} is failing over{' as a test' if st.get('test') else ''}: run that failover again"
        )
    replica = await find_replica(client, vdir, vm)
    # checked before anything changes: a failover that stops half-way for want of a privilege is worse
    missing = (await client.missing_privileges([replica.moid], privileges.REPLICA_FAILOVER))[replica.moid]
    if missing:
        raise VSphereError(
            f"the vSphere user may not fail over replica VM {replica.name}: it lacks {', '.join(missing)}"
            " on it (docs/vsphere.md, Privileges)"
        )
    snaps = await client.list_snapshots(replica.moid)
    point = pick_point(snaps, point_id or (str(st["point"]) if st else None), vm)
    if st is None:
        info = await client.vm_info(replica.moid)
        await _check_network_map(client, replica, info, network_map or {}, test)
        st = {
            "nic_networks": {str(n.key): n.network for n in info.nics if n.network},
            "network_map": dict(network_map or {}),
            "state": "failing-over",
            "kind": "vsphere",
            "test": test,
            "point": point.moid,
            "point_name": point.name,
            "since": now(),
            "replica_vm": replica.moid,
        }
        await asyncio.to_thread(fo._write_state, vdir, st)  # passes are refused from here on
    elif st.get("point") != point.moid:
        raise InputError(f"VM {vm!r} is failing over to point {st.get('point')}: run that failover again")
    prefix = TEST_PREFIX if test else BEFORE_PREFIX
    before = _mark(snaps, prefix)
    if not st.get("reverted"):
        if before is None:
            what = "test failover" if test else "failover"
            description = f"{SNAPSHOT_MARKER} before {what} " + json.dumps(
                {"point": point.moid, "since": st["since"]}
            )
            before = await client.create_snapshot(replica.moid, f"{prefix} {st['since']}", description, False)
        st = {**st, "before": before.moid}
        await asyncio.to_thread(fo._write_state, vdir, st)
        await client.revert_to_snapshot(point.moid)
        st = {**st, "reverted": True}
        await asyncio.to_thread(fo._write_state, vdir, st)
    await client.power_on(replica.moid)
    nics = await client.set_nics_connected(replica.moid, not test, st.get("network_map") or None)
    st = {**st, "state": "testing" if test else "failed-over", "nics": nics}
    await asyncio.to_thread(fo._write_state, vdir, st)
    return st


async def _check_network_map(
    client: VSphereClient, replica: VmInfo, info: VmInfo, network_map: dict[str, str], test: bool
) -> None:
    """Refused before anything changes: a map for a test (its NICs stay off), a name no NIC is on, or a
    network the replica's host does not have."""
    if not network_map:
        return
    if test:
        raise InputError("--network-map is for a failover: a test failover keeps the NICs disconnected")
    on = {n.network for n in info.nics}
    strays = sorted(set(network_map) - on)
    if strays:
        raise InputError(
            f"--network-map names {', '.join(map(repr, strays))}, but no NIC of replica VM {replica.name}"
            f" is on it (its NICs are on {', '.join(repr(n) for n in sorted(x or '' for x in on)) or 'nothing'})"
        )
    have = await client.host_networks(replica.moid)
    missing = sorted(set(network_map.values()) - set(have))
    if missing:
        raise InputError(
            f"--network-map: the host of replica VM {replica.name} has no network"
            f" {', '.join(map(repr, missing))} (it has {', '.join(map(repr, have)) or 'none'})"
        )


async def undo(client: VSphereClient, data_dir: Path, vm: str) -> str:
    """End a (test) failover: the replica as the last pass left it; passes are taken again."""
    vdir = data_dir / vm
    st = await asyncio.to_thread(fo.read_state, vdir)
    if st is None:
        raise InputError(f"VM {vm!r} is not failed over: nothing to undo")
    if st.get("kind") != "vsphere":
        raise InputError(f"VM {vm!r} is a file replica's failover: undo it without --vcenter")
    if st.get("state") == "committed":
        raise InputError(f"VM {vm!r}'s failover was committed: it can only come home by failback")
    replica = str(st["replica_vm"])
    snaps = {s.moid: s for s in await client.list_snapshots(replica)}
    before = snaps.get(str(st.get("before")))
    if before is None and st.get("state") != "undoing" and st.get("reverted"):
        raise VSphereError(
            f"the snapshot {st.get('before')} taken before the failover of VM {vm!r} is gone, so the replica"
            " cannot be brought back to what its last pass wrote; remove the replica VM and its DATA_DIR"
            " directory to replicate it afresh"
        )
    st = {**st, "state": "undoing"}
    await asyncio.to_thread(fo._write_state, vdir, st)
    await client.power_off(replica)
    if before is not None:
        await client.revert_to_snapshot(before.moid)
        await client.remove_snapshot(before.moid)
    back = {int(k): str(v) for k, v in (st.get("nic_networks") or {}).items()}
    await client.set_nics_connected(replica, False, by_key=back)  # a --network-map undone too
    await asyncio.to_thread(unlink_durable, vdir / fo.STATE)
    what = "test failover" if st.get("test") else "failover"
    return (
        f"{what} of VM {vm!r} undone: the replica VM is off, as the last pass left it, and replicates again"
    )


async def commit(client: VSphereClient, data_dir: Path, vm: str) -> str:
    """Make a failover final: the VM runs on as production; the way back is failback."""
    vdir = data_dir / vm
    st = await asyncio.to_thread(fo.read_state, vdir)
    if st is None or st.get("kind") != "vsphere" or st.get("state") not in ("failed-over", "committed"):
        raise InputError(
            f"VM {vm!r} has no vSphere failover to commit (state {st and st.get('state')});"
            " a test failover ends with --undo"
        )
    snaps = {s.moid: s for s in await client.list_snapshots(str(st["replica_vm"]))}
    if str(st.get("before")) in snaps:
        await client.remove_snapshot(str(st["before"]))
    # The points newer than the one failed over to are states production will never pass through:
    # kept until now (undo could return to them), removed at commit. Older points stay, as the
    # history of the VM now running; foreign snapshots are never touched. Listed afresh, so a commit
    # stopped half-way and run again removes what is left.
    newer = _newer_points(await client.list_snapshots(str(st["replica_vm"])), str(st["point"]))
    for snap in newer:
        await client.remove_snapshot(snap.moid)
    await asyncio.to_thread(unlink_durable, *vdir.glob("*.vzmap"))  # they describe the replica no more
    await asyncio.to_thread(fo._write_state, vdir, {**st, "state": "committed", "committed": now()})
    dropped = f"; {len(newer)} newer restore point(s) removed" if newer else ""
    return (
        f"failover of VM {vm!r} committed: the replica VM is production{dropped}; bring it home with failback"
    )


async def release(client: VSphereClient, data_dir: Path, vm: str, *, force: bool = False) -> str:
    """After failback: the replica VM (off: the original runs again) takes passes again, NICs off."""
    vdir = data_dir / vm
    st = await asyncio.to_thread(fo.read_state, vdir)
    fo.check_releasable(st, vm, force)
    assert st is not None
    replica = str(st["replica_vm"])
    info = await client.vm_info(replica)
    if info.power_state == "poweredOn":
        raise InputError(
            f"replica VM {info.name} still runs: power it off once VM {vm!r} runs at the source site"
            " again (failback done), then release it; passes never write a running VM"
        )
    back = {int(k): str(v) for k, v in (st.get("nic_networks") or {}).items()}
    await client.set_nics_connected(replica, False, by_key=back)  # a replica never clashes with its source
    await asyncio.to_thread(unlink_durable, vdir / fo.STATE)
    return (
        f"VM {vm!r} replicates again into {info.name}: its NICs are disconnected; the next pass re-hashes"
        " the replica and sends only what differs"
    )


def _newer_points(snaps: list[SnapshotInfo], point: str) -> list[SnapshotInfo]:
    """Our restore points taken after ``point`` (oldest first); none when ``point`` is gone."""
    points = _by_time([s for s in snaps if is_restore_point(s)])
    at = next((i for i, s in enumerate(points) if s.moid == point), None)
    return [] if at is None else points[at + 1 :]
