"""``vzrep-source``: run a replication pass, make keys.

Exit codes are those of :class:`vzcommon.errors.ExitCode` (README, "Exit codes").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protocol.framing import MAX_BLOCK_SIZE, MIN_BLOCK_SIZE
from vzcommon.errors import ExitCode, InputError, VzrepError
from vzcommon.keycli import add_keygen
from vzcommon.log import setup_logging

from .disks import DiskReader, open_disk, parse_disk_spec
from .report import as_json, as_text
from .session import DEFAULT_BLOCK_SIZE, DiskJob, PassOptions, run_pass
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


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "vzrep"


def open_jobs(specs: list[str]) -> list[DiskJob]:
    readers: list[DiskReader] = []
    try:
        for spec in specs:
            name, path = parse_disk_spec(spec)
            if any(r.name == name for r in readers):
                raise InputError(f"two disks are named {name!r}: give one of them NAME=PATH")
            readers.append(open_disk(path, name))
    except BaseException:
        for r in readers:
            r.close()
        raise
    return [DiskJob(reader=r) for r in readers]


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


async def _pass(args: argparse.Namespace) -> int:
    if not args.disk and not getattr(args, "vcenter", None):
        raise InputError("give at least one --disk PATH (or --vcenter for a vSphere VM)")
    jobs = await asyncio.to_thread(open_jobs, args.disk)
    target = TargetSpec(args.target[0], args.target[1], args.identity, args.known_hosts, user=args.user)
    opts = PassOptions(block_size=args.block_size, compress=args.compress, state_dir=args.state_dir)
    progress, prog = make_progress(sys.stderr.isatty() and not args.json and not args.no_progress)
    try:
        if prog is not None:
            with prog:
                report = await run_pass(target, args.vm, jobs, opts, progress)
        else:
            report = await run_pass(target, args.vm, jobs, opts, progress)
    finally:
        for job in jobs:
            job.reader.close()
    print(as_json(report) if args.json else as_text(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vzrep-source", description="vzrep source agent")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pass", help="replicate a VM's disks to the target once")
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
    p.add_argument("--state-dir", type=Path, default=default_state_dir(), help="where cached block maps live")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=lambda a: asyncio_run(_pass(a)))
    add_keygen(sub)
    for hook in ("source_agent.vsphere.cli", "appliance.pairing_cli"):
        _extend(sub, p, hook)
    return parser


def _extend(sub: Any, pass_parser: argparse.ArgumentParser, module: str) -> None:
    """Let the vSphere and pairing areas add their options and commands, when installed."""
    try:
        mod = __import__(module, fromlist=["*"])
    except ImportError:
        return
    if hasattr(mod, "add_arguments"):
        mod.add_arguments(pass_parser)
    if hasattr(mod, "add_source_commands"):
        mod.add_source_commands(sub)


def asyncio_run(coro: Any) -> int:
    try:
        import uvloop
    except ImportError:
        return int(asyncio.run(coro))
    return int(uvloop.run(coro))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        return int(args.func(args))
    except VzrepError as exc:
        print(f"vzrep-source: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("vzrep-source: interrupted; the target rolls the pass back", file=sys.stderr)
        return int(ExitCode.CONNECTION)


if __name__ == "__main__":
    sys.exit(main())
