"""``vzrep-source run`` end to end: the daemon as a process, a real target as a process, two local
VMs on a 5-second schedule, disks changed between passes, the daemon SIGKILLed and restarted, the
target killed and restarted; then the history (every pass recorded, none overlapping another of its
VM, the interrupted ones marked) and the replicas (``qemu-img compare`` with the source disks)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from source_agent.daemon.history import History, PassRecord
from target_agent.storage.status import vm_status
from tests.support.agents import Keys, TargetProcess
from tests.support.daemon import DaemonProcess, processes_with, wait_for, write_scheduled_job
from tests.support.metrics import scrape
from tests.support.openssh import free_port
from tests.support.tools import change_blocks, make_image, qemu_compare

MiB = 1 << 20
VMS = ("web", "db")


def ok_after(d: DaemonProcess, vm: str, t: float) -> PassRecord | None:
    """A successful pass of ``vm`` that started after ``t`` (so it saw every change made before)."""
    return next((p for p in d.passes(vm) if p.status == "ok" and p.started > t), None)


@pytest.mark.slow

def test_the_daemon_keeps_replicating_through_kills_of_itself_and_the_target(tmp_path: Path) -> None:
    keys = Keys.make(tmp_path / "keys")
    target = TargetProcess(tmp_path / "data", keys, tmp_path / "target.log").start()
    disks = {
        vm: make_image(tmp_path / f"{vm}.img", 16 * MiB, data_blocks=80, seed=i) for i, vm in enumerate(VMS)
    }
    (tmp_path / "jobs").mkdir()
    job = write_scheduled_job(
        tmp_path / "jobs" / "pair.toml", target.port, keys, disks,
        {"rpo": "5s", "retry_every": "1s", "retry_for": "2m"}, str(uuid.uuid4()),
        resume_window=0,  # a pass cut by the target's death fails at once (exit 4) and is retried
    )  # fmt: skip
    log = tmp_path / "daemon.log"
    mport = free_port()
    metrics = ("--metrics-listen", f"127.0.0.1:{mport}")
    daemon = DaemonProcess(tmp_path / "jobs", tmp_path / "history.sqlite", tmp_path / "state", log, *metrics).start()
    try:
        # 1. It starts by itself: a first (full) pass of each VM; then the disks change.
        for vm in VMS:
            wait_for(f"a first pass of {vm}", lambda vm=vm: ok_after(daemon, vm, 0), 30, log)
        changed = time.time()
        for i, vm in enumerate(VMS):
            change_blocks(disks[vm], 6, seed=10 + i)
        for vm in VMS:
            wait_for(f"a pass of {vm} after the change", lambda vm=vm: ok_after(daemon, vm, changed), 20, log)

        # 2. SIGKILL the daemon in the middle of a pass: its pass dies with it, the next daemon marks
        # it interrupted and runs that VM first.
        running = wait_for(
            "a running pass",
            lambda: next((p for p in daemon.passes() if p.status == "running"), None),
            20,
            log,
        )
        daemon.kill()
        wait_for("the killed daemon's pass process to end", lambda: not processes_with(str(job)), 10)
        daemon = DaemonProcess(daemon.jobs, daemon.db, daemon.state_dir, log, *metrics).start()
        killed = wait_for(
            "the killed pass marked interrupted",
            lambda: next((p for p in daemon.passes() if p.id == running.id and p.status == "interrupted"), None),
            20, log,
        )  # fmt: skip
        resumed = wait_for(
            "the interrupted VM passed again",
            lambda: next((p for p in daemon.passes(running.vm) if p.id > running.id), None), 20, log,
        )  # fmt: skip
        assert resumed.reason == "resume"

        # 3. Kill the target for longer than one interval: every VM meets it; passes fail with
        # exit 4 and are retried every second until it is back.
        changed = time.time()
        for i, vm in enumerate(VMS):
            change_blocks(disks[vm], 6, seed=20 + i)
        target.kill()
        down = time.time()
        wait_for(
            "a failed pass of each VM while the target is down",
            lambda: all(any(p.status == "failed" and p.started > down for p in daemon.passes(vm)) for vm in VMS),
            20, log,
        )  # fmt: skip
        time.sleep(1.5)
        target.start()  # the same port: the job's pinned known_hosts line still holds
        for vm in VMS:
            wait_for(
                f"{vm} replicated after the target's restart",
                lambda vm=vm: ok_after(daemon, vm, changed),
                30,
                log,
            )

        # 4. A last change, a pass of each VM that saw it, then a clean stop.
        changed = time.time()
        for i, vm in enumerate(VMS):
            change_blocks(disks[vm], 6, seed=30 + i)
        for vm in VMS:
            wait_for(f"a last pass of {vm}", lambda vm=vm: ok_after(daemon, vm, changed), 20, log)
        # The metrics endpoint, read by Prometheus's own parser, agrees with the history.
        scraped = scrape(mport)
        h = History(daemon.db, readonly=True)
        for c in h.counters():
            labels = (("job", c.job), ("vm", c.vm))
            assert scraped["vzrep_source_passes_total"][tuple(sorted([*labels, ("status", "ok")]))] <= c.passes["ok"]
            assert scraped["vzrep_source_wire_bytes_total"][labels] <= c.wire_bytes
            assert scraped["vzrep_source_rpo_missed"][labels] in (0, 1)
            assert 0 <= scraped["vzrep_source_rpo_lag_seconds"][labels] < 60
            assert scraped["vzrep_source_pass_failures_total"][(("exit_code", "4"), *labels)] >= 1
        h.close()
        assert daemon.stop() == 0
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill()
        for vm in VMS:  # a pass cut by the stop is rolled back by the target: wait for it
            wait_for(
                f"the target idle for {vm}",
                lambda vm=vm: not (tmp_path / "data" / vm).exists()
                or not any(vm_status(tmp_path / "data" / vm)[k] for k in ("pass_running", "pending_rollback")),
                30,
            )  # fmt: skip
        target.stop()

    # The replicas hold the disks as they were after the last change.
    for vm in VMS:
        qemu_compare(disks[vm], tmp_path / "data" / vm / "disk0.vmdk")

    # The history: every pass ended and recorded, none of a VM overlapping another of it.
    h = History(daemon.db, readonly=True)
    passes = h.passes()
    assert passes and all(
        p.finished is not None and p.status in ("ok", "failed", "interrupted") for p in passes
    )
    for vm in VMS:
        mine = sorted((p for p in passes if p.vm == vm), key=lambda p: p.started)
        for a, b in itertools.pairwise(mine):
            assert a.finished is not None and a.finished <= b.started, f"{vm}: pass {a.id} overlaps {b.id}"
        fails = [p for p in mine if p.status == "failed"]
        assert fails and all(p.exit_code in (4, 10) for p in fails), [(p.exit_code, p.error) for p in fails]
        assert any(p.reason == "retry" for p in mine)  # the lost link was retried, not left to the schedule
        assert all(p.report is not None and p.wire_bytes > 0 for p in mine if p.status == "ok")
    assert killed.exit_code == 130 and "daemon stopped" in killed.error
    assert any(e["kind"] == "interrupted" for e in h.events())
    counters = {c.vm: c for c in h.counters()}
    for vm in VMS:
        c = counters[vm]
        assert c.passes["ok"] >= 4 and c.failures_by_exit_code.get(4, 0) >= 1 and c.last_success is not None
        assert c.wire_bytes == sum(p.wire_bytes for p in passes if p.vm == vm)
    h.close()

    # What a user reads: `vzrep-source history`, as text and as JSON.
    cli = [sys.executable, "-m", "source_agent.cli", "history", "--db", str(daemon.db)]
    doc = json.loads(subprocess.run([*cli, "--vm", "web", "--json"], capture_output=True, check=True).stdout)
    assert [p["id"] for p in doc["passes"]] == [p.id for p in passes if p.vm == "web"]
    assert [v["vm"] for v in doc["vms"]] == ["web"] and doc["jobs"][0]["name"] == "pair"
    text = subprocess.run([*cli, "--job", "pair"], capture_output=True, check=True, text=True).stdout
    assert text.count("\n") >= len(passes) + 3 and "pair/web: last success" in text
