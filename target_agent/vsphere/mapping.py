"""Replica mapping in vSphere: an existing VM at the DR site becomes a VM's replica
(``vzrep-target map --vm NAME --replica-vm EXISTING --vcenter ...``).

The mapping is a record, ``DATA_DIR/<vm>/replica-vm`` (the existing VM's moid and name), which the
VM's passes then use as their replica VM (``job.ReplicaPass``), in place of ``<vm>_replica`` or
``serve --replica-vm``. Its disks are matched to the source's by order when the target's vCenter
cannot see the source VM, as for ``serve --replica-vm``; not being ``fresh``, they are hashed where
they are at the first pass, so only the differences travel.

Restore points are the replica VM's snapshots. Ours (name prefix and marker, ``restore_points``),
whichever job or appliance took them, stay valid and count: the first pass adds one (3 become 4).
If the VM has none of ours, mapping takes one now -- the mapped state -- so the first pass leaves
two. Snapshots vzrep did not take are never listed as restore points, never reverted to, never
removed.

Crash safety: the snapshot is taken before the record is written (atomically). A crash between
them leaves a restore point of ours on the VM and no record; running ``map`` again finds that point
(takes no second one) and writes the record.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from protocol.messages import valid_name
from vsphere.cleanup import run_shielded
from vsphere.connection import connect
from vsphere.options import ConnectOptions
from vzcommon.durable import fsync_dir
from vzcommon.errors import InputError
from vzcommon.records import read_record, write_record

from ..storage.mapping import REPLICA_VM_RECORD, holds_replica
from ..storage.paths import PRIVATE_DIR
from .restore_points import list_restore_points, take_restore_point

RECORD_MAGIC = "vzrep-mapped-replica-vm"


def mapped_replica_vm(vdir: Path) -> str | None:
    """The moid of the existing VM this VM is mapped onto, if it is."""
    try:
        body = read_record(vdir / REPLICA_VM_RECORD, RECORD_MAGIC)
    except FileNotFoundError:
        return None
    return str(body["moid"])


async def map_replica_vm(options: ConnectOptions, data_dir: Path, vm: str, existing: str) -> str:
    if not valid_name(vm):
        raise InputError(f"invalid VM name {vm!r}")
    vdir = data_dir / vm
    if await asyncio.to_thread(holds_replica, vdir):
        raise InputError(f"VM {vm!r} already has a replica on this target: nothing to map")
    client = await connect(options)
    try:
        rvm = await client.find_vm(existing)
        ours = await list_restore_points(client, rvm.moid)
        taken = ""
        if not ours:  # the mapped state becomes our first restore point
            rp = await take_restore_point(client, rvm.moid, pass_id="mapped")
            taken = f"; restore point {rp.created.name} ({rp.created.moid}) records its state"
    finally:
        await run_shielded(client.close)
    body = {
        "moid": rvm.moid,
        "name": rvm.name,
        "mapped": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    await asyncio.to_thread(_write, data_dir, vdir, body)
    kept = f"; its {len(ours)} restore points of ours count" if ours else taken
    return f"VM {vm!r} is mapped onto the VM {rvm.name} ({rvm.moid}){kept}"


def _write(data_dir: Path, vdir: Path, body: dict[str, str]) -> None:
    data_dir.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    if not vdir.exists():
        vdir.mkdir(mode=PRIVATE_DIR)
        fsync_dir(data_dir)
    write_record(vdir / REPLICA_VM_RECORD, RECORD_MAGIC, body)
