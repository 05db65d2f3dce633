"""``vzrep-source job new|check|run``: the job commands (README, "Jobs")."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vzcommon.climain import asyncio_run
from vzcommon.errors import InputError

from .model import APPLIANCE_KEYS, PAUSED, Job, JobFileError, load_job, new_job_text

if TYPE_CHECKING:
    from .runner import VmResult


def _new(args: argparse.Namespace) -> int:
    path: Path = args.file
    if path.exists() or path.is_symlink():
        raise InputError(f"{path} exists: a new job gets a new file (its id must stay unique)")
    paired = args.paired if args.paired is not None else APPLIANCE_KEYS.is_dir()  # on an appliance
    text = new_job_text(path, args.name or "", paired=paired)
    with open(path, "x") as f:
        f.write(text)
    what = "add the VMs ([[vm]] tables)" if paired else "set the target and add the VMs ([[vm]] tables)"
    print(f"wrote {path}: {what}, then `vzrep-source job check {path}`; until then it runs nothing")
    return 0


def _check(args: argparse.Namespace) -> int:
    from .check import check_job

    try:
        job = load_job(args.file)
    except JobFileError as exc:
        for p in exc.problems:
            print(f"problem: {p}")
        return int(exc.exit_code)
    res = check_job(job, offline=args.offline)
    if args.json:
        doc = {
            "ok": res.ok,
            "warnings": res.warnings,
            "problems": [m for m, _ in res.problems],
            "exit_code": res.exit_code,
        }
        print(json.dumps(doc, indent=2))
    else:
        print(
            "\n".join(
                [
                    *(f"ok: {m}" for m in res.ok),
                    *(f"warning: {m}" for m in res.warnings),
                    *(f"problem: {m}" for m, _ in res.problems),
                ]
            )
        )
    return res.exit_code


def _run(args: argparse.Namespace) -> int:
    from ..cli import default_state_dir
    from .runner import job_exit_code, result_json, result_text, summary, summary_text

    job = load_job(args.file)
    if args.vm:  # some of its VMs (``vzrep-source run`` passes each VM this way)
        missing = [v for v in args.vm if v not in {vm.name for vm in job.vms}]
        if missing:
            raise InputError(f"the job {args.file} has no VM {missing[0]!r}")
        job = replace(job, vms=tuple(vm for vm in job.vms if vm.name in args.vm))
    state_dir = args.state_dir or job.options.state_dir or default_state_dir()
    if args.shared_limit is not None:  # refused before any VM's pass starts
        from ..shared_bucket import check

        check(args.shared_limit)

    def done(res: Any) -> None:
        if not args.json:
            print(result_text(res), flush=True)

    results: list[VmResult] = []
    mode = "verify" if args.verify else ""
    asyncio_run(_async_run(job, state_dir, args.parallel, done, results, mode, args.shared_limit))
    if args.json:
        print(
            json.dumps({"vms": [result_json(r) for r in results], "summary": summary(job, results)}, indent=2)
        )
    else:
        print(summary_text(job, results))
    sys.stdout.flush()
    return int(job_exit_code(results))


async def _async_run(
    job: Job,
    state_dir: Path,
    parallel: int | None,
    done: Any,
    out: list[VmResult],
    mode: str = "",
    shared_limit: Path | None = None,
) -> int:
    from .runner import run_job

    out.extend(await run_job(job, state_dir, parallel, done, mode, shared_limit))
    return 0


def _pause(args: argparse.Namespace) -> int:
    """``job pause|resume FILE``: a marker beside the file, which the scheduler reads at its next look."""
    from vzcommon.durable import atomic_write, unlink_durable

    job = load_job(args.file)  # a file that is not a job is refused, not marked
    marker = args.file.with_suffix(PAUSED)
    if args.pause:
        atomic_write(marker, f"job {job.id} paused\n".encode(), mode=0o644)
        print(f"job {job.name or args.file.stem} paused: vzrep-source run starts none of its passes until resumed")
    else:
        unlink_durable(marker)
        print(f"job {job.name or args.file.stem} resumed: its passes run on its schedule again")
    return 0


def _positive(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 64:
        raise argparse.ArgumentTypeError(f"expected a number of VMs from 1 to 64, got {value!r}")
    return int(value)


def add_commands(sub: Any) -> None:
    job = sub.add_parser("job", help="replication jobs: many VMs, one target, one set of options")
    jsub = job.add_subparsers(dest="job_cmd", required=True)
    p = jsub.add_parser("new", help="write a new job file with a fresh job id")
    p.add_argument("file", type=Path)
    p.add_argument("--name", help="the job's name (default: the file's name)")
    p.add_argument(
        "--paired",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"target the appliance's paired target (default: yes where {APPLIANCE_KEYS} exists, on an appliance)",
    )
    p.set_defaults(func=_new)
    p = jsub.add_parser(
        "check", help="check a job file and what it names (disks, keys, target); changes nothing"
    )
    p.add_argument("file", type=Path)
    p.add_argument("--offline", action="store_true", help="do not connect to the target")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_check)
    p = jsub.add_parser("run", help="one pass of every VM of the job")
    p.add_argument("file", type=Path)
    p.add_argument(
        "--parallel", type=_positive, metavar="N", help="VMs at once (default: the job's parallel)"
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        help="cached maps and working files (default: the job's, or $XDG_STATE_HOME/vzrep)",
    )
    p.add_argument("--vm", action="append", default=[], metavar="NAME", help="only this VM (repeat for more)")
    p.add_argument(
        "--verify", action="store_true", help="verify each VM instead (vzrep-source verify): nothing is written"
    )
    p.add_argument("--json", action="store_true", help="the reports and the summary as one JSON document")
    p.add_argument(
        "--shared-limit",
        type=Path,
        metavar="PATH",
        help="the appliance's bandwidth bucket (as pass --shared-limit; vzrep-source run gives it)",
    )
    p.set_defaults(func=_run)
    for name, what in (("pause", "stop scheduling the job's passes (vzrep-source run)"), ("resume", "schedule them again")):
        p = jsub.add_parser(name, help=what)
        p.add_argument("file", type=Path)
        p.set_defaults(func=_pause, pause=name == "pause")
