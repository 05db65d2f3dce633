"""``vzrep-source run --jobs DIR`` and ``vzrep-source history``: the daemon and what it recorded."""

from __future__ import annotations

import argparse
import fcntl
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vzcommon.climain import asyncio_run
from vzcommon.errors import BusyError

from .history import History, PassRecord, VmRow

MAX_PARALLEL = 64


#: the scheduler's history on a source appliance (vzrep-source.service --db)
APPLIANCE_DB = Path("/var/lib/vzrep/source/history.sqlite")


def _default_db() -> Path:
    """The appliance's history where there is one (so ``sudo vzrep-source history`` needs no --db)."""
    from ..cli import default_state_dir

    try:
        APPLIANCE_DB.stat()
    except PermissionError:  # there, but only for the agent and root: History says to use sudo
        return APPLIANCE_DB
    except OSError:
        return default_state_dir() / "daemon.sqlite"
    return APPLIANCE_DB


def _run(args: argparse.Namespace) -> int:
    from .appliance import ApplianceLimit
    from .service import serve, subprocess_runner

    db: Path = args.db or _default_db()
    db.parent.mkdir(parents=True, exist_ok=True)
    lock = open(db.with_name(db.name + ".lock"), "a")  # held for the daemon's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise BusyError(
            f"another vzrep-source run uses {db}: stop it first (one daemon per history)"
        ) from None
    history = History(db)

    async def main() -> int:
        metrics = None
        if args.metrics_listen:
            from vzcommon.metrics import serve_metrics

            from .metrics import collect

            mhost, mport = args.metrics_listen
            metrics, _ = await serve_metrics(mhost, mport, lambda: collect(db))
        try:
            bucket = db.with_name(db.name + ".bandwidth")  # one per daemon, as the history is
            appliance = ApplianceLimit(bucket, args.jobs, tuple(args.limit), history, time.time)
            runner = subprocess_runner(args.state_dir, bucket)
            return await serve(
                args.jobs,
                history,
                max_parallel=args.max_parallel,
                runner=runner,
                poll=args.poll,
                appliance=appliance,
            )
        finally:
            if metrics is not None:
                metrics.close()
                await metrics.wait_closed()

    try:
        return asyncio_run(main())
    finally:
        history.close()
        lock.close()


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    if t == float("inf"):
        return "never"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def pass_line(p: PassRecord, names: dict[str, str]) -> str:
    took = f"{p.finished - p.started:7.1f}s" if p.finished is not None else "      -"
    code = "" if p.exit_code is None else str(p.exit_code)
    err = f"  {p.error}" if p.error else ""
    return (
        f"{p.id:>6}  {names.get(p.job, p.job)[:20]:<20}  {p.vm[:20]:<20}  {_when(p.started)}  {took}"
        f"  {p.status:<11}  {code:>4}  {p.wire_bytes:>12}  {p.reason}{err}"
    )


def vm_line(v: VmRow, names: dict[str, str]) -> str:
    rpo = "MISSED" if v.rpo_missed else "ok"
    err = f"  last error (exit {v.last_exit}): {v.last_error}" if v.last_error else ""
    if not v.scheduled:  # scheduler.set_jobs: the VM is in no job file now
        return f"  {names.get(v.job, v.job)}/{v.vm}: last success {_when(v.last_success)}, not scheduled (in no job now){err}"
    nxt = "a pass is running" if v.next_run is None else f"next run {_when(v.next_run)}"
    return f"  {names.get(v.job, v.job)}/{v.vm}: last success {_when(v.last_success)}, {nxt}, RPO {rpo}{err}"


def _history(args: argparse.Namespace) -> int:
    history = History(args.db or _default_db(), readonly=True)
    try:
        passes = history.passes(args.job, args.vm, args.limit)
        vms = history.vms(args.job, args.vm)
        jobs = history.jobs()
        if args.json:
            doc: dict[str, Any] = {
                "passes": [p.as_dict() for p in passes],
                "vms": [vars(v) for v in vms],
                "jobs": jobs,
                "events": history.events(args.job, args.vm),
                "time": time.time(),
            }
            print(json.dumps(doc, indent=2))
            return 0
        names = {j["id"]: j["name"] for j in jobs}
        print(
            f"{'pass':>6}  {'job':<20}  {'vm':<20}  {'started (UTC)':<19}  {'took':>8}  {'status':<11}"
            f"  {'exit':>4}  {'wire bytes':>12}  why"
        )
        for p in passes:
            print(pass_line(p, names))
        if vms:
            print("VMs:")
            for v in vms:
                print(vm_line(v, names))
        for e in history.events(args.job, args.vm, limit=20):
            if e["kind"] in ("rpo_missed", "rpo_met", "job_file_error"):
                who = f"{names.get(e['job'], e['job'])}/{e['vm']}: " if e["job"] or e["vm"] else ""
                print(f"{_when(e['time'])}  {e['kind']}  {who}{e['detail']}")
        return 0
    finally:
        history.close()


def _count(low: int, high: int, what: str) -> Any:
    def parse(value: str) -> int:
        if not value.isdigit() or not low <= int(value) <= high:
            raise argparse.ArgumentTypeError(f"expected {what} from {low} to {high}, got {value!r}")
        return int(value)

    return parse


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _seconds(value: str) -> float:
    try:
        n = float(value)
    except ValueError:
        n = 0.0
    if not 0.1 <= n <= 3600:
        raise argparse.ArgumentTypeError(f"expected seconds from 0.1 to 3600, got {value!r}")
    return n


def add_commands(sub: Any) -> None:
    from ..cli import limit_rule  # the CLI imports this module: a late import

    db_help = f"the history database (default: {APPLIANCE_DB} on an appliance, else $XDG_STATE_HOME/vzrep/daemon.sqlite)"
    p = sub.add_parser(
        "run", help="the scheduler: passes every job in DIR on its [schedule], records each in the history"
    )
    p.add_argument(
        "--jobs",
        type=Path,
        required=True,
        metavar="DIR",
        help="the job files (*.toml), and appliance.toml (the appliance's bandwidth limit)",
    )
    p.add_argument("--db", type=Path, help=db_help)
    p.add_argument(
        "--state-dir", type=Path, help="cached maps and working files for jobs without their own state_dir"
    )
    p.add_argument(
        "--max-parallel",
        type=_count(1, MAX_PARALLEL, "a number of VMs"),
        default=4,
        metavar="N",
        help="VMs passed at once on this appliance, all jobs together (default 4)",
    )
    p.add_argument(
        "--limit",
        action="append",
        default=[],
        type=limit_rule,
        metavar="RATE[@DAYS/HH:MM-HH:MM]",
        help="the appliance's bandwidth: all passes together, as pass --limit (repeatable); DIR/appliance.toml"
        " may set more (limit = [...]); the smaller wins",
    )
    p.add_argument(
        "--poll", type=_seconds, default=5.0, metavar="SECONDS", help="how often DIR is checked for changes"
    )
    p.add_argument(
        "--metrics-listen",
        type=_listen,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (off by default)",
    )
    p.set_defaults(func=_run)
    p = sub.add_parser("history", help="the passes the daemon ran, each VM's state and missed RPOs")
    p.add_argument("--db", type=Path, help=db_help)
    p.add_argument("--job", help="a job's name or id")
    p.add_argument("--vm")
    p.add_argument("--limit", type=_count(1, 10**9, "a number of passes"), help="only the newest N passes")
    p.add_argument("--json", action="store_true", help="passes (with their reports), VMs, jobs and events")
    p.set_defaults(func=_history)
