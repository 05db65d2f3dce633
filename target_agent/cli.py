"""``vzrep-target``: serve replication passes, roll back, show status, make keys.

Exit codes are those of :class:`vzcommon.errors.ExitCode` (README, "Exit codes").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Any

from protocol.messages import valid_name
from vsphere.cli_options import add_connection_arguments
from vzcommon.climain import asyncio_run, run_main
from vzcommon.errors import InputError
from vzcommon.keycli import add_keygen
from vzcommon.log import get_logger

from .points_cli import add_point_commands
from .resume import DEFAULT_WINDOW, Suspended
from .storage.points import DEFAULT_RETENTION
from .storage.status import vm_status
from .storage.transaction import list_vms, recover_all, recover_vm, vm_dir
from .verify_cli import add_verify_command
from .vsphere.cli import add_serve_arguments, settings_from_args

log = get_logger("vzrep.target")


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def parse_map(value: str) -> tuple[tuple[str, str], Path]:
    where, sep, path = value.partition("=")
    vm, slash, disk = where.partition("/")
    if not (sep and slash and valid_name(vm) and valid_name(disk) and path):
        raise argparse.ArgumentTypeError(f"expected VM/DISK=PATH with valid names, got {value!r}")
    p = Path(path)
    if not p.is_file() and not p.is_block_device():
        raise argparse.ArgumentTypeError(f"{path} is not an existing file or block device")
    return (vm, disk), p.resolve()


async def serve(args: argparse.Namespace) -> int:
    # asyncssh and the session: loaded here, not for every command (status runs every 10 s on the
    # console; this keeps the others at about half a second less)
    from .server import Stream, start_server
    from .session import TargetSession

    data_dir: Path = args.data_dir
    await asyncio.to_thread(data_dir.mkdir, mode=0o700, parents=True, exist_ok=True)  # replicas are private
    replicas = settings_from_args(args)
    recovered: dict[str, str] = {}
    if replicas is not None:  # re-attach the replica disks of interrupted passes and roll them back
        from .vsphere.job import recover_devices

        recovered.update(await recover_devices(replicas, data_dir))
    recovered.update(await asyncio.to_thread(recover_all, data_dir))  # before accepting any work
    for vm, what in recovered.items():
        log.warning("startup_recovery", vm=vm, what=what)
    sessions: set[asyncio.Task[None]] = set()
    stop = asyncio.Event()
    suspended = Suspended(args.resume_window) if args.resume_window > 0 else None

    metrics = None
    if args.metrics_listen:
        from vzcommon.metrics import serve_metrics

        from .metrics import TargetMetrics

        metrics = TargetMetrics(data_dir)
        mhost, mport = args.metrics_listen
        metrics_server, mbound = await serve_metrics(mhost, mport, metrics.collect)
        log.info("metrics_listening", host=mhost, port=mbound)
        if args.metrics_ready_file:
            await asyncio.to_thread(args.metrics_ready_file.write_text, f"{mbound}\n")

    def pass_ended(event: dict[str, Any]) -> None:
        if metrics is not None:
            metrics.pass_ended(event)
        if args.once and event.get("result") == "committed":
            stop.set()  # `--once` (receiving a failback): done after the first committed pass

    async def handle(stream: Stream, peer: str) -> None:
        task = asyncio.current_task()
        assert task is not None
        sessions.add(task)
        try:
            session = TargetSession(
                data_dir,
                peer,
                on_pass_end=pass_ended,
                replicas=replicas,
                restore_points=args.restore_points,
                mapped=dict(args.map),
                suspended=suspended,
            )
            await session.run(stream)
        finally:
            sessions.discard(task)

    host, port = args.listen
    server, bound = await start_server(handle, host, port, args.host_key, args.authorized_keys)
    log.info("listening", host=host, port=bound, data_dir=str(data_dir), recovered=len(recovered))
    if args.ready_file:
        await asyncio.to_thread(args.ready_file.write_text, f"{bound}\n")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting_down", sessions=len(sessions))
    server.close()
    if args.once and sessions:  # the committed pass's session still tells the source; let it finish
        await asyncio.wait(list(sessions), timeout=30)
    for task in list(sessions):
        task.cancel()  # each session rolls back its pass, shielded
    if sessions:
        await asyncio.gather(*sessions, return_exceptions=True)
    if suspended is not None:
        await suspended.close()  # passes waiting for their source are rolled back
    await server.wait_closed()
    if metrics is not None:
        metrics_server.close()
        await metrics_server.wait_closed()
    return 0


def status(args: argparse.Namespace) -> int:
    if args.vm:
        vdir = vm_dir(args.data_dir, args.vm)
        if not vdir.is_dir():
            raise InputError(f"no replica of VM {args.vm!r} in {args.data_dir}")
        vms = [vdir]
    else:
        vms = list_vms(args.data_dir)
    report: dict[str, Any] = {"data_dir": str(args.data_dir), "vms": [vm_status(v) for v in vms]}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    if not vms:
        print(f"no replicas in {args.data_dir}")
    for vm in report["vms"]:
        last = vm["last_pass"] or {}
        state = (
            "PASS RUNNING" if vm["pass_running"] else ("PENDING ROLLBACK" if vm["pending_rollback"] else "ok")
        )
        print(
            f"{vm['vm']}: {state}; last pass {last.get('finished', 'never')} generation {last.get('generation', '-')}"
        )
        for name, d in vm["disks"].items():
            where = f"{d['allocated']} allocated" if d["allocated"] is not None else d["backing"]
            print(f"  {name}: {d['size']} bytes, {where}{'' if d['has_map'] else ', no map'}")
        if vm["last_failure"]:
            print(f"  last failure: rolled back at {vm['last_failure'].get('rolled_back_at')}")
        print(f"  restore points: {len(vm['restore_points'])}")
        if vm["failover"]:
            fo = vm["failover"]
            print(f"  {fo.get('state')} to restore point {fo.get('point')} since {fo.get('since')}")
    return 0


def rollback(args: argparse.Namespace) -> int:
    what = recover_vm(args.data_dir, args.vm)
    print(what or f"VM {args.vm!r} has no pending pass: nothing to roll back")
    return 0


def map_replica(args: argparse.Namespace) -> int:
    """``map``: a copy at the DR site becomes the VM's replica (``storage.mapping``)."""
    from .storage.mapping import map_disks, map_from_vm

    if sum(map(bool, (args.disk, args.from_vm, args.replica_vm))) != 1:
        raise InputError(
            "give one of --from-vm OTHER (another VM's replica here), --disk NAME=PATH ... (a copy's files),"
            " --replica-vm VM --vcenter HOST ... (an existing vSphere VM)"
        )
    if args.replica_vm:
        from vsphere.cli_options import options_from_args

        from .vsphere.mapping import map_replica_vm

        options = options_from_args(args)

        async def run() -> int:
            print(await map_replica_vm(options, args.data_dir, args.vm, args.replica_vm))
            return 0

        return asyncio_run(run())
    disks: dict[str, Path] = {}
    for spec in args.disk:
        name, sep, path = spec.partition("=")
        if not sep or not path:
            raise InputError(f"--disk {spec!r}: expected NAME=PATH, NAME being the source's disk name")
        if name in disks:
            raise InputError(f"disk {name!r} is given twice")
        disks[name] = Path(path)
    if args.from_vm:
        print(map_from_vm(args.data_dir, args.vm, args.from_vm))
    else:
        print(map_disks(args.data_dir, args.vm, disks))
    return 0


def parse_seed_disk(value: str) -> tuple[str, Path]:
    """``NAME=FILE``, or ``FILE`` (the name is the file's base name without extension and ``-flat``)."""
    name, sep, path = value.partition("=")
    if not (sep and "/" not in name):
        p = Path(value)
        stem = p.name.split(".", 1)[0]
        name, path = stem.removesuffix("-flat"), value
    if not valid_name(name) or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE with a valid disk name, got {value!r}")
    return name, Path(path)


def parse_size(value: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20}
    v = value.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        return int(v[:-1]) * units[v[-1]] if v[-1:] in units else int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 64K or 1M, got {value!r}") from None


def seed(args: argparse.Namespace) -> int:
    from .storage.seed import seed_vm

    disks: dict[str, Path] = {}
    for name, path in args.disk:
        if name in disks:
            raise InputError(f"disk {name!r} is given twice")
        disks[name] = path
    report = seed_vm(
        args.data_dir, args.vm, disks, block_size=args.block_size, replace=args.replace, check=not args.no_check
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return 0
    for d in report.disks:
        print(
            f"{d.name}: {d.size} bytes from {d.seed} ({d.format}): {d.bytes_read} bytes read,"
            f" {d.bytes_written} written, {d.zero_blocks} zero blocks left as holes"
        )
    print(
        f"VM {args.vm!r} seeded{' (replacing its replica)' if report.replaced else ''}: restore point"
        f" {report.point}, in {report.seconds:.1f} s; the first pass sends only what changed since the seed"
    )
    return 0


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vzrep-target", description="vzrep target agent (DR site)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve", help="accept replication passes over SSH")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--listen", type=parse_listen, required=True, metavar="HOST:PORT")
    p.add_argument("--host-key", type=Path, required=True)
    p.add_argument("--authorized-keys", type=Path, required=True)
    p.add_argument(
        "--ready-file", type=Path, help="write the bound port here once listening (for scripts and tests)"
    )
    p.add_argument(
        "--restore-points",
        type=int,
        default=DEFAULT_RETENTION,
        metavar="N",
        help=f"restore points kept per replica ({DEFAULT_RETENTION}; 1 keeps only the live replica)",
    )
    p.add_argument(
        "--map",
        action="append",
        default=[],
        type=parse_map,
        metavar="VM/DISK=PATH",
        help="write that disk of that VM into an existing file, in place (failback onto the original"
        " disks, or mapping onto a copy): it is hashed where it is and only differences are sent",
    )
    p.add_argument(
        "--resume-window",
        type=float,
        default=DEFAULT_WINDOW,
        metavar="SECONDS",
        help=f"how long a pass whose connection was lost waits for its source to resume it before it is"
        f" rolled back (default {DEFAULT_WINDOW:.0f}; 0: rolled back at once)",
    )
    p.add_argument(
        "--once", action="store_true", help="exit after the first pass that commits (receiving a failback)"
    )
    p.add_argument(
        "--metrics-listen",
        type=parse_listen,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (off by default)",
    )
    p.add_argument("--metrics-ready-file", type=Path, help=argparse.SUPPRESS)
    add_serve_arguments(p)
    p.set_defaults(func=lambda a: asyncio_run(serve(a)))
    p = sub.add_parser("rollback", help="roll back an interrupted pass of a VM (safe to repeat)")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--vm", required=True)
    p.set_defaults(func=rollback)
    p = sub.add_parser("status", help="show replicas, last passes and pending rollbacks")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--vm")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=status)
    p = sub.add_parser("map", help="make a copy already at the DR site a VM's replica (replica mapping)")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--vm", required=True, help="the VM (as the source and its job name it)")
    p.add_argument("--from-vm", metavar="OTHER", help="another VM's replica on this target becomes this VM's")
    p.add_argument(
        "--disk", action="append", default=[], metavar="NAME=PATH",
        help="a raw image or monolithicFlat VMDK made by another tool (moved in, same filesystem)",
    )  # fmt: skip
    p.add_argument(
        "--replica-vm", metavar="VM", help="an existing vSphere VM (name or moid) becomes the replica"
    )
    add_connection_arguments(p.add_argument_group("vSphere (with --replica-vm)"), what="vCenter or ESXi host")
    p.set_defaults(func=map_replica)
    p = sub.add_parser(
        "seed", help="restore backups already at the DR site (any disk image format) as a VM's replica"
    )
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--vm", required=True)
    p.add_argument(
        "--disk",
        action="append",
        required=True,
        type=parse_seed_disk,
        metavar="NAME=FILE",
        help="a seed image: raw, VMDK (any type, snapshot chains), qcow2, VHDX, OVA or OVA/MEMBER; repeatable",
    )
    p.add_argument(
        "--block-size", type=parse_size, default=64 << 10, help="the passes' block size (default 64K)"
    )
    p.add_argument("--replace", action="store_true", help="replace an existing replica and its restore points")
    p.add_argument("--no-check", action="store_true", help="skip `qemu-img check` of the seeds")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=seed)
    add_point_commands(sub)
    add_verify_command(sub)
    words = sys.argv[1:] if argv is None else argv
    if not words or "failback" in words or "-h" in words or "--help" in words:
        from failback.send import add_failback_command  # the source engine's modules: only when asked

        add_failback_command(sub)
    add_keygen(sub)
    if not words or {"pair", "unpair", "pair-status", "-h", "--help"} & set(words):
        from pairing.cli import add_target_commands  # asyncssh, through the keys: only when asked

        add_target_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_main(
        "vzrep-target", build_parser(argv), argv, "interrupted passes are rolled back at the next start"
    )


if __name__ == "__main__":
    sys.exit(main())
