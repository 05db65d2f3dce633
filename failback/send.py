"""``vzrep-target failback``: bring a committed failover home, from the DR site, by differences.

After ``failover --commit`` the replica is production at the DR site. Failback replicates it back to
the original disks with the same engine as any pass: this command is a source agent whose disks are
the replica's (the files in ``DATA_DIR/<vm>``, or the replica VM read through vSphere from a
snapshot), and whose target is an agent at the source site serving the original disks in place
(``serve --map VM/DISK=PATH`` for files, ``serve --vcenter ... --replica-vm ORIGINAL`` for vSphere).
That target hashes the original where it is, so only the blocks that differ cross the link.

The failover record tracks it, so the appliance console can show it:

* ``failing-back`` -- written before the pass (passes into the replica stay refused). A failed or
  cut pass leaves this state; the target at the source site rolled its side back, and running the
  same command again starts over (the original is hashed again: nothing is sent twice that arrived).
* ``failed-back`` -- the pass committed: the original equals the replica as it was read. Start the VM
  at the source site, stop the DR copy, then ``failover --release`` lets forward passes resume.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from target_agent.storage import failover as fo
from target_agent.storage.paths import ReplicaPaths
from target_agent.storage.transaction import now
from vsphere.cli_options import add_connection_arguments, options_from_args
from vzcommon.climain import asyncio_run
from vzcommon.errors import InputError

if TYPE_CHECKING:
    from vsphere.hardware import HardwareRecord
    from vsphere.model import VmInfo


def _begin(vdir: Path, vm: str, to: str) -> dict[str, Any]:
    st = fo.read_state(vdir)
    if st is None or st.get("state") not in ("committed", "failing-back", "failed-back"):
        raise InputError(
            f"VM {vm!r} has no committed failover (state {st and st.get('state')}): failback brings a"
            " replica that is production home; commit the failover first (`failover --commit`)"
        )
    st = {**st, "state": "failing-back", "failback_to": to, "failback_started": now()}
    fo._write_state(vdir, st)
    return st


def _disk_specs(vdir: Path) -> list[str]:
    """The replica's disks as ``NAME=PATH`` for the source engine: each monolithicFlat descriptor."""
    names = sorted(p.name[: -len("-flat.vmdk")] for p in vdir.glob("*-flat.vmdk"))
    if not names:
        raise InputError(f"{vdir} holds no replica disk to fail back")
    return [f"{n}={ReplicaPaths(vdir, n).descriptor}" for n in names]


async def _pass(args: argparse.Namespace, vdir: Path, st: dict[str, Any]) -> Any:
    from source_agent.cli import open_readers
    from source_agent.session import DiskJob, PassOptions, run_pass

    target = _target(args)
    opts = PassOptions(block_size=args.block_size, compress=args.compress, state_dir=args.state_dir)
    if st.get("kind") != "vsphere":
        readers = await asyncio.to_thread(open_readers, _disk_specs(vdir))
        try:
            return await run_pass(target, args.vm, [DiskJob(reader=r) for r in readers], opts)
        finally:
            for r in readers:
                r.close()
    if not args.vcenter:
        raise InputError(f"VM {args.vm!r} is a vSphere replica: fail it back with --vcenter HOST ...")
    from source_agent.vsphere.glue import disk_jobs
    from source_agent.vsphere.job import vsphere_job
    from target_agent.vsphere.job import load_record
    from vsphere.connection import connect
    from vsphere.devices import DatastoreFileLocator

    client = await connect(options_from_args(args))
    async with client:
        replica = await client.vm_info(str(st["replica_vm"]))
        work = args.state_dir / "work" / args.vm
        await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
        async with vsphere_job(
            client,
            vm=replica.moid,
            recorded=_original_names(replica, await asyncio.to_thread(load_record, vdir)),
            work_dir=work,
            appliance_vm=args.appliance_vm,
            uuid_path=args.appliance_uuid_file,
            locator=DatastoreFileLocator(dict(args.datastore_root)) if args.datastore_root else None,
        ) as job:
            return await run_pass(target, args.vm, disk_jobs(job), opts)


def _target(args: argparse.Namespace) -> Any:
    """Where the failback goes and with which keys: as given, else the pairing's, role reversed.

    A paired DR appliance signs in with its own host key, and pins the source appliance's key
    (``peer.json``), which is the host key of ``vzrep-source receive-failback`` there
    (:mod:`failback.receive`); the address is the one the source paired from."""
    from pairing import pins
    from pairing.defaults import AGENT_PORT
    from source_agent.tunnel import TargetSpec
    from vzcommon import keys
    from vzcommon.durable import atomic_write

    if args.identity and args.known_hosts and args.to:
        return TargetSpec(args.to[0], args.to[1], args.identity, args.known_hosts)
    record = pins.load(args.keys_dir / "peer.json")
    if record is None or record.role != "source":
        raise InputError(
            f"this target is not paired with a source ({args.keys_dir / 'peer.json'}): give --to,"
            " --identity and --known-hosts"
        )
    host, port = args.to or (record.address, AGENT_PORT)
    known = args.known_hosts
    if known is None:
        known = args.state_dir / "failback" / f"known_hosts-{record.fingerprint.replace('/', '_')[-16:]}"
        known.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(known, (keys.known_hosts_line(host, port, record.public_key) + "\n").encode(), mode=0o600)
    identity = args.identity or args.keys_dir / "ssh_host_ed25519_key"
    return TargetSpec(host, port, identity, known)


def _original_names(replica: VmInfo, stored: HardwareRecord | None) -> HardwareRecord | None:
    """The replica VM's hardware with each disk named as the source VM's disk in the same slot (the
    record the passes kept), so the target at the source site finds its disks by the names it knows."""
    from vsphere.hardware import HardwareRecord

    if stored is None:
        return None
    by_slot = {(d.controller_type, d.bus_number, d.unit_number): d.name for d in stored.disks}
    own = HardwareRecord.from_vm(replica)
    disks = tuple(
        replace(d, name=by_slot.get((d.controller_type, d.bus_number, d.unit_number), d.name)) for d in own.disks
    )
    return replace(own, disks=disks)


def failback(args: argparse.Namespace) -> int:
    from source_agent.disks import check_name
    from source_agent.report import as_json, as_text

    check_name("VM", args.vm)
    vdir = args.data_dir / args.vm
    st = _begin(vdir, args.vm, f"{args.to[0]}:{args.to[1]}" if args.to else "the paired source")

    async def run() -> int:
        report = await _pass(args, vdir, st)  # a failure leaves "failing-back": run it again
        done = {**st, "state": "failed-back", "failed_back": now(), "generation": report.generation}
        await asyncio.to_thread(fo._write_state, vdir, done)
        print(as_json(report, []) if args.json else as_text(report, []))
        if not args.json:
            print(
                f"VM {args.vm!r} is home: the original disks equal the replica. Start it at the source"
                " site, stop the copy here, then `vzrep-target failover --release` to replicate forward"
            )
        return 0

    return asyncio_run(run())


def add_failback_command(sub: Any) -> None:
    from pairing.defaults import KEYS_DIR
    from source_agent.cli import default_state_dir, parse_block_size, parse_target
    from source_agent.pipeline import DEFAULT_BLOCK_SIZE
    from target_agent.vsphere.cli import _ds_root
    from vsphere.cli_options import add_appliance_arguments

    p = sub.add_parser(
        "failback",
        help="send a committed failover's replica back to the original disks (only the differences)",
    )
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--vm", required=True)
    p.add_argument(
        "--to",
        type=parse_target,
        metavar="HOST:PORT",
        help="the agent receiving the originals (default: the paired source appliance, port 2222)",
    )
    p.add_argument("--identity", type=Path, help="our SSH private key (default: the paired host key)")
    p.add_argument(
        "--known-hosts", type=Path, help="known_hosts pinning that agent (default: the paired source's key)"
    )
    p.add_argument("--keys-dir", type=Path, default=KEYS_DIR, help=f"the pairing's keys (default {KEYS_DIR})")
    p.add_argument("--block-size", type=parse_block_size, default=DEFAULT_BLOCK_SIZE, help="64K..4M")
    p.add_argument("--compress", choices=["auto", "zstd", "none"], default="auto")
    p.add_argument("--state-dir", type=Path, default=default_state_dir(), help="the source engine's work files")
    p.add_argument("--json", action="store_true")
    g = p.add_argument_group("vSphere replicas (the replica VM is read from a snapshot)")
    add_connection_arguments(g, what="vCenter or ESXi host of the replica VM")
    add_appliance_arguments(g)
    g.add_argument("--datastore-root", action="append", default=[], type=_ds_root, help=argparse.SUPPRESS)
    p.set_defaults(func=failback)
