"""Which VM passes now: the schedule, the limits, retries and the RPO watch, without I/O or sleeping.

The daemon (:mod:`.service`) asks :meth:`Scheduler.due` for the passes to start, tells
:meth:`Scheduler.finished` how each ended, and sleeps until :meth:`Scheduler.next_wake`. The clock is
a function given to the scheduler, so its tests step a fake one through hours in microseconds.

Rules, per VM (a job's id and a VM's name):

* never two passes at once; at most ``max_parallel`` passes in all and the job's ``parallel`` per job;
  the VMs due longest are started first;
* the next scheduled pass comes from the job's schedule (:mod:`source_agent.jobs.schedule`) after the
  start of the last pass;
* a pass that failed for a reason that may pass (:data:`TRANSIENT`: the link, a busy VM, a rollback
  on the target, vSphere) is retried after ``retry_every`` (times ``retry_backoff`` per retry) until
  ``retry_for`` has passed since the first failure; any other failure (bad input, keys, the job rule)
  waits for the next scheduled pass, so it is not retried in a loop;
* a pass cut by the daemon's stop, or found interrupted at start, is due at once;
* the RPO is missed when the last success ended longer than the schedule's RPO ago (for a VM never
  replicated: since the daemon first saw it); it is logged and recorded once, and again when met.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from vzcommon.errors import ExitCode
from vzcommon.log import get_logger

from ..jobs.model import Job, VmConf
from ..jobs.schedule import Schedule
from .history import History, VmRow

log = get_logger("vzrep.source.daemon")

TRANSIENT = frozenset(
    {int(ExitCode.CONNECTION), int(ExitCode.BUSY), int(ExitCode.ROLLED_BACK), int(ExitCode.VSPHERE)}
)

Key = tuple[str, str]  # (job id, VM name)


@dataclass
class Outcome:
    """How a pass ended: ``ok``, ``failed``, ``skipped`` (the job rule) or ``interrupted``."""

    status: str
    exit_code: int = 0
    error: str = ""
    report: dict[str, Any] | None = None
    wire_bytes: int = 0


@dataclass(frozen=True)
class Start:
    """A pass :meth:`Scheduler.due` has recorded as started; the daemon runs it."""

    job: Job
    vm: VmConf
    pass_id: int
    reason: str
    attempt: int
    started: float

    @property
    def key(self) -> Key:
        return (self.job.id, self.vm.name)


class Scheduler:
    def __init__(self, history: History, max_parallel: int, clock: Callable[[], float] = time.time) -> None:
        self.history = history
        self.max_parallel = max_parallel
        self.clock = clock
        self.jobs: dict[str, Job] = {}
        self.rows: dict[Key, VmRow] = {}
        self.running: dict[Key, Start] = {}
        self.resume: set[Key] = set()  # interrupted passes: due at once, said so in the history
        #: when each VM's last verify started (``[schedule] verify``), from the history
        self.verified: dict[Key, float] = {}

    def recover(self) -> None:
        """At start: passes the last daemon left running are interrupted; their VMs pass first."""
        marked, pending = self.history.recover(self.clock())
        for p in marked:
            log.warning("pass_interrupted", job=p.job, vm=p.vm, pass_id=p.id, started=p.started)
        self.resume.update(pending)

    def set_jobs(self, jobs: Iterable[Job]) -> None:
        """The jobs as the files now say: new VMs are added, removed ones forgotten once idle."""
        now = self.clock()
        self.jobs = {j.id: j for j in jobs if j.schedule is not None}
        wanted = {(j.id, vm.name) for j in self.jobs.values() for vm in j.vms}
        for key in wanted - self.rows.keys():
            row = self.history.vm(*key) or VmRow(key[0], key[1], first_seen=now)
            row.scheduled = True  # (back) in a job
            sched = self.jobs[key[0]].schedule
            assert sched is not None
            if key in self.resume:
                row.next_run = now
            elif row.next_run is None or row.retry_since is None:
                row.next_run = sched.next_run(row.last_start, now)
            self.rows[key] = row
            self.history.save_vm(row)
            last = self.history.last_started(key[0], key[1], "verify")
            self.verified[key] = last if last is not None else row.first_seen
        for row in self.history.vms():  # left its job (or the job file went): no longer scheduled
            if (row.job, row.vm) not in wanted and row.scheduled:
                row.next_run, row.rpo_missed, row.retry_since, row.scheduled = None, False, None, False
                self.history.save_vm(row)
                self.rows.pop((row.job, row.vm), None)  # a running pass still finishes and is recorded
        for key in list(self.rows):
            if key not in wanted:
                del self.rows[key]
            elif self.rows[key].retry_since is None and key not in self.resume and key not in self.running:
                sched = self.jobs[key[0]].schedule  # the schedule may have changed
                assert sched is not None
                row = self.rows[key]
                nxt = sched.next_run(row.last_start, now)
                if nxt != row.next_run:
                    row.next_run = nxt
                    self.history.save_vm(row)

    def due(self) -> list[Start]:
        """The passes to start now, each recorded as running in the history before it is returned."""
        now = self.clock()
        waiting = sorted(
            (row.next_run, key)
            for key, row in self.rows.items()
            if key not in self.running and row.next_run is not None and row.next_run <= now
        )
        passing = {key for _, key in waiting}
        waiting += sorted(  # verifies due, after the passes due (a pass never waits for a verify)
            (t, key)
            for key, t in self._verify_due().items()
            if key not in self.running and key not in passing and t <= now
        )
        starts: list[Start] = []
        for _, key in waiting:
            if len(self.running) >= self.max_parallel:
                break
            job = self.jobs[key[0]]
            if sum(1 for k in self.running if k[0] == job.id) >= job.options.parallel:
                continue
            row = self.rows[key]
            vm = next(v for v in job.vms if v.name == key[1])
            if key not in passing:  # a verify: the VM's schedule, retries and RPO are not touched
                pass_id = self.history.start_pass(row, "verify", 1, now)
                start = Start(job, vm, pass_id, "verify", 1, now)
                self.running[key] = start
                starts.append(start)
                log.info("verify_started", job=job.id, vm=vm.name, pass_id=pass_id)
                continue
            reason = (
                "resume" if key in self.resume else ("retry" if row.retry_since is not None else "schedule")
            )
            self.resume.discard(key)
            attempt = row.failures + 1 if reason == "retry" else 1
            if reason != "retry":
                row.last_start = now  # the schedule's anchor: retries do not move it
            row.next_run = None  # set again when it ends
            pass_id = self.history.start_pass(row, reason, attempt, now)
            start = Start(job, vm, pass_id, reason, attempt, now)
            self.running[key] = start
            starts.append(start)
            log.info("pass_started", job=job.id, vm=vm.name, pass_id=pass_id, reason=reason, attempt=attempt)
        return starts

    def finished(self, start: Start, outcome: Outcome) -> None:
        """Record how the pass ended and when the VM passes next."""
        now = self.clock()
        self.running.pop(start.key, None)
        row = self.rows.get(start.key) or self.history.vm(*start.key) or VmRow(*start.key, first_seen=now)
        sched = start.job.schedule or Schedule()
        if start.reason == "verify":
            self._verify_finished(start, outcome, row, now)
            return
        if outcome.status == "ok":
            row.last_success, row.last_success_start = now, start.started
            row.failures, row.retry_since, row.last_error, row.last_exit = 0, None, "", 0
            row.next_run = sched.next_run(row.last_start, now)
            if row.rpo_missed:
                row.rpo_missed = False
                self._event(now, start.key, "rpo_met", "a pass succeeded: the RPO is met again")
        elif outcome.status == "interrupted":
            row.next_run = now  # the daemon is stopping: at its next start, first thing
            self.resume.add(start.key)
        else:
            row.failures += 1
            row.last_error, row.last_exit = outcome.error, outcome.exit_code
            if row.retry_since is None:
                row.retry_since = start.started
            retry_at = now + sched.retry_delay(row.failures)
            if outcome.exit_code in TRANSIENT and retry_at <= row.retry_since + sched.retry_for:
                row.next_run = retry_at
            else:
                if outcome.exit_code in TRANSIENT:
                    log.warning(
                        "retries_exhausted", job=start.job.id, vm=start.vm.name, failures=row.failures
                    )
                row.retry_since = None  # the next scheduled pass starts a new window
                row.next_run = sched.next_run(row.last_start, now)
        if start.key not in self.rows:  # it left its job while this pass ran: recorded, not rescheduled
            row.next_run, row.rpo_missed, row.retry_since, row.scheduled = None, False, None, False
            self.resume.discard(start.key)
        self.history.finish_pass(
            start.pass_id,
            row,
            finished=now,
            status=outcome.status,
            exit_code=outcome.exit_code,
            error=outcome.error,
            report=outcome.report,
            wire_bytes=outcome.wire_bytes,
        )
        log.info(
            "pass_finished", job=start.job.id, vm=start.vm.name, pass_id=start.pass_id, status=outcome.status,
            exit_code=outcome.exit_code, next_run=row.next_run,
        )  # fmt: skip
        if outcome.status == "failed":
            log.warning(
                "pass_failed",
                job=start.job.id,
                vm=start.vm.name,
                exit_code=outcome.exit_code,
                error=outcome.error,
            )

    def _verify_finished(self, start: Start, outcome: Outcome, row: VmRow, now: float) -> None:
        """A verify ended: recorded as a pass of reason ``verify``; the VM's own state is unchanged."""
        if outcome.status in ("ok", "failed"):
            self.verified[start.key] = start.started
        self.history.finish_pass(
            start.pass_id, row, finished=now, status=outcome.status, exit_code=outcome.exit_code,
            error=outcome.error, report=outcome.report, wire_bytes=outcome.wire_bytes,
        )  # fmt: skip
        if outcome.status == "failed":
            what = "the replica differs from the source" if outcome.exit_code == 11 else "the verify failed"
            self._event(now, start.key, "verify_failed", f"{what}: {outcome.error}")
        log.info("verify_finished", job=start.job.id, vm=start.vm.name, status=outcome.status)

    def _verify_due(self) -> dict[Key, float]:
        """When each VM's next verify is due (VMs of jobs without ``verify`` have none)."""
        due = {}
        for key in self.rows:
            sched = self.jobs[key[0]].schedule if key[0] in self.jobs else None
            if sched is not None and sched.verify is not None and key in self.verified:
                due[key] = self.verified[key] + sched.verify
        return due

    def check_rpo(self) -> list[Key]:
        """VMs that have just missed their RPO (each logged and recorded once until it is met)."""
        now = self.clock()
        missed = []
        for key, row in self.rows.items():
            deadline = self._rpo_deadline(key, row)
            if deadline is not None and not row.rpo_missed and now >= deadline:
                row.rpo_missed = True
                self.history.save_vm(row)
                since = row.last_success or row.first_seen
                what = "its last successful pass ended" if row.last_success else "it was first scheduled"
                self._event(
                    now, key, "rpo_missed", f"{what} {now - since:.0f} s ago (RPO {deadline - since:.0f} s)"
                )
                missed.append(key)
        return missed

    def next_wake(self) -> float:
        """When something is next due: a pass, or an RPO about to be missed."""
        times = [
            row.next_run
            for key, row in self.rows.items()
            if key not in self.running and row.next_run is not None
        ]
        times += [
            d
            for key, row in self.rows.items()
            if not row.rpo_missed and (d := self._rpo_deadline(key, row)) is not None
        ]
        times += [t for key, t in self._verify_due().items() if key not in self.running]
        return min(times, default=float("inf"))

    def _rpo_deadline(self, key: Key, row: VmRow) -> float | None:
        job = self.jobs.get(key[0])
        limit = job.schedule.rpo_limit() if job is not None and job.schedule is not None else None
        return None if limit is None else (row.last_success or row.first_seen) + limit

    def _event(self, now: float, key: Key, kind: str, detail: str) -> None:
        (log.warning if kind == "rpo_missed" else log.info)(kind, job=key[0], vm=key[1], detail=detail)
        self.history.event(now, key[0], key[1], kind, detail)
