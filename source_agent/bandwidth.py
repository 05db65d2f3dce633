"""Bandwidth limits: how fast a pass may send, by time of day, per pass and shared by the appliance.

A limit is written ``RATE`` or ``RATE@DAYS/HH:MM-HH:MM``: ``20MB/s@mon-fri/08:00-18:00`` holds on
weekdays from 8 to 18 (local time), and outside every window the link is not limited. Rates take
``B``, ``KB``, ``MB``, ``GB`` (powers of 1000), ``KiB``, ``MiB``, ``GiB`` per second, or bits:
``kbit``, ``Mbit``, ``Gbit`` (``100Mbit``). The first rule whose window holds now applies.

The limit is applied where the pass writes its frames (:class:`Limiters`) -- the application's
bytes, after compression. SSH's own keep-alives and window adjustments are not held back by it, so
a slow link never starves them; with ``--compress auto`` the scanner sees the sender fall behind and
compresses more, which is what a limited link wants. A pass answers to two limits, and each frame
waits for both: its own (``--limit``, a job's ``limit``: a :class:`Limiter` in the pass's process)
and the appliance's, shared by every pass process the daemon starts (``run --limit``, the jobs
directory's ``appliance.toml``: a token bucket in a file, :mod:`.shared_bucket`, which a pass is
given as ``--shared-limit PATH``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from vzcommon.errors import InputError

_UNITS = {
    "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3,
    "bit": 1 / 8, "kbit": 1000 / 8, "mbit": 1000**2 / 8, "gbit": 1000**3 / 8,
}  # fmt: skip
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]+)(?:/s)?\s*$", re.IGNORECASE)
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(r"^(?:([a-z]{3})(?:-([a-z]{3}))?/)?(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$", re.IGNORECASE)


def parse_rate(text: str) -> float:
    """Bytes per second of ``20MB/s``, ``100Mbit``, ``512KiB/s``; ``0`` or ``unlimited``: no limit (0)."""
    if text.strip().lower() in ("0", "unlimited", "none"):
        return 0.0
    m = _RATE.match(text)
    unit = m and m.group(2).lower()
    if m is None or unit not in _UNITS:
        raise InputError(
            f"bandwidth {text!r}: expected a number and a unit (B, KB, MB, GB, KiB, MiB, GiB per second, or"
            " kbit, Mbit, Gbit), e.g. 20MB/s or 100Mbit"
        )
    rate = float(m.group(1)) * _UNITS[unit]
    if rate < 4096:
        raise InputError(f"bandwidth {text!r} is below 4 KB/s: a pass could not keep its connection alive")
    return rate


@dataclass(frozen=True)
class Rule:
    rate: float  # bytes per second; 0: unlimited
    days: frozenset[int] = frozenset(range(7))  # Monday = 0
    start: int = 0  # minutes after midnight
    end: int = 24 * 60  # exclusive; may be < start (a window over midnight)

    def holds(self, when: dt.datetime) -> bool:
        minute = when.hour * 60 + when.minute
        if self.start <= self.end:
            return when.weekday() in self.days and self.start <= minute < self.end
        # over midnight: the part after midnight belongs to the day the window started
        if minute >= self.start:
            return when.weekday() in self.days
        return (when.weekday() - 1) % 7 in self.days and minute < self.end


def parse_rule(text: str) -> Rule:
    rate_text, at, window = text.partition("@")
    rate = parse_rate(rate_text)
    if not at:
        return Rule(rate)
    m = _WINDOW.match(window.strip())
    if m is None:
        raise InputError(
            f"bandwidth window {window!r}: expected [DAY[-DAY]/]HH:MM-HH:MM, e.g. mon-fri/08:00-18:00"
        )
    d1, d2, h1, m1, h2, m2 = m.groups()
    for d in (d1, d2):
        if d and d.lower() not in _DAYS:
            raise InputError(f"bandwidth window {window!r}: {d!r} is not a day ({', '.join(_DAYS)})")
    if d1:
        a, b = _DAYS.index(d1.lower()), _DAYS.index((d2 or d1).lower())
        days = frozenset((a + i) % 7 for i in range((b - a) % 7 + 1))
    else:
        days = frozenset(range(7))
    start, end = int(h1) * 60 + int(m1), int(h2) * 60 + int(m2)
    if not (0 <= start < 24 * 60 and 0 < end <= 24 * 60) or start == end:
        raise InputError(f"bandwidth window {window!r}: times must be 00:00-24:00 and not equal")
    return Rule(rate, days, start, end)


@dataclass(frozen=True)
class Schedule:
    """Rules in order; the first whose window holds gives the rate (none: unlimited)."""

    rules: tuple[Rule, ...] = ()

    @classmethod
    def parse(cls, specs: Sequence[str]) -> Schedule:
        return cls(tuple(parse_rule(s) for s in specs))

    def rate(self, when: dt.datetime) -> float:
        return next((r.rate for r in self.rules if r.holds(when)), 0.0)


class Limiter:
    """A token bucket whose rate follows a :class:`Schedule`: ``await take(n)`` before sending n bytes.

    The bucket holds at most ``burst_seconds`` of the current rate (at least 256 KiB), so an idle
    pass cannot save up a burst that would flood the link; ``clock``/``now`` are for tests.
    """

    def __init__(
        self,
        schedule: Schedule,
        *,
        burst_seconds: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], dt.datetime] = dt.datetime.now,
        sleep: Callable[[float], object] = asyncio.sleep,
    ) -> None:
        self.schedule = schedule
        self.burst_seconds = burst_seconds
        self._clock, self._now, self._sleep = clock, now, sleep
        self._tokens = 0.0
        self._last = clock()
        self._lock = asyncio.Lock()
        self.waited = 0.0  # seconds spent held back, for the report

    @property
    def active(self) -> bool:
        return bool(self.schedule.rules)

    def current_rate(self) -> float:
        return self.schedule.rate(self._now())

    async def take(self, n: int) -> float:
        """Wait until n bytes may be sent; the seconds waited."""
        rate = self.current_rate()
        if rate <= 0:
            return 0.0
        async with self._lock:  # the pass's frames queue up in order
            cap = max(rate * self.burst_seconds, 256 * 1024.0)
            t = self._clock()
            self._tokens = min(cap, self._tokens + (t - self._last) * rate)
            self._last = t
            self._tokens -= n
            if self._tokens < 0:
                wait = -self._tokens / rate
                self.waited += wait
                await self._sleep(wait)  # type: ignore[misc]
                return wait
            return 0.0


class Bucket(Protocol):
    """A limit a frame waits for: :class:`Limiter`, or the appliance's :class:`.shared_bucket.SharedBucket`."""

    @property
    def active(self) -> bool: ...

    async def take(self, n: int) -> float: ...


class Limiters:
    """All limits a pass answers to: its own and the appliance's (each ``take`` waits for both)."""

    def __init__(self, *limiters: Bucket | None) -> None:
        self.limiters = [lim for lim in limiters if lim is not None and lim.active]
        self.waited = 0.0  # seconds this pass was held back, for its report

    def __bool__(self) -> bool:
        return bool(self.limiters)

    async def take(self, n: int) -> None:
        for lim in self.limiters:
            self.waited += await lim.take(n)
