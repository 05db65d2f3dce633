"""The appliance's bandwidth limit in the daemon: ``DIR/appliance.toml`` and ``run --limit`` written to
the bucket file the passes share, read again when the file changes, a bad file refused at the start
and outlived by the last good rules later. (The passes keeping to it: tests/integration.)"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from source_agent import cli
from source_agent.bandwidth import Schedule
from source_agent.daemon.appliance import ApplianceFileError, ApplianceLimit, parse_appliance
from source_agent.daemon.history import History
from source_agent.daemon.scheduler import Outcome
from source_agent.daemon.service import JobsDir, pass_command, serve
from source_agent.jobs.model import Job, VmConf, parse_job
from source_agent.shared_bucket import decode, strictest
from tests.source_agent.daemon.test_service import JOB, write
from vzcommon.errors import ExitCode

MON_9 = dt.datetime(2026, 12, 7, 9, 0)
SAT_9 = dt.datetime(2026, 12, 12, 9, 0)


def rate(bucket: Path, when: dt.datetime) -> float:
    """The rate the passes keep to at ``when``: the smallest of run --limit's and appliance.toml's."""
    _, _, groups, _ = decode(bucket.read_bytes(), bucket)
    return strictest([s.rate(when) for s in groups])


def test_the_file_takes_one_key_and_names_the_line_of_each_problem(tmp_path: Path) -> None:
    p = tmp_path / "appliance.toml"
    conf = parse_appliance(p, 'limit = ["20MB/s@mon-fri/08:00-18:00", "100Mbit"]\n')
    assert Schedule.parse(conf.limit).rate(MON_9) == 20e6 and Schedule.parse(conf.limit).rate(SAT_9) == 12.5e6
    assert parse_appliance(p, 'limit = "5MB/s"\n').limit == ("5MB/s",)
    assert parse_appliance(p, "# nothing limited\n").limit == ()
    with pytest.raises(ApplianceFileError) as err:
        parse_appliance(p, '# the appliance\nlimit = ["20 parsecs"]\nspeed = 3\n')
    assert err.value.exit_code == ExitCode.INPUT
    assert sorted(err.value.problems) == [
        f"{p}:2: limit: bandwidth '20 parsecs': expected a number and a unit (B, KB, MB, GB, KiB, MiB, GiB"
        " per second, or kbit, Mbit, Gbit), e.g. 20MB/s or 100Mbit",
        f"{p}:3: speed: unknown key (known here: limit)",
    ]
    with pytest.raises(ApplianceFileError, match=r":1: limit: must be a string or an array of strings"):
        parse_appliance(p, "limit = 20\n")
    with pytest.raises(ApplianceFileError, match=r":1: limit: bandwidth window 'weekdays'"):
        parse_appliance(p, 'limit = "20MB/s@weekdays"\n')
    with pytest.raises(ApplianceFileError, match="not valid TOML"):
        parse_appliance(p, "limit = [\n")


async def test_the_rules_reach_the_bucket_and_a_bad_edit_keeps_the_last_good_ones(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    conf, bucket = jobs / "appliance.toml", tmp_path / "h.sqlite.bandwidth"
    h = History(tmp_path / "h.sqlite")
    limit = ApplianceLimit(bucket, jobs, ("50MB/s",), h, lambda: 1000.0)
    await limit.start()  # no file: the command line's rules alone
    assert rate(bucket, MON_9) == 50e6
    conf.write_text('limit = ["20MB/s@mon-fri/08:00-18:00"]\n')
    assert limit.changed()
    await limit.reload()
    assert rate(bucket, MON_9) == 20e6 and rate(bucket, SAT_9) == 50e6  # both apply: the smaller wins
    conf.write_text('limit = ["20MB/s@mon-fri/08:00-18:00"]\nburst = 2\n')
    await limit.reload()
    assert rate(bucket, MON_9) == 20e6  # the last good rules stay
    (ev,) = h.events()
    assert ev["kind"] == "appliance_file_error" and f"{conf}:2: burst: unknown key" in ev["detail"]
    await limit.reload()
    assert len(h.events()) == 1  # the same problem is recorded once
    conf.unlink()
    await limit.reload()
    assert rate(bucket, MON_9) == 50e6
    conf.write_text("limit = [\n")
    with pytest.raises(ApplianceFileError, match="not valid TOML"):  # at the start: the daemon stops
        await ApplianceLimit(bucket, jobs, (), h, lambda: 1000.0).start()


def test_appliance_toml_is_not_a_job_and_each_pass_is_given_the_bucket(tmp_path: Path) -> None:
    d = tmp_path / "jobs"
    d.mkdir()
    write(d, "a", "web")
    (d / "appliance.toml").write_text('limit = "20MB/s"\n')
    h = History(tmp_path / "h.sqlite")
    assert [j.path.name for j in JobsDir(d, h, lambda: 1000.0).load()] == ["a.toml"]
    assert h.events() == []  # not reported as a bad job file either
    job = parse_job(tmp_path / "j.toml", JOB.format(id=uuid.uuid4(), name="j", vm="web", rpo="1m"))
    argv = pass_command(job, job.vms[0], None, shared_limit=tmp_path / "h.sqlite.bandwidth")
    assert argv[-2:] == ["--shared-limit", str(tmp_path / "h.sqlite.bandwidth")]
    args = cli.build_parser(argv[3:]).parse_args(argv[3:])
    assert args.shared_limit == tmp_path / "h.sqlite.bandwidth"


async def test_the_loop_writes_a_changed_file_to_the_bucket_while_passes_run(tmp_path: Path) -> None:
    d = tmp_path / "jobs"
    d.mkdir()
    write(d, "a", "web", rpo="1s")
    bucket = tmp_path / "h.sqlite.bandwidth"
    h = History(tmp_path / "h.sqlite")
    running = asyncio.Event()

    async def runner(job: Job, vm: VmConf) -> Outcome:
        assert bucket.exists()  # written before the first pass
        running.set()
        await asyncio.sleep(3600)
        return Outcome("ok", 0, "")

    limit = ApplianceLimit(bucket, d, (), h, lambda: 1000.0)
    task = asyncio.ensure_future(serve(d, h, max_parallel=2, runner=runner, poll=0.1, appliance=limit))
    await asyncio.wait_for(running.wait(), 10)
    assert rate(bucket, MON_9) == 0.0  # no --limit, no file: unlimited
    (d / "appliance.toml").write_text('limit = "8MB/s"\n')  # seen within a poll, no signal needed
    for _ in range(200):
        if rate(bucket, MON_9) == 8e6:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"the changed appliance.toml did not reach the bucket: {rate(bucket, MON_9)}")
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(task, 10) == 0


def test_the_daemon_does_not_start_on_a_bad_appliance_file(tmp_path: Path) -> None:
    d = tmp_path / "jobs"
    d.mkdir()
    write(d, "a", "web")
    (d / "appliance.toml").write_text('limit = ["20MB/s@mon-fri/08:00-18:00"]\nlimits = "5MB/s"\n')
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "source_agent.cli",
            "run",
            "--jobs",
            str(d),
            "--db",
            str(tmp_path / "h.sqlite"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == ExitCode.INPUT, res.stderr
    assert f"{d / 'appliance.toml'}:2: limits: unknown key (known here: limit)" in res.stderr
    assert History(tmp_path / "h.sqlite").passes() == []  # nothing ran
    res = subprocess.run(
        [sys.executable, "-m", "source_agent.cli", "run", "--jobs", str(d), "--limit", "fast"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == ExitCode.USAGE and "argument --limit: bandwidth 'fast'" in res.stderr
