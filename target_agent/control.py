"""What a source may ask of its replica (protocol 5 control sessions, ``session``): the restore points
and the failover state, a TEST failover of a point, and the end of that test.

The source comes in over its own SSH tunnel with the key a pass needs, and may do no more than this:
a real failover and its commit stay at the DR site (``vzrep-target failover``), because they make the
replica production there, and the source's operator is not the one who can tell whether the DR site
should run it. For the same reason the source may end only a *test* failover.

Every refusal is raised before anything changes: no replica, a pass running or suspended (it holds
the VM's lock), a failover already there, a point that is not (or no longer) kept. A file replica's
test is ``storage.failover.test_failover`` (the point exported into ``DATA_DIR/<vm>/failover-test``;
replication goes on); a vSphere replica's is ``vsphere.failover.start(test=True)`` (the replica VM
runs from the point with its NICs disconnected; passes wait until the test ends), under the VM's lock
so that no pass can begin half-way through.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol.messages import MAX_POINTS_SENT, PointRow, ReplicaState, Request
from vzcommon.errors import BusyError, FailedOver, InputError

from .storage import failover as fo
from .storage import points as rp
from .storage.lock import VmLock
from .storage.mapping import holds_replica
from .storage.transaction import vm_dir

if TYPE_CHECKING:  # the vSphere area (and its SOAP library) is imported only for a vSphere target
    from vsphere.client import VSphereClient

    from .vsphere.job import ReplicaSettings


async def carry_out(
    data_dir: Path, vm: str, request: Request, replicas: ReplicaSettings | None
) -> ReplicaState:
    """Carry the request out; the replica's state afterwards. Raises the refusal's error."""
    vdir = vm_dir(data_dir, vm)
    if not await asyncio.to_thread(holds_replica, vdir):
        raise InputError(
            f"this target holds no replica of VM {vm!r}: no pass has committed, and nothing was seeded or"
            " mapped for it"
        )
    if replicas is not None:
        return await _vsphere(data_dir, vm, request, replicas)
    return await asyncio.to_thread(_file, data_dir, vm, request)


# -- checks both kinds share ------------------------------------------------------------------------


def _may_start_test(vdir: Path, vm: str, st: dict[str, Any] | None) -> None:
    if st is not None and not st.get("test") and st.get("state") != "test":
        raise FailedOver(
            f"VM {vm!r} is {st.get('state')} at the DR site (restore point {st.get('point')} since"
            f" {st.get('since')}): no test failover from the source; the DR site ends or finishes it"
        )
    if st is not None and st.get("state") != "failing-over":  # a vSphere test stopped half-way goes on
        raise InputError(
            f"VM {vm!r} already has a test failover (restore point {st.get('point')} since {st.get('since')}):"
            " end it first"
        )
    if VmLock.is_held(vdir):
        raise BusyError(
            f"VM {vm!r} is busy on the target: a pass (or one waiting for its source to resume it), a"
            " verify, or another test failover holds it; start the test failover once it is done"
        )


def _may_end_test(vm: str, st: dict[str, Any] | None) -> None:
    if st is None:
        raise InputError(f"VM {vm!r} has no test failover to end")
    if not st.get("test") and st.get("state") != "test":
        raise FailedOver(
            f"VM {vm!r} is {st.get('state')} at the DR site, not in a test failover: only the DR site ends"
            " that (`vzrep-target failover --undo`)"
        )


def _failover_fields(st: dict[str, Any] | None) -> tuple[str, str, str, str]:
    """The record as REPLICA_STATE carries it: state, point, since, and what the operator needs to know."""
    if st is None:
        return "", "", "", ""
    state = str(st.get("state", ""))
    if state == "test":
        detail = f"the point's disks are in {st.get('dir')} on the target; replication goes on"
    elif state in ("committed", "failing-back", "failed-back"):
        detail = "the replica is production at the DR site; the way home is failback"
    elif st.get("kind") == "vsphere":
        what = "with its NICs disconnected; passes wait" if st.get("test") else "as production"
        detail = f"replica VM {st.get('replica_vm')} runs from restore point {st.get('point_name')} {what}"
    elif st.get("deltas"):
        detail = (
            f"the VM runs from {', '.join(map(str, st['deltas'].values()))} on the target; passes are refused"
        )
    else:
        detail = ""
    return state, str(st.get("point", "")), str(st.get("since", "")), detail[:4096]


# -- file replicas ----------------------------------------------------------------------------------


def _file(data_dir: Path, vm: str, request: Request) -> ReplicaState:
    vdir = data_dir / vm
    note = ""
    if request.action == "test-failover":
        _may_start_test(vdir, vm, fo.read_state(vdir))
        points = rp.load(vdir)
        if request.point:
            rp.find(points, request.point, vm)  # a point not kept is refused before anything is written
        where = fo.test_failover(data_dir, vm, request.point or None, None)
        note = (
            f"test failover of VM {vm!r} to restore point {request.point or points[-1].id}: its disks are in"
            f" {where} on the target; replication goes on"
        )
    elif request.action == "end-test":
        _may_end_test(vm, fo.read_state(vdir))
        note = fo.undo_failover(data_dir, vm)
    return _file_state(vdir, note)


def _file_state(vdir: Path, note: str) -> ReplicaState:
    points = rp.load(vdir)
    rows: list[PointRow] = []
    for i, p in enumerate(points):
        newer = points[i + 1] if i + 1 < len(points) else None
        rows.append((p.id, p.time, p.origin, p.job, newer is None, newer.held_bytes if newer else 0))
    rows.reverse()  # newest first, as an operator reads them
    return ReplicaState(
        "file",
        tuple(rows[:MAX_POINTS_SENT]),
        max(0, len(rows) - MAX_POINTS_SENT),
        *_failover_fields(fo.read_state(vdir)),
        VmLock.is_held(vdir),
        note,
    )


# -- vSphere replicas -------------------------------------------------------------------------------


async def _vsphere(data_dir: Path, vm: str, request: Request, replicas: ReplicaSettings) -> ReplicaState:
    from vsphere.connection import connect

    from .vsphere import failover as vfo

    vdir = data_dir / vm
    note = ""
    client = await connect(replicas.connect)
    async with client:
        if request.action in ("test-failover", "end-test"):
            st = await asyncio.to_thread(fo.read_state, vdir)
            if request.action == "test-failover":
                _may_start_test(vdir, vm, st)
            else:
                _may_end_test(vm, st)
            with VmLock(vdir, vm):  # no pass begins while the replica VM is reverted or brought back
                if request.action == "test-failover":
                    st = await vfo.start(client, data_dir, vm, request.point or None, test=True)
                    note = (
                        f"test failover of VM {vm!r}: replica VM {st['replica_vm']} runs from restore point"
                        f" {st['point_name']} with its NICs disconnected; passes wait until the test ends"
                    )
                else:
                    note = await vfo.undo(client, data_dir, vm)
        return await _vsphere_state(client, vdir, vm, note)


async def _vsphere_state(client: VSphereClient, vdir: Path, vm: str, note: str) -> ReplicaState:
    from .vsphere import failover as vfo
    from .vsphere.points import snapshot_rows

    replica = await vfo.find_replica(client, vdir, vm)
    snaps = await client.list_snapshots(replica.moid)
    current = await client.current_snapshot(replica.moid)
    rows: list[PointRow] = [
        (r["id"], r["time"] or "", "pass", "", bool(r["current"]), 0)
        for r in snapshot_rows(snaps, current)
        if r["kind"] == "restore-point"  # failover snapshots and foreign ones are no point to test
    ]
    st = await asyncio.to_thread(fo.read_state, vdir)
    return ReplicaState(
        "vsphere",
        tuple(rows[:MAX_POINTS_SENT]),
        max(0, len(rows) - MAX_POINTS_SENT),
        *_failover_fields(st),
        await asyncio.to_thread(VmLock.is_held, vdir),
        note,
    )
