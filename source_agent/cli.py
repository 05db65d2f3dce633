"""``vzrep-source``: run a replication pass, make keys.

Exit codes are those of :class:`vzcommon.errors.ExitCode` (README, "Exit codes").

A pass of local disks opens them and starts hashing the first one (``native.ahead``) before it
loads asyncio, asyncssh and the session: that takes ~0.15 s of one core, and the other core hashes
meanwhile. So this module imports only what parsing and opening disks need; the rest is imported
where it is used.
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol.framing import MAX_BLOCK_SIZE, MIN_BLOCK_SIZE
from vzcommon.climain import asyncio_run, run_main
from vzcommon.errors import InputError, IntegrityError, StorageError, VzrepError
from vzcommon.keycli import add_keygen

from .disks import DiskReader, check_name, open_disk, parse_disk_spec
from .mapcache import MapCache, target_label
from .native.ahead import HashAhead
from .pipeline import DEFAULT_BLOCK_SIZE, start_ahead

if TYPE_CHECKING:
    from .planning import AbmSettings
    from .session import DiskJob, PassOptions, PassReport
    from .tunnel import TargetSpec


def parse_target(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def parse_block_size(value: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20}
    v = value.strip().lower().removesuffix("ib").removesuffix("b")
    mult = units.get(v[-1:], 1)
    n = int(v[:-1] if v[-1:] in units else v) * mult
    if not MIN_BLOCK_SIZE <= n <= MAX_BLOCK_SIZE or n & (n - 1):
        raise argparse.ArgumentTypeError("block size must be a power of two from 64K to 4M")
    return n


def _ds_root(value: str) -> tuple[str, str]:
    name, sep, path = value.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError("expected DATASTORE=DIR")
    return name, path


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "vzrep"


def disk_specs(specs: list[str]) -> list[tuple[str, Path]]:
    """Each ``--disk [NAME=]PATH`` as (name, path), the names checked; nothing is opened."""
    disks: list[tuple[str, Path]] = []
    for spec in specs:
        name, path = parse_disk_spec(spec)
        check_name("disk", name, f" (from --disk {spec[:100]!r}; give NAME=PATH)")
        if any(n == name for n, _ in disks):
            raise InputError(f"two disks are named {name!r}: give one of them NAME=PATH")
        disks.append((name, path))
    return disks


def open_readers(specs: list[str]) -> list[DiskReader]:
    readers: list[DiskReader] = []
    try:
        for name, path in disk_specs(specs):
            readers.append(open_disk(path, name))
    except BaseException:
        for r in readers:
            r.close()
        raise
    return readers


def add_filters(jobs: list[DiskJob], work_dir: Path, settings: AbmSettings) -> list[DiskJob]:
    """Put ABM in front of each disk's planner (CBT or differential) and clean its filter files."""
    from .planning import cleanup, with_abm

    for job in jobs:
        inner_cleanup = job.cleanup
        job.planner = with_abm(job.reader, work_dir, settings, job.planner)

        def done(name: str = job.reader.name, inner: Callable[[], None] | None = inner_cleanup) -> None:
            cleanup(work_dir, name)
            if inner:
                inner()

        job.cleanup = done
    return jobs


def make_progress(enabled: bool) -> tuple[Callable[[str, int, int], None] | None, Any]:
    if not enabled:
        return None, None
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    prog = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=True,
    )
    tasks: dict[str, Any] = {}

    def update(disk: str, done: int, total: int) -> None:
        if disk not in tasks:
            tasks[disk] = prog.add_task(disk, total=total)
        prog.update(tasks[disk], completed=done)

    return update, prog


async def _run(
    target: TargetSpec, args: argparse.Namespace, jobs: list[DiskJob], opts: PassOptions
) -> PassReport:
    from .planning import AbmSettings
    from .session import run_pass

    work = opts.state_dir / "work" / args.vm
    add_filters(jobs, work, AbmSettings(args.abm, not args.keep_swap, args.skip_pagefile))
    progress, prog = make_progress(sys.stderr.isatty() and not args.json and not args.no_progress)
    if prog is None:
        return await run_pass(target, args.vm, jobs, opts, progress)
    with prog:
        return await run_pass(target, args.vm, jobs, opts, progress)


def _pass_command(args: argparse.Namespace) -> int:
    """``pass``; with ``--json`` a failure is also a JSON object on stdout (the error line stays on stderr)."""
    try:
        return _run_pass_command(args)
    except VzrepError as exc:
        if args.json:
            import json

            error = {"vm": args.vm, "ok": False, "error": str(exc), "exit_code": int(exc.exit_code)}
            print(json.dumps(error, indent=2), flush=True)
        raise


def _verify_command(args: argparse.Namespace) -> int:
    """``verify [--repair]``: a pass in verify mode (nothing written); with ``--repair`` and differences,
    a repair pass (the target hashes its bytes, the differing blocks travel, a restore point is made)
    and a second verify, which must find nothing. Differences left: exit 11 (after the report)."""
    args.mode, args.abm = "verify", False  # every block: ABM's idea of free blocks is not checked
    found = _pass_command(args)
    if found and args.repair:
        args.mode = "repair"
        _pass_command(args)
        args.mode = "verify"
        found = _pass_command(args)
    if found:
        raise IntegrityError(
            f"the replica of VM {args.vm!r} differs from the source in {found} block(s) (the ranges are in"
            " the report above)" + ("; run again with --repair to send them" if not args.repair else "")
        )
    return 0


def _run_pass_command(args: argparse.Namespace) -> int:
    """Open local disks and start hashing the first (module docstring), then run the pass."""
    # First of all: the names become paths (in the state dir, on the target); nothing is opened,
    # created or connected to before they are checked.
    check_name("VM", args.vm)
    disk_specs(args.disk)
    # a vSphere VM: --vcenter, or the host line of the credentials file (or a session token's host)
    vcenter = any(getattr(args, a, None) for a in ("vcenter", "credentials", "session_token_file"))
    if bool(args.disk) == vcenter:
        raise InputError(
            "give either --disk PATH (local disks) or --vcenter HOST / --credentials FILE with a host line"
            " (a vSphere VM), not both or neither"
        )
    if vcenter:
        return asyncio_run(_pass(args, []))
    readers = open_readers(args.disk)
    ahead: HashAhead | None = None
    try:
        ahead = early_ahead(readers[0], args)
        return asyncio_run(_pass(args, readers, ahead))
    finally:
        if ahead is not None:
            ahead.close()
        for r in readers:
            r.close()


def early_ahead(reader: DiskReader, args: argparse.Namespace) -> HashAhead | None:
    """Hash-ahead for the first disk, when this is likely an incremental pass of a disk read in full.

    Likely incremental: the source cached this disk's map at its last pass to this target. One
    thread works until the session streams, so the imports keep their core (bench VM, five alternated
    pairs: median 0.77 s against 0.80 s with two). If the pass turns out otherwise (the target has no
    map, or ABM/CBT filter the disk), the session stops it.
    """
    if args.abm:
        return None
    cache = MapCache(args.state_dir, target_label(*args.target), args.vm)
    if not cache.path(reader.name).exists():
        return None
    return start_ahead(reader, args.block_size, active=1)


async def _pass(args: argparse.Namespace, readers: list[DiskReader], ahead: HashAhead | None = None) -> int:
    from .report import as_json, as_text
    from .session import DiskJob, PassOptions
    from .tunnel import TargetSpec

    gc.freeze()  # as run_main does after start-up: asyncssh and the session just loaded
    target = TargetSpec(args.target[0], args.target[1], args.identity, args.known_hosts, user=args.user)
    opts = PassOptions(
        block_size=args.block_size,
        compress=args.compress,
        state_dir=args.state_dir,
        mode=getattr(args, "mode", ""),
        limit=tuple(args.limit),
        shared_limit=args.shared_limit,
        resume_window=args.resume_window,
    )
    events: list[str] = []
    if not readers:
        report = await _vsphere_pass(args, target, opts, events)
    else:
        jobs = [DiskJob(reader=r) for r in readers]
        jobs[0].ahead = ahead  # the session closes it when the disk is done; so does the caller
        report = await _run(target, args, jobs, opts)
    print(as_json(report, events) if args.json else as_text(report, events))
    if args.planned_failover:
        return await _planned_failover(args, target, readers, opts)
    if opts.mode == "verify":  # the caller (_verify_command) decides what differences mean
        return sum(d.blocks_changed + d.zero_blocks_sent for d in report.disks)
    return 0


async def _planned_failover(
    args: argparse.Namespace, target: TargetSpec, readers: list[DiskReader], opts: PassOptions
) -> int:
    """The rest of a planned failover, after the pass that ran while the VM was up: stop the VM, send
    what changed since (a short pass), and have the target fail the replica over to that point."""
    import asyncio  # loaded by now (the CLI imports it lazily, for start-up time)
    from dataclasses import replace

    from .report import as_json, as_text
    from .session import DiskJob

    events: list[str] = []
    if readers:
        await asyncio.to_thread(_stop_vm, args)
        final = await _run(target, args, [DiskJob(reader=r) for r in readers], replace(opts, failover=True))
    else:  # a vSphere VM: shut down through vSphere, then the final pass from a snapshot, by CBT
        if args.stop_command:
            await asyncio.to_thread(_stop_vm, args)
        else:
            from .vsphere.cli import shut_down

            events.append(await shut_down(args))
        final = await _vsphere_pass(args, target, replace(opts, failover=True), events)
    print(as_json(final, events) if args.json else as_text(final, events))
    if not final.failed_over:
        raise StorageError(final.failover_note or "the target did not fail the replica over")
    if not args.json:
        print(
            f"VM {args.vm!r} is failed over on the target to restore point {final.generation}"
            + (": the replica VM runs there" if not readers else ": start it there from its failover deltas")
            + "; this source's passes are refused until failback"
        )
    return 0


def _stop_vm(args: argparse.Namespace) -> None:
    """The VM must not change between the final pass and the failover: stopped by command or by hand."""
    if args.stop_command:
        res = subprocess.run(args.stop_command, shell=True, check=False)  # the user's own command line
        if res.returncode != 0:
            raise InputError(
                f"--stop-command exited {res.returncode}: the VM may still be running; nothing was failed over"
            )
        return
    if not sys.stdin.isatty():
        raise InputError(
            "a planned failover needs --stop-command CMD, or a terminal to confirm the VM is stopped"
        )
    input(f"Stop VM {args.vm!r} now (its disks must not change), then press Enter: ")


async def _vsphere_pass(
    args: argparse.Namespace, target: TargetSpec, opts: PassOptions, events: list[str]
) -> PassReport:
    """Snapshot, HotAdd and CBT through the vSphere area, then the same pass as for local disks."""
    from source_agent.vsphere.cli import open_client
    from source_agent.vsphere.glue import disk_jobs
    from source_agent.vsphere.job import vsphere_job
    from vsphere.devices import DatastoreFileLocator
    from vsphere.hardware import HardwareRecord
    from vzcommon.durable import atomic_write

    record_path = opts.state_dir / "vsphere" / args.vm / "hardware.json"
    recorded = HardwareRecord.from_json(record_path.read_text()) if record_path.exists() else None
    (opts.state_dir / "work" / args.vm).mkdir(parents=True, exist_ok=True)
    async with (
        await open_client(args) as client,
        vsphere_job(
            client,
            vm=args.vm,
            recorded=recorded,
            work_dir=opts.state_dir / "work" / args.vm,
            appliance_vm=args.appliance_vm,
            uuid_path=args.appliance_uuid_file,
            quiesce=args.quiesce,
            locator=DatastoreFileLocator(dict(args.datastore_root)) if args.datastore_root else None,
        ) as job,
    ):
        try:
            report = await _run(target, args, disk_jobs(job), opts)
        finally:
            events.extend(job.events)
        if report.ok:  # the hardware as replicated (grown disks included) becomes the job's record
            record_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(record_path, job.hardware.to_json().encode())
    return report


def _vsphere_area(sub: Any, pass_parser: argparse.ArgumentParser) -> None:
    from .vsphere import cli

    cli.add_arguments(pass_parser)
    cli.add_source_commands(sub)


def _pairing_area(sub: Any, pass_parser: argparse.ArgumentParser) -> None:
    from pairing.cli import add_source_commands

    add_source_commands(sub)


def _failback_area(sub: Any, pass_parser: argparse.ArgumentParser) -> None:
    from failback.receive import add_receive_failback

    add_receive_failback(sub)


def _jobs_area(sub: Any, pass_parser: argparse.ArgumentParser) -> None:
    from .jobs.cli import add_commands

    add_commands(sub)


def _control_area(sub: Any, pass_parser: argparse.ArgumentParser) -> None:
    from .control_cli import add_commands

    add_commands(sub)


def _daemon_area(sub: Any, pass_parser: argparse.ArgumentParser) -> None:
    from .daemon.cli import add_commands

    add_commands(sub)


#: Commands and options that live in the vSphere, pairing, failback, jobs, daemon and control areas; their modules (the vSphere client, SPAKE2)
#: are imported only when the command line asks for them, so a plain pass starts faster.
_AREAS: tuple[tuple[tuple[str, ...], Callable[[Any, argparse.ArgumentParser], None]], ...] = (
    (
        ("--vcenter", "--credentials", "--session-token-file", "vsphere-check", "accept-hardware"),
        _vsphere_area,
    ),
    (("pair", "unpair", "pair-status"), _pairing_area),
    (("receive-failback",), _failback_area),
    (("job",), _jobs_area),
    (("run", "history"), _daemon_area),
    (("points", "test-failover"), _control_area),
)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vzrep-source", description="vzrep source agent")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pass", help="replicate a VM's disks to the target once")
    _pass_arguments(p)
    p.add_argument(
        "--planned-failover",
        action="store_true",
        help="a pass while the VM runs, then stop it (--stop-command, by hand, or for a vSphere VM a"
        " guest shutdown through vSphere), a final short pass, and the target fails the replica over to it",
    )
    p.add_argument(
        "--stop-command", metavar="CMD", help="with --planned-failover: how to stop the VM (a shell command)"
    )
    p.set_defaults(func=_pass_command)
    v = sub.add_parser(
        "verify", help="compare every block of the VM's disks with the replica's bytes; writes nothing"
    )
    _pass_arguments(v)
    v.add_argument(
        "--repair",
        action="store_true",
        help="send the blocks that differ as a pass (a restore point), then verify again",
    )
    v.set_defaults(func=_verify_command, planned_failover=False, stop_command=None)
    add_keygen(sub)
    words = sys.argv[1:] if argv is None else argv
    everything = not words or "-h" in words or "--help" in words or not {"pass", "verify"} & set(words)
    for triggers, add_area in _AREAS:
        if everything or any(t in words for t in triggers):
            add_area(sub, p)
            if add_area is _vsphere_area:
                from .vsphere import cli as vsphere_cli

                vsphere_cli.add_arguments(v)
    return parser


def limit_rule(value: str) -> str:
    from .bandwidth import parse_rule

    try:
        parse_rule(value)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _pass_arguments(p: argparse.ArgumentParser) -> None:
    """The options ``pass`` and ``verify`` share: the target, the VM and its disks, how to read them."""
    p.add_argument("--target", type=parse_target, required=True, metavar="HOST:PORT")
    p.add_argument("--identity", type=Path, required=True, help="our SSH private key")
    p.add_argument(
        "--known-hosts", type=Path, required=True, help="known_hosts file pinning the target's host key"
    )
    p.add_argument("--user", default="vzrep", help=argparse.SUPPRESS)
    p.add_argument("--vm", required=True, help="VM name (the replica's folder on the target)")
    p.add_argument(
        "--disk",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="raw image, block device or flat VMDK; repeat per disk",
    )
    p.add_argument(
        "--block-size", type=parse_block_size, default=DEFAULT_BLOCK_SIZE, help="64K..4M (default 64K)"
    )
    p.add_argument("--compress", choices=["auto", "zstd", "none"], default="auto")
    p.add_argument(
        "--limit",
        action="append",
        default=[],
        type=limit_rule,
        metavar="RATE[@DAYS/HH:MM-HH:MM]",
        help="bandwidth limit, e.g. 20MB/s, 100Mbit, or 20MB/s@mon-fri/08:00-18:00 (repeatable: the first"
        " rule whose window holds applies; none: unlimited)",
    )
    p.add_argument(
        "--shared-limit",
        type=Path,
        metavar="PATH",
        help="the appliance's bandwidth bucket, shared with the other passes (vzrep-source run gives it"
        " to the passes it starts); each frame waits for it and for --limit",
    )
    p.add_argument(
        "--resume-window",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="when the link is lost, keep reconnecting this long and go on where the pass stopped"
        " (default 120; 0: fail at once, exit 4)",
    )
    p.add_argument(
        "--abm", action="store_true", help="Active Block Mapping: read only blocks the guest filesystems use"
    )
    p.add_argument("--keep-swap", action="store_true", help="with --abm: replicate swap space too")
    p.add_argument(
        "--skip-pagefile", action="store_true", help="with --abm: skip NTFS pagefile.sys/hiberfil.sys"
    )
    p.add_argument("--state-dir", type=Path, default=default_state_dir(), help="where cached block maps live")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    # Read snapshot disks from a locally mounted datastore instead of HotAdded devices (tests, vcsim).
    p.add_argument("--datastore-root", action="append", default=[], type=_ds_root, help=argparse.SUPPRESS)
    p.add_argument("--no-progress", action="store_true")


def main(argv: list[str] | None = None) -> int:
    # A disk read through mmap that is truncated under us ends the process with SIGBUS
    # (source_agent/disks/mapping.py): say so on stderr, with where it happened.
    faulthandler.enable(all_threads=False)
    return run_main("vzrep-source", build_parser(argv), argv, "the target rolls the pass back")


if __name__ == "__main__":
    sys.exit(main())
