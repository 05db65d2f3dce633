"""The daemon's loop in-process: job files read again when they change (a bad one keeps its last good
version), a stop that interrupts running passes, how a pass process's output becomes an outcome.

The passes here are coroutines that wait and return (the loop is what is tested; the real pass
processes are run by tests/integration/test_daemon.py)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from source_agent import cli
from source_agent.daemon.history import History
from source_agent.daemon.scheduler import Outcome
from source_agent.daemon.service import JobsDir, outcome_of, pass_command, serve
from source_agent.jobs.model import Job, VmConf, parse_job

JOB = """\
id = "{id}"
name = "{name}"
[target]
host = "dr"
identity = "k"
known_hosts = "kh"
[schedule]
rpo = "{rpo}"
[[vm]]
name = "{vm}"
disks = ["/img/{vm}.img"]
"""


def write(d: Path, name: str, vm: str, rpo: str = "1s", job_id: str | None = None) -> str:
    job_id = job_id or str(uuid.uuid4())
    (d / f"{name}.toml").write_text(JOB.format(id=job_id, name=name, vm=vm, rpo=rpo))
    return job_id


def test_a_pass_process_output_becomes_its_outcome() -> None:
    doc = {
        "vms": [
            {
                "vm": "a",
                "status": "replicated",
                "exit_code": 0,
                "reason": "",
                "report": {"total": {"wire_bytes_sent": 123}},
            }
        ]
    }
    out = outcome_of(0, json.dumps(doc).encode(), b"")
    assert (out.status, out.exit_code, out.wire_bytes, out.report) == ("ok", 0, 123, doc["vms"][0]["report"])
    doc = {"vms": [{"vm": "a", "status": "skipped", "exit_code": 16, "reason": "no replica"}]}
    assert outcome_of(16, json.dumps(doc).encode(), b"") == Outcome("skipped", 16, "no replica", None, 0)
    bad_file = outcome_of(3, b"", b"log line\nvzrep-source: job.toml:3: id: missing\n")
    assert bad_file == Outcome("failed", 3, "vzrep-source: job.toml:3: id: missing")
    bus = outcome_of(-7, b"", b"Fatal Python error: Bus error\n")
    assert bus.exit_code == 135 and "killed by signal 7: Fatal Python error: Bus error" in bus.error


def test_the_pass_command_is_job_run_of_one_vm(tmp_path: Path) -> None:
    job = parse_job(tmp_path / "j.toml", JOB.format(id=uuid.uuid4(), name="j", vm="web", rpo="1m"))
    argv = pass_command(job, job.vms[0], tmp_path / "state")
    assert argv[1:] == ["-m", "source_agent.cli", "job", "run", str(tmp_path / "j.toml"), "--vm", "web", "--json",
                        "--state-dir", str(tmp_path / "state")]  # fmt: skip
    args = cli.build_parser(argv[3:]).parse_args(argv[3:])  # the job command takes it as it is
    assert args.vm == ["web"] and args.json


def test_job_files_are_read_again_when_they_change_and_a_bad_one_keeps_its_last_good_version(
    tmp_path: Path,
) -> None:
    d = tmp_path / "jobs"
    d.mkdir()
    h = History(tmp_path / "h.sqlite")
    files = JobsDir(d, h, lambda: 1000.0)
    assert files.load() == [] and not files.changed()
    a = write(d, "a", "web")
    assert files.changed()
    (job,) = files.load()
    assert job.id == a and not files.changed()
    (d / "a.toml").write_text((d / "a.toml").read_text().replace('rpo = "1s"', 'rpo = "soon"'))
    assert files.changed()
    (kept,) = files.load()
    assert kept == job  # the last good version runs on
    (ev,) = h.events()
    assert ev["kind"] == "job_file_error" and "schedule.rpo: must be a duration" in ev["detail"]
    assert "schedule.rpo" in h.jobs()[0]["error"]
    out = subprocess.run(
        [sys.executable, "-m", "source_agent.cli", "history", "--db", str(tmp_path / "h.sqlite")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    line = next(x for x in out.splitlines() if "job_file_error" in x)
    assert f"job_file_error  {d / 'a.toml'}:" in line, line  # the file names itself, no empty "job/vm: "
    write(d, "b", "db", job_id=a)  # a copy with the same id: refused, the first stays
    assert [j.path.name for j in files.load()] == ["a.toml"]
    (d / "a.toml").unlink()
    assert [j.path.name for j in files.load()] == ["b.toml"]


async def test_the_loop_passes_on_schedule_picks_up_new_jobs_and_stops_with_passes_interrupted(
    tmp_path: Path,
) -> None:
    d = tmp_path / "jobs"
    d.mkdir()
    write(d, "a", "web", rpo="1s")
    ran: list[str] = []
    slow, twice = asyncio.Event(), asyncio.Event()

    async def runner(job: Job, vm: VmConf) -> Outcome:
        ran.append(vm.name)
        if ran.count("web") >= 2:
            twice.set()
        if vm.name == "db":
            slow.set()
            await asyncio.sleep(3600)  # still running when the daemon stops
        return Outcome("ok", 0, "", {"total": {}}, 10)

    h = History(tmp_path / "h.sqlite")
    stop = asyncio.Event()
    task = asyncio.ensure_future(serve(d, h, max_parallel=2, runner=runner, poll=0.1, stop=stop))
    await asyncio.wait_for(twice.wait(), 10)
    write(d, "b", "db")  # a new file: seen within a poll, no signal needed
    await asyncio.wait_for(slow.wait(), 5)
    read_at = {j["name"]: j["updated"] for j in h.jobs()}
    os.kill(os.getpid(), signal.SIGHUP)  # systemctl reload: the files are read again, unchanged or not
    for _ in range(100):
        if all(j["updated"] > read_at[j["name"]] for j in h.jobs()):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"SIGHUP did not re-read the jobs: {h.jobs()}")
    os.kill(os.getpid(), signal.SIGTERM)  # as systemd stops it
    assert await asyncio.wait_for(task, 10) == 0
    passes = h.passes()
    assert {(p.vm, p.status) for p in passes} == {("web", "ok"), ("db", "interrupted")}
    web = [p for p in passes if p.vm == "web"]
    assert all(b.started - a.started >= 0.99 for a, b in itertools.pairwise(web))  # every rpo = 1 s
    (db,) = [p for p in passes if p.vm == "db"]
    assert db.exit_code == 130 and db.finished is not None


def test_history_without_a_database_says_so(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["history", "--db", str(tmp_path / "none.sqlite")]) == 3
    assert "no history at" in capfd.readouterr().err


def test_a_paused_job_is_kept_but_not_scheduled_until_resumed(tmp_path: Path) -> None:
    """`vzrep-source job pause|resume FILE` (the CLI, as the console runs it) marks the file; the
    daemon's next look at DIR sees the change and schedules the job's passes, or not."""
    d = tmp_path / "jobs"
    d.mkdir()
    write(d, "a", "web")
    files = JobsDir(d, History(tmp_path / "h.sqlite"), lambda: 1000.0)
    (job,) = files.load()
    assert job.schedule is not None
    for cmd, scheduled in (("pause", False), ("resume", True)):
        res = subprocess.run(
            [sys.executable, "-m", "source_agent.cli", "job", cmd, str(d / "a.toml")], capture_output=True, text=True
        )
        assert res.returncode == 0 and cmd + "d" in res.stdout, res.stderr
        assert files.changed()
        (job,) = files.load()
        assert (job.schedule is not None) == scheduled and (d / "a.paused").exists() != scheduled
    res = subprocess.run(
        [sys.executable, "-m", "source_agent.cli", "job", "pause", str(tmp_path / "h.sqlite")], capture_output=True, text=True
    )
    assert res.returncode == 3 and not (tmp_path / "h.paused").exists()  # not a job file: nothing marked
