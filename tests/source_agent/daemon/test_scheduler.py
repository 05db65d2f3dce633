"""The scheduler under a fake clock: hours of schedule stepped through without sleeping.

Passes here are simulated (each takes the time the test says and ends as the test says): what is
judged is the scheduler's own decisions, recorded in a real SQLite history in tmp_path."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from source_agent.daemon.history import History
from source_agent.daemon.scheduler import Key, Outcome, Scheduler, Start
from source_agent.jobs.model import Job, parse_job

T0 = 1_800_000_000.0


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_job(vms: list[str], schedule: str, parallel: int = 8, name: str = "j") -> Job:
    disks = "\n".join(f'[[vm]]\nname = "{v}"\ndisks = ["/img/{v}.img"]\n' for v in vms)
    text = (
        f'id = "{uuid.uuid4()}"\nname = "{name}"\n[target]\nhost = "dr"\nidentity = "k"\nknown_hosts = "kh"\n'
        f"[options]\nparallel = {parallel}\n[schedule]\n{schedule}\n{disks}"
    )
    return parse_job(Path(f"/jobs/{name}.toml"), text)


@dataclass
class Ran:
    key: Key
    start: float
    end: float
    reason: str
    status: str


@dataclass
class Sim:
    """Runs the scheduler as the daemon does: start what is due, sleep to the next event, end passes."""

    sched: Scheduler
    clock: Clock
    duration: Callable[[Start], float] = lambda s: 1.0
    outcome: Callable[[Start], Outcome] = lambda s: Outcome("ok")
    ran: list[Ran] = field(default_factory=list)
    peak: int = 0
    running: dict[Key, tuple[Start, float]] = field(default_factory=dict)

    def run(self, until: float) -> list[Ran]:
        running = self.running
        while True:
            for s in self.sched.due():
                assert s.key not in running, f"two passes of {s.key} at once"
                running[s.key] = (s, self.clock.t + self.duration(s))
            self.peak = max(self.peak, len(running))
            self.sched.check_rpo()
            wake = self.sched.next_wake()  # already due: waits for a pass to end (the limits)
            nxt = min([end for _, end in running.values()] + [wake if wake > self.clock.t else float("inf")])
            if nxt > until:
                return self.ran
            self.clock.t = max(nxt, self.clock.t)
            for key, (s, end) in list(running.items()):
                if end <= self.clock.t:
                    del running[key]
                    out = self.outcome(s)
                    self.sched.finished(s, out)
                    self.ran.append(Ran(key, s.started - T0, end - T0, s.reason, out.status))


def sim(tmp_path: Path, jobs: list[Job], max_parallel: int = 4, clock: Clock | None = None) -> Sim:
    clock = clock or Clock()
    sched = Scheduler(History(tmp_path / "h.sqlite"), max_parallel, clock)
    sched.recover()
    sched.set_jobs(jobs)
    return Sim(sched, clock)


def test_an_interval_runs_each_vm_every_rpo_start_to_start(tmp_path: Path) -> None:
    job = make_job(["a", "b"], 'rpo = "10m"')
    s = sim(tmp_path, [job])
    s.duration = lambda st: 120.0
    ran = s.run(T0 + 3599)
    for vm in "ab":
        starts = [r.start for r in ran if r.key == (job.id, vm)]
        assert starts == [0, 600, 1200, 1800, 2400, 3000]
    assert all(r.status == "ok" and r.reason == "schedule" for r in ran)
    history = s.sched.history.passes(vm="a")
    assert [(p.started - T0, p.finished and p.finished - T0, p.status) for p in history][:2] == [
        (0, 120, "ok"),
        (600, 720, "ok"),
    ]
    row = s.sched.history.vm(job.id, "a")
    assert row is not None and row.next_run == T0 + 3600  # the next is recorded, for status and restarts


def test_a_pass_longer_than_the_interval_is_followed_at_once_never_overlapped(tmp_path: Path) -> None:
    job = make_job(["a"], 'rpo = "5s"')
    s = sim(tmp_path, [job])
    s.duration = lambda st: 12.0
    ran = s.run(T0 + 60)
    assert [(r.start, r.end) for r in ran] == [(0, 12), (12, 24), (24, 36), (36, 48), (48, 60)]


def test_calendar_times(tmp_path: Path) -> None:
    start = datetime(2026, 3, 10, 1, 0).timestamp()
    job = make_job(["a"], 'at = ["02:00", "14:00"]')
    s = sim(tmp_path, [job], clock=Clock(start))
    s.run(start + 2 * 86400 - 3600)
    starts = [datetime.fromtimestamp(r.start + T0) for r in s.ran]
    assert [(d.day, d.hour, d.minute) for d in starts] == [(10, 2, 0), (10, 14, 0), (11, 2, 0), (11, 14, 0)]


def test_a_lost_link_is_retried_every_15_s_for_30_min_then_waits_for_the_schedule(tmp_path: Path) -> None:
    job = make_job(["a"], 'rpo = "1h"')
    s = sim(tmp_path, [job])
    s.duration = lambda st: 5.0
    s.outcome = lambda st: Outcome("failed", 4, "connection lost")  # the link is down for good
    ran = s.run(T0 + 3599)
    starts = [r.start for r in ran]
    # 0, then 5 s of pass + 15 s of wait each: every 20 s while within 30 min of the first failure
    assert starts[:4] == [0, 20, 40, 60]
    assert starts[-1] <= 1800 and all(b - a == 20 for a, b in itertools.pairwise(starts))
    assert [r.reason for r in ran[:3]] == ["schedule", "retry", "retry"]
    passes = s.sched.history.passes()
    assert [p.attempt for p in passes[:3]] == [1, 2, 3]
    row = s.sched.history.vm(job.id, "a")
    assert row is not None and row.next_run == T0 + 3600  # then the next scheduled pass
    assert row.last_exit == 4 and row.last_error == "connection lost"
    # The link comes back: the next scheduled pass succeeds and the failures are forgotten.
    s.outcome = lambda st: Outcome("ok")
    s.run(T0 + 3700)
    row = s.sched.history.vm(job.id, "a")
    assert row is not None and row.failures == 0 and row.last_error == "" and s.ran[-1].start == 3600


def test_backoff_multiplies_the_wait(tmp_path: Path) -> None:
    job = make_job(["a"], 'rpo = "1h"\nretry_every = "10s"\nretry_backoff = 2\nretry_for = "5m"')
    s = sim(tmp_path, [job])
    s.duration = lambda st: 0.0
    s.outcome = lambda st: Outcome("failed", 10, "busy")
    ran = s.run(T0 + 3599)
    assert [r.start for r in ran] == [0, 10, 30, 70, 150]  # waits 10, 20, 40, 80; 160 more is past 5 min


def test_a_non_transient_failure_is_not_retried_in_a_loop(tmp_path: Path) -> None:
    job = make_job(["a", "b"], 'rpo = "10m"')
    s = sim(tmp_path, [job])
    s.outcome = lambda st: Outcome("failed", 3, "disk gone") if st.vm.name == "a" else Outcome("ok")
    ran = s.run(T0 + 1799)
    assert [r.start for r in ran if r.key[1] == "a"] == [0, 600, 1200]  # its schedule, no retries
    assert [r.start for r in ran if r.key[1] == "b"] == [0, 600, 1200]
    counters = {c.vm: c for c in s.sched.history.counters()}
    assert counters["a"].failures_by_exit_code == {3: 3} and counters["a"].passes == {"failed": 3}
    assert counters["b"].passes == {"ok": 3} and counters["b"].last_success == T0 + 1201


def test_at_most_max_parallel_in_all_and_the_jobs_parallel_per_job(tmp_path: Path) -> None:
    big = make_job([f"v{i}" for i in range(6)], 'rpo = "1m"', parallel=8, name="big")
    small = make_job(["s0", "s1", "s2"], 'rpo = "1m"', parallel=1, name="small")
    s = sim(tmp_path, [big, small], max_parallel=3)
    s.duration = lambda st: 7.0
    concurrency: list[tuple[float, float, str]] = []
    ran = s.run(T0 + 600)
    concurrency = [(r.start, r.end, r.key[0]) for r in ran]
    assert s.peak == 3
    for t in {c[0] for c in concurrency}:
        live = [c for c in concurrency if c[0] <= t < c[1]]
        assert len(live) <= 3
        assert sum(1 for c in live if c[2] == small.id) <= 1
    # everyone gets passes: the VMs due longest go first
    assert {r.key[1] for r in ran} == {*(f"v{i}" for i in range(6)), "s0", "s1", "s2"}
    per_vm = {vm: [r.start for r in ran if r.key[1] == vm] for vm in {r.key[1] for r in ran}}
    for starts in per_vm.values():
        assert all(b - a >= 60 for a, b in itertools.pairwise(starts))


def test_a_missed_rpo_is_reported_once_and_cleared_by_a_success(tmp_path: Path) -> None:
    job = make_job(["a"], 'rpo = "10m"\nretry_for = "0s"')
    s = sim(tmp_path, [job])
    s.duration = lambda st: 60.0
    s.run(T0 + 1000)  # passes at 0 and 600 succeed
    s.outcome = lambda st: Outcome("failed", 4, "link down")
    s.run(T0 + 3000)  # 1200, 1800, 2400 fail: the last success ended at 660, the RPO is missed at 1260
    events = s.sched.history.events()
    assert [(e["kind"], e["time"] - T0) for e in events] == [("rpo_missed", 1260)]
    assert "ended 600 s ago (RPO 600 s)" in events[0]["detail"]
    row = s.sched.history.vm(job.id, "a")
    assert row is not None and row.rpo_missed
    s.outcome = lambda st: Outcome("ok")
    s.run(T0 + 3700)
    assert [e["kind"] for e in s.sched.history.events()] == ["rpo_missed", "rpo_met"]
    row = s.sched.history.vm(job.id, "a")
    assert row is not None and not row.rpo_missed


def test_a_vm_that_never_succeeded_misses_its_rpo_from_when_it_was_first_scheduled(tmp_path: Path) -> None:
    job = make_job(["a"], 'rpo = "10m"')
    s = sim(tmp_path, [job])
    s.outcome = lambda st: Outcome("skipped", 16, "not seeded")
    s.run(T0 + 700)
    assert [(e["kind"], e["time"] - T0) for e in s.sched.history.events()] == [("rpo_missed", 600)]


def test_a_pass_left_running_by_a_dead_daemon_is_marked_interrupted_and_runs_first(tmp_path: Path) -> None:
    job = make_job(["a", "b"], 'rpo = "1h"')
    s = sim(tmp_path, [job])
    starts = s.sched.due()  # the daemon starts both ... and is killed: nothing more is recorded
    assert len(starts) == 2
    # The next daemon, 100 s later, opens the same history.
    clock = Clock(T0 + 100)
    s2 = sim(tmp_path, [job], clock=clock)
    passes = s2.sched.history.passes()
    assert [(p.status, p.exit_code, p.finished) for p in passes] == [("interrupted", 130, T0 + 100)] * 2
    again = s2.sched.due()
    assert {(st.vm.name, st.reason) for st in again} == {("a", "resume"), ("b", "resume")}


def test_a_pass_stopped_with_the_daemon_runs_first_at_its_next_start(tmp_path: Path) -> None:
    job = make_job(["a"], 'rpo = "1h"')
    s = sim(tmp_path, [job])
    s.run(T0 + 10)  # the first pass, ok
    s.clock.t = T0 + 3600
    (st,) = s.sched.due()
    s.sched.finished(st, Outcome("interrupted", 130, "the daemon stopped"))
    s2 = sim(tmp_path, [job], clock=Clock(T0 + 3700))
    (again,) = s2.sched.due()
    assert again.reason == "resume" and again.started == T0 + 3700


def test_job_changes_add_and_drop_vms_and_reschedule(tmp_path: Path) -> None:
    job = make_job(["a"], 'rpo = "1h"')
    s = sim(tmp_path, [job])
    s.run(T0 + 10)
    text = job.path.name  # same id, new VM, new interval
    assert text
    new = make_job(["a", "b"], 'rpo = "10m"')
    new = Job(job.path, job.id, job.name, job.target, job.options, new.vms, None, new.schedule)
    s.sched.set_jobs([new])
    row = s.sched.history.vm(job.id, "a")
    assert row is not None and row.next_run == T0 + 600
    assert {k[1] for k in s.sched.rows} == {"a", "b"}
    s.sched.set_jobs([])
    assert s.sched.rows == {} and s.sched.due() == []


def test_a_scheduled_verify_runs_apart_from_the_passes_and_leaves_the_rpo_alone(tmp_path: Path) -> None:
    """``verify = "1h"``: each VM is verified an hour after it was first seen and an hour after each
    verify, never at the same time as its pass (a pass due goes first), which keeps its own
    schedule; a verify that finds damage is an event, and neither counts as the VM's pass."""
    job = make_job(["a"], 'rpo = "10m"\nverify = "1h"')
    s = sim(tmp_path, [job])
    s.duration = lambda st: 300.0 if st.reason == "verify" else 120.0
    s.outcome = lambda st: (
        Outcome("failed", 11, "the replica differs") if st.reason == "verify" and st.started - T0 > 4000
        else Outcome("ok")
    )  # fmt: skip
    ran = s.run(T0 + 2 * 3600 + 1000)
    verifies = [r for r in ran if r.reason == "verify"]
    assert [r.start for r in verifies] == [3720, 7320]  # the passes due at 3600 and 7200 went first
    assert [r.status for r in verifies] == ["ok", "failed"]
    passes = [r for r in ran if r.reason != "verify"]
    for v in verifies:
        assert all(p.end <= v.start or p.start >= v.end for p in passes)  # never both at once
    assert [r.start for r in passes] == [600.0 * i for i in range(14)]  # the schedule, untouched
    assert all(p.status == "ok" for p in passes)
    row = s.sched.history.vm(job.id, "a")
    assert row is not None and row.failures == 0 and row.last_error == ""  # the verify's failure is its own
    assert row.last_success is not None and row.last_success - T0 == passes[-1].end  # a pass, not a verify
    assert [e["kind"] for e in s.sched.history.events()].count("verify_failed") == 1


def test_a_vm_that_left_its_job_is_shown_unscheduled_even_if_its_pass_was_running(tmp_path: Path) -> None:
    """A template VM an admin replaced (say web01 of `job new`) must not stay "next run in 15 min" with
    its last error in the history, the console and the metrics' RPO gauges."""
    from source_agent.daemon.cli import vm_line
    from source_agent.daemon.metrics import collect

    job = make_job(["web01", "keep"], 'rpo = "15m"')
    s = sim(tmp_path, [job])
    s.duration = lambda st: 30.0
    s.outcome = lambda st: Outcome("failed", 3, "no such disk") if st.vm.name == "web01" else Outcome("ok")
    s.run(T0 + 5)  # both passes are running
    assert set(s.running) == {(job.id, "web01"), (job.id, "keep")}
    edited = make_job(["keep"], 'rpo = "15m"')
    s.sched.set_jobs([Job(job.path, job.id, job.name, job.target, job.options, edited.vms, None, edited.schedule)])
    s.run(T0 + 3650)  # the pass of "keep" at 3600 has ended
    gone = s.sched.history.vm(job.id, "web01")
    assert gone is not None and not gone.scheduled and gone.next_run is None and not gone.rpo_missed
    assert [r.status for r in s.ran if r.key[1] == "web01"] == ["failed"]  # recorded, never run again
    assert "not scheduled (in no job now)" in vm_line(gone, {})
    kept = s.sched.history.vm(job.id, "keep")
    assert kept is not None and kept.next_run is not None and kept.next_run == T0 + 4500
    text = collect(tmp_path / "h.sqlite")
    assert 'vzrep_source_rpo_missed{job="' + job.id + '",vm="keep"}' in text
    assert 'vm="web01"' in text and 'vzrep_source_rpo_missed{job="' + job.id + '",vm="web01"}' not in text
    # A daemon started later (scheduler state rebuilt from the history) keeps it so.
    again = sim(tmp_path, [Job(job.path, job.id, job.name, job.target, job.options, edited.vms, None, edited.schedule)])
    assert not again.sched.history.vm(job.id, "web01").scheduled
    # While a pass of a VM in its job runs (next_run is None then), it is still scheduled, RPO gauges too.
    again.duration = lambda st: 30.0
    again.run(T0 + 4510)  # its pass of 4500 runs until 4530
    running = again.sched.history.vm(job.id, "keep")
    assert running.next_run is None and running.scheduled and "a pass is running" in vm_line(running, {})
    assert 'vzrep_source_rpo_missed{job="' + job.id + '",vm="keep"}' in collect(tmp_path / "h.sqlite")
    # Put back into the job, it is scheduled again.
    again.sched.set_jobs([job])
    assert again.sched.history.vm(job.id, "web01").scheduled
    again.sched.history.close()
