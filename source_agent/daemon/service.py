"""``vzrep-source run --jobs DIR``: the loop around :class:`.scheduler.Scheduler`.

Each pass runs as its own process, ``vzrep-source job run FILE --vm NAME --json`` -- the pass a user
runs by hand, with the job's id, rule and retention -- and its JSON is the report kept in the
history. A process per pass because a pass can end its process: a mapped disk truncated under it
raises SIGBUS (README), and one VM's disk must not take the other passes and the daemon down with it.
Each child gets ``PR_SET_PDEATHSIG``: if the daemon is killed, its passes die with it (the target
rolls them back) instead of running on unrecorded beside the passes of the next daemon.

The appliance's bandwidth limit (``run --limit``, ``DIR/appliance.toml``: :mod:`.appliance`) is a
bucket file every pass is given (``job run --shared-limit PATH``): all passes together keep to it.

Signals: SIGHUP re-reads the job files and ``appliance.toml`` (they are also re-read when a file in
DIR changes, checked every ``poll`` seconds); SIGTERM or SIGINT stop the daemon: running passes are stopped (SIGTERM, then
SIGKILL after 10 s), recorded as interrupted, and run first at the next start.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

from vzcommon.errors import ExitCode, InputError, VzrepError
from vzcommon.libc import function
from vzcommon.log import get_logger

from ..jobs.model import PAUSED, Job, JobFileError, VmConf, load_job
from .appliance import FILE_NAME, ApplianceLimit
from .history import History
from .scheduler import Outcome, Scheduler, Start

log = get_logger("vzrep.source.daemon")

PassRunner = Callable[..., Awaitable[Outcome]]  # (job, vm[, verify=True])
STOP_GRACE = 10.0
_PR_SET_PDEATHSIG = 1
_prctl = function("prctl", ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)


def _die_with_parent(parent: int) -> Callable[[], None]:
    def preexec() -> None:
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the daemon died before prctl took effect
            os._exit(int(ExitCode.INTERRUPTED))

    return preexec


def pass_command(
    job: Job, vm: VmConf, state_dir: Path | None, verify: bool = False, shared_limit: Path | None = None
) -> list[str]:
    argv = [sys.executable, "-m", "source_agent.cli", "job", "run", str(job.path), "--vm", vm.name, "--json"]
    if verify:
        argv.append("--verify")
    if state_dir is not None and job.options.state_dir is None:
        argv += ["--state-dir", str(state_dir)]
    if shared_limit is not None:
        argv += ["--shared-limit", str(shared_limit)]
    return argv


def subprocess_runner(state_dir: Path | None, shared_limit: Path | None = None) -> PassRunner:
    """Passes as ``vzrep-source job run FILE --vm NAME --json`` processes (module docstring), each
    given the appliance's bandwidth bucket."""

    async def run(job: Job, vm: VmConf, verify: bool = False) -> Outcome:
        proc = await asyncio.create_subprocess_exec(
            *pass_command(job, vm, state_dir, verify, shared_limit),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=_die_with_parent(os.getpid()),
        )
        try:
            out, err = await proc.communicate()
        except asyncio.CancelledError:
            await asyncio.shield(_stop(proc))
            raise
        return outcome_of(proc.returncode or 0, out, err)

    return run


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), STOP_GRACE)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def outcome_of(returncode: int, out: bytes, err: bytes) -> Outcome:
    """The pass's outcome from ``job run --json``'s document, or from its exit and stderr without one."""
    try:
        doc = json.loads(out)
        vm = doc["vms"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        code = 128 - returncode if returncode < 0 else (returncode or int(ExitCode.INTERNAL))
        lines = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
        why = lines[-1][:2000] if lines else f"the pass process exited {returncode} and printed no report"
        if returncode < 0:
            why = f"the pass process was killed by signal {-returncode}: {why}"
        return Outcome("failed", code, why)
    status = {"replicated": "ok", "verified": "ok", "skipped": "skipped"}.get(vm.get("status"), "failed")
    report = vm.get("report")
    wire = int(report.get("total", {}).get("wire_bytes_sent", 0)) if isinstance(report, dict) else 0
    return Outcome(status, int(vm.get("exit_code", 0)), str(vm.get("reason", "")), report, wire)


class JobsDir:
    """The job files in DIR (``*.toml``), read again when one changes; a bad file is reported and its
    last good version (if any) keeps running."""

    def __init__(self, path: Path, history: History, clock: Callable[[], float]) -> None:
        self.path, self.history, self.clock = path, history, clock
        self.seen: dict[Path, tuple[int, int]] = {}
        self.good: dict[Path, Job] = {}
        self.errors: dict[Path, str] = {}

    def changed(self) -> bool:
        return self._stat() != self.seen

    def _stat(self) -> dict[Path, tuple[int, int]]:
        out = {}
        try:
            files = sorted(p for p in self.path.glob("*.toml") if p.name != FILE_NAME)
        except OSError:
            return {}
        for p in files:
            try:
                st = p.stat()
            except OSError:
                continue
            paused = p.with_suffix(PAUSED).exists()  # pausing or resuming a job is a change too
            out[p] = (st.st_mtime_ns, st.st_size + (1 << 62 if paused else 0))
        return out

    def load(self) -> list[Job]:
        self.seen = self._stat()
        if not self.path.is_dir():
            log.warning(
                "no_jobs_dir",
                dir=str(self.path),
                hint="create it and put job files (vzrep-source job new) in it",
            )
        jobs: dict[str, Job] = {}
        for p in self.seen:
            try:
                job = load_job(p)
            except (JobFileError, InputError) as exc:
                problems = exc.problems if isinstance(exc, JobFileError) else [str(exc)]
                if self.errors.get(p) != problems[0]:
                    for problem in problems:
                        log.error("job_file_error", file=str(p), problem=problem)
                    self.history.event(self.clock(), "", "", "job_file_error", "; ".join(problems))
                self.errors[p] = problems[0]
                job_or_none = self.good.get(p)
                if job_or_none is None:
                    continue
                job = job_or_none
            else:
                self.errors.pop(p, None)
                self.good[p] = job
            if job.id in jobs:
                log.error("job_id_twice", file=str(p), other=str(jobs[job.id].path), job=job.id)
                continue
            if p.with_suffix(PAUSED).exists():  # `job pause`: kept, not scheduled, until `job resume`
                log.info("job_paused", file=str(p), job=job.id)
                job = replace(job, schedule=None)
            elif job.schedule is None:
                log.warning("job_not_scheduled", file=str(p), hint="add a [schedule] table (rpo or at)")
            jobs[job.id] = job
            sched = job.schedule
            self.history.save_job(
                job.id, job.name or p.stem, str(p),
                {} if sched is None else {"rpo": sched.rpo, "at": [f"{h:02d}:{m:02d}" for h, m in sched.at]},
                self.clock(), self.errors.get(p, ""),
            )  # fmt: skip
        for p in list(self.good):
            if p not in self.seen:
                del self.good[p]
        if not jobs:
            log.warning("no_jobs", dir=str(self.path))
        return list(jobs.values())


async def serve(
    jobs_dir: Path,
    history: History,
    *,
    max_parallel: int,
    runner: PassRunner,
    poll: float = 5.0,
    clock: Callable[[], float] | None = None,
    stop: asyncio.Event | None = None,
    appliance: ApplianceLimit | None = None,
) -> int:
    """Run passes on schedule until ``stop`` is set (SIGTERM/SIGINT set it); 0 after a clean stop.

    ``appliance``: the bandwidth limit's rules, written to its bucket before the first pass (a bad
    ``appliance.toml`` raises here: the daemon does not start) and again when they change."""
    import time

    clock = clock or time.time
    if appliance is not None:
        await appliance.start()
    sched = Scheduler(history, max_parallel, clock)
    sched.recover()
    files = JobsDir(jobs_dir, history, clock)
    sched.set_jobs(files.load())
    stop = stop or asyncio.Event()
    wake = asyncio.Event()
    reload = asyncio.Event()
    loop = asyncio.get_running_loop()
    handlers = {signal.SIGTERM: stop.set, signal.SIGINT: stop.set, signal.SIGHUP: reload.set}
    for sig, fn in handlers.items():
        loop.add_signal_handler(sig, fn)
    tasks: set[asyncio.Task[None]] = set()

    async def one(start: Start) -> None:
        try:
            if start.reason == "verify":
                outcome = await runner(start.job, start.vm, verify=True)
            else:
                outcome = await runner(start.job, start.vm)
        except asyncio.CancelledError:
            sched.finished(
                start,
                Outcome(
                    "interrupted",
                    int(ExitCode.INTERRUPTED),
                    "the daemon stopped (the target rolled the pass back)",
                ),
            )
            return
        except VzrepError as exc:
            outcome = Outcome("failed", int(exc.exit_code), str(exc))
        except Exception as exc:  # a bug in the daemon's part: recorded, the daemon goes on
            log.exception("pass_crashed", job=start.job.id, vm=start.vm.name)
            outcome = Outcome(
                "failed", int(ExitCode.INTERNAL), f"internal error: {type(exc).__name__}: {exc}"
            )
        sched.finished(start, outcome)
        wake.set()

    log.info("daemon_started", jobs=str(jobs_dir), db=str(history.path), max_parallel=max_parallel)
    try:
        async with asyncio.TaskGroup() as tg:
            while not stop.is_set():
                if appliance is not None and (reload.is_set() or appliance.changed()):
                    await appliance.reload()
                if reload.is_set() or files.changed():
                    reload.clear()
                    sched.set_jobs(files.load())
                for start in sched.due():
                    t = tg.create_task(one(start))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                sched.check_rpo()
                wake.clear()
                # Something already due was not started (the limits): a pass ending wakes us.
                nxt = sched.next_wake() - clock()
                delay = poll if nxt <= 0 else min(nxt, poll)
                waiters = [asyncio.ensure_future(e.wait()) for e in (stop, wake, reload)]
                try:
                    await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waiters:
                        w.cancel()
            log.info("daemon_stopping", running=len(tasks))
            for t in list(tasks):
                t.cancel()
    finally:
        for sig in handlers:
            loop.remove_signal_handler(sig)
    log.info("daemon_stopped")
    return 0
