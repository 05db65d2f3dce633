"""Bandwidth rules and the token bucket, on a fake clock (no sleeping, no timing)."""

from __future__ import annotations

import datetime as dt

import pytest

from source_agent.bandwidth import Limiter, Limiters, Schedule, parse_rate, parse_rule
from vzcommon.errors import InputError

MON_9 = dt.datetime(2026, 12, 7, 9, 0)  # a Monday
SAT_9 = dt.datetime(2026, 12, 12, 9, 0)


@pytest.mark.parametrize(
    ("text", "rate"),
    [("20MB/s", 20e6), ("100Mbit", 12.5e6), ("512KiB/s", 512 * 1024), ("1GB", 1e9), ("unlimited", 0), ("0", 0)],
)
def test_rates(text: str, rate: float) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["fast", "20", "20 parsecs", "1KB/s", "-5MB/s"])
def test_bad_rates_name_what_is_expected(text: str) -> None:
    with pytest.raises(InputError, match="bandwidth"):
        parse_rate(text)


def test_windows_by_day_and_time_and_over_midnight() -> None:
    office = parse_rule("20MB/s@mon-fri/08:00-18:00")
    assert office.holds(MON_9) and not office.holds(SAT_9)
    assert not office.holds(MON_9.replace(hour=18)) and office.holds(MON_9.replace(hour=17, minute=59))
    night = parse_rule("5MB/s@fri/22:00-06:00")  # Friday night into Saturday morning
    assert night.holds(dt.datetime(2026, 12, 11, 23, 0)) and night.holds(dt.datetime(2026, 12, 12, 5, 59))
    assert not night.holds(dt.datetime(2026, 12, 12, 23, 0)) and not night.holds(dt.datetime(2026, 12, 11, 5, 0))
    wrap = parse_rule("1MB/s@sat-mon/00:00-24:00")  # a range of days that wraps the week
    assert wrap.holds(SAT_9) and wrap.holds(MON_9) and not wrap.holds(MON_9 + dt.timedelta(days=1))


@pytest.mark.parametrize("text", ["20MB/s@mon-fri", "20MB/s@funday/08:00-09:00", "20MB/s@08:00-08:00", "20MB/s@25:00-26:00"])
def test_bad_windows_are_refused(text: str) -> None:
    with pytest.raises(InputError, match="window"):
        parse_rule(text)


def test_first_matching_rule_wins_and_outside_every_window_is_unlimited() -> None:
    s = Schedule.parse(["20MB/s@mon-fri/08:00-18:00", "50MB/s@mon-fri/18:00-20:00"])
    assert s.rate(MON_9) == 20e6 and s.rate(MON_9.replace(hour=19)) == 50e6
    assert s.rate(SAT_9) == 0 and s.rate(MON_9.replace(hour=21)) == 0


class FakeTime:
    def __init__(self) -> None:
        self.t = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds


async def test_the_bucket_holds_a_sender_to_the_rate() -> None:
    ft = FakeTime()
    lim = Limiter(Schedule.parse(["1MB/s"]), clock=ft.clock, now=lambda: MON_9, sleep=ft.sleep)
    for _ in range(100):  # 10 MB in 100 KB frames
        await lim.take(100_000)
    assert 9.5 <= ft.t <= 10.0  # 10 s at 1 MB/s, less the first burst (at most 256 KiB)
    assert lim.waited == pytest.approx(ft.t)


async def test_no_rule_now_means_no_wait_and_two_limiters_both_apply() -> None:
    ft = FakeTime()
    office = Limiter(Schedule.parse(["1MB/s@mon-fri/08:00-18:00"]), clock=ft.clock, now=lambda: SAT_9, sleep=ft.sleep)
    await office.take(50_000_000)
    assert ft.slept == []  # Saturday: unlimited
    own = Limiter(Schedule.parse(["4MB/s"]), clock=ft.clock, now=lambda: MON_9, sleep=ft.sleep)
    appliance = Limiter(Schedule.parse(["1MB/s"]), clock=ft.clock, now=lambda: MON_9, sleep=ft.sleep)
    both = Limiters(own, appliance, None)
    for _ in range(40):
        await both.take(100_000)
    assert 3.5 <= ft.t <= 4.1  # the slower of the two sets the pace: 4 MB at 1 MB/s
