"""``vzrep-source points`` and ``vzrep-source test-failover``: a VM's restore points and failover state
as its target holds them, and a test failover of one point and its end (``control``), from the source.

The target is a job's (``--job FILE``: its ``[target]``, keys and pins) or given as ``pass`` takes it.
Exit codes are those of :class:`vzcommon.errors.ExitCode`; with ``--json`` a failure is also a JSON
object on stdout (``ok: false``, ``error``, ``exit_code``), as ``pass --json`` prints one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vzcommon.climain import asyncio_run
from vzcommon.errors import InputError, VzrepError

if TYPE_CHECKING:
    from protocol.messages import ReplicaState

    from .tunnel import TargetSpec


def target_of(args: argparse.Namespace) -> TargetSpec:
    """The job's target (the VM must be one of its VMs), or the one on the command line."""
    from .cli import parse_target
    from .disks import check_name
    from .tunnel import TargetSpec

    check_name("VM", args.vm)
    direct = (args.target, args.identity, args.known_hosts)
    if args.job is not None:
        if any(direct):
            raise InputError("give --job FILE, or --target, --identity and --known-hosts; not both")
        from .jobs.model import load_job

        job = load_job(args.job)
        if args.vm not in {vm.name for vm in job.vms}:
            raise InputError(f"the job {args.job} has no VM {args.vm!r}")
        t = job.target.resolve()  # a paired target: read from the pairing record now
        return TargetSpec(t.host, t.port, t.identity, t.known_hosts, user=t.user)
    if not all(direct):
        raise InputError(
            "give --job FILE, or all of --target HOST:PORT, --identity FILE and --known-hosts FILE"
        )
    try:
        host, port = parse_target(args.target)
    except argparse.ArgumentTypeError as exc:
        raise InputError(f"--target: {exc}") from None
    return TargetSpec(host, port, args.identity, args.known_hosts, user=args.user)


def _run(args: argparse.Namespace, action: str, point: str = "") -> int:
    try:
        from . import control

        req = control.request(action, point)
        spec = target_of(args)
        answers: list[ReplicaState] = []

        async def go() -> int:
            answers.append(await control.ask(spec, args.vm, req))
            return 0

        asyncio_run(go())
        (state,) = answers
    except VzrepError as exc:
        if args.json:
            error = {"vm": args.vm, "ok": False, "error": str(exc), "exit_code": int(exc.exit_code)}
            print(json.dumps(error, indent=2), flush=True)
        raise
    if args.json:
        print(json.dumps(control.as_json(args.vm, spec.label, state), indent=2))
    else:
        print(control.as_text(args.vm, spec.label, state))
    return 0


def _points(args: argparse.Namespace) -> int:
    return _run(args, "points")


def _test_failover(args: argparse.Namespace) -> int:
    if args.end and args.point:
        raise InputError("--point goes with starting a test failover, not with --end")
    return _run(args, "end-test" if args.end else "test-failover", args.point or "")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--job", type=Path, metavar="FILE", help="the job whose target holds the replica")
    p.add_argument("--vm", required=True, help="the VM (as the job or `pass --vm` names it)")
    p.add_argument("--target", metavar="HOST:PORT", help="without --job: the target, as pass takes it")
    p.add_argument("--identity", type=Path, help="without --job: our SSH private key")
    p.add_argument("--known-hosts", type=Path, help="without --job: the file pinning the target's host key")
    p.add_argument("--user", default="vzrep", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true")


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "points", help="a VM's restore points and failover state, as its target holds them (changes nothing)"
    )
    _common(p)
    p.set_defaults(func=_points)
    p = sub.add_parser(
        "test-failover",
        help="on the target: a test failover of a restore point (replication goes on), or its end (--end)",
    )
    _common(p)
    p.add_argument(
        "--point", metavar="ID", help="the restore point (an id from `points`; default: the newest)"
    )
    p.add_argument(
        "--end", action="store_true", help="end the VM's test failover (a real one stays the DR site's)"
    )
    p.set_defaults(func=_test_failover)
