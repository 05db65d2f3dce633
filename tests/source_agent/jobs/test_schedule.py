"""A job's [schedule]: its keys, each problem with its line, and the times it gives."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from source_agent.jobs.model import JobFileError, new_job_text, parse_job
from source_agent.jobs.schedule import Schedule, next_time, parse_duration

ID = "0b7d2f3e-3c55-4bd6-9a53-7f5d3f0c1e11"
HEAD = f"""\
id = "{ID}"

[target]
host = "dr"
identity = "k"
known_hosts = "kh"

[[vm]]
name = "web01"
disks = ["/images/web01.img"]
"""


def job(schedule: str) -> Schedule | None:
    return parse_job(Path("/jobs/j.toml"), HEAD + schedule).schedule


def problems(schedule: str) -> list[str]:
    with pytest.raises(JobFileError) as exc:
        parse_job(Path("/jobs/j.toml"), HEAD + schedule)
    return exc.value.problems


def test_a_schedule_with_every_key_loads() -> None:
    s = job(
        '\n[schedule]\nrpo = "1h30m"\nat = ["14:00", "02:05"]\nretry_every = "30s"\nretry_for = "1h"\nretry_backoff = 2\n'
    )
    assert s == Schedule(5400.0, ((2, 5), (14, 0)), 30.0, 3600.0, 2.0)


def test_defaults_are_veeams_retry_and_no_schedule_means_none() -> None:
    assert job("") is None  # `job run` needs none; the daemon leaves such a job alone
    s = job('\n[schedule]\nrpo = "15m"\n')
    assert s is not None and (s.rpo, s.at, s.retry_every, s.retry_for, s.retry_backoff) == (
        900,
        (),
        15,
        1800,
        1,
    )


def test_every_problem_names_its_line_and_key() -> None:
    text = '\n[schedule]\nrpo = "15 minutes"\nat = ["2:00", "25:00", "14:00", "14:00"]\nretry_backoff = 0.5\nevery = "1m"\n'
    got = problems(text)
    assert got == [
        "/jobs/j.toml:16: schedule.every: unknown key (known here: at, retry_backoff, retry_every, retry_for, rpo, verify)",
        '/jobs/j.toml:13: schedule.rpo: must be a duration from 1s to 31d such as "15m", "1h30m", "45s", not \'15 minutes\'',
        "/jobs/j.toml:14: schedule.at: entry 1 must be a local time \"HH:MM\" (00:00-23:59), not '2:00'",
        "/jobs/j.toml:14: schedule.at: entry 2 must be a local time \"HH:MM\" (00:00-23:59), not '25:00'",
        "/jobs/j.toml:14: schedule.at: entry 4 ('14:00') is given twice",
        "/jobs/j.toml:15: schedule.retry_backoff: must be a number from 1 (a fixed wait) to 10, not 0.5",
    ]
    assert problems('\n[schedule]\nretry_every = "10s"\n') == [
        '/jobs/j.toml:12: schedule: give rpo = "15m" (a pass every 15 minutes) and/or at = ["02:00"] (daily times)'
    ]
    assert problems('\n[schedule]\nrpo = "0s"\n')[0].endswith("not '0s'")


def test_durations() -> None:
    assert [parse_duration(v) for v in ("45s", "15m", "1h30m", "1d", " 2H ")] == [45, 900, 5400, 86400, 7200]
    assert [parse_duration(v) for v in ("", "15", "m", "1.5h", 15, "15mm")] == [None] * 6


def test_interval_times_run_start_to_start_and_a_missed_slot_runs_once() -> None:
    s = Schedule(rpo=600.0)
    assert s.next_run(None, 1000.0) == 1000.0  # never ran: now
    assert s.next_run(1000.0, 1200.0) == 1600.0
    assert s.next_run(1000.0, 99999.0) == 1600.0  # down for hours: due now, once
    assert s.rpo_limit() == 600.0


def test_calendar_times_are_local_and_daily() -> None:
    at = ((2, 0), (14, 0))
    t = datetime(2026, 3, 10, 13, 59, 30).timestamp()
    assert next_time(at, t) == datetime(2026, 3, 10, 14, 0).timestamp()
    assert next_time(at, datetime(2026, 3, 10, 14, 0).timestamp()) == datetime(2026, 3, 11, 2, 0).timestamp()
    s = Schedule(at=at)
    assert s.next_run(None, t) == datetime(2026, 3, 10, 14, 0).timestamp()
    assert s.rpo_limit() == 12 * 3600
    assert Schedule(at=((23, 0), (1, 0))).rpo_limit() is not None
    assert Schedule(at=((1, 0), (23, 0))).rpo_limit() == 22 * 3600
    both = Schedule(rpo=3600.0, at=at)  # both apply: whichever comes first
    assert both.next_run(t, t + 1) == datetime(2026, 3, 10, 14, 0).timestamp()


def test_backoff() -> None:
    assert [Schedule(retry_every=15, retry_backoff=2).retry_delay(n) for n in (1, 2, 3)] == [15, 30, 60]
    assert [Schedule().retry_delay(n) for n in (1, 5)] == [15, 15]


def test_the_new_job_template_has_a_schedule() -> None:
    text = new_job_text(Path("/jobs/web.toml"), "web") + '[[vm]]\nname = "web01"\ndisks = ["/img/web01.img"]\n'
    s = parse_job(Path("/jobs/web.toml"), text).schedule
    assert s is not None and s.rpo == 900


def test_the_readme_example_loads_with_its_schedule() -> None:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    section = readme[readme.index("### Jobs") :]
    example = section[section.index("```toml") + len("```toml") : section.index("```\n", section.index("```toml") + 7)]
    s = parse_job(Path("/jobs/web.toml"), example).schedule
    assert s == Schedule(rpo=900.0, at=((2, 0), (14, 0)))
