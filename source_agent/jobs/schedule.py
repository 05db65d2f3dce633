"""A job's ``[schedule]``: when ``vzrep-source run`` passes its VMs, and how it retries (README, "Jobs").

Kept apart from :mod:`.model` (which only calls :func:`parse_schedule`) because it is the daemon's
part of the file: ``job run`` ignores it. The times are pure functions of a clock value given to them,
so the scheduler's tests need no sleeping.

* ``rpo = "15m"``: a pass starts every 15 minutes (start to start; a pass longer than that is followed
  at once by the next). The same value is the RPO the daemon watches: a VM whose last successful pass
  ended longer ago than this has missed its RPO.
* ``at = ["02:00", "14:00"]``: a pass at these local times every day. Alone, the RPO watched is the
  longest gap between two of them (12 h here). With ``rpo`` too, both apply.
* ``retry_every = "15s"``, ``retry_for = "30m"`` (Veeam's defaults), ``retry_backoff = 1.0``: a pass
  that failed for a reason that may pass (a lost link, a busy VM on the target) is tried again after
  ``retry_every``, each wait ``retry_backoff`` times the last, for ``retry_for`` from the first failure;
  then the VM waits for its next scheduled pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

DAY = 86400.0
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+)([smhd])")
_TIME = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
MIN_RPO = 1.0
MAX_RPO = 31 * DAY


@dataclass(frozen=True)
class Schedule:
    rpo: float | None = None  # seconds, start to start
    at: tuple[tuple[int, int], ...] = ()  # (hour, minute), local time, sorted
    retry_every: float = 15.0
    retry_for: float = 1800.0
    retry_backoff: float = 1.0
    #: seconds between two verifies of each VM (``verify = "7d"``): every block compared with the
    #: replica's bytes, nothing written (``vzrep-source verify``); None: never
    verify: float | None = None

    def next_run(self, last_start: float | None, now: float) -> float:
        """When the next scheduled pass is due: after ``last_start`` (None: never ran, due per ``now``).

        A slot missed while the daemon was down is due at once, once (no burst of catch-up passes)."""
        times: list[float] = []
        if self.rpo is not None:
            times.append(now if last_start is None else last_start + self.rpo)
        if self.at:
            times.append(next_time(self.at, now if last_start is None else last_start))
        return min(times) if times else float("inf")

    def rpo_limit(self) -> float | None:
        """The age of the last success past which the RPO is missed: ``rpo``, else the longest calendar gap."""
        if self.rpo is not None:
            return self.rpo
        if not self.at:
            return None
        mins = [h * 60 + m for h, m in self.at]
        gaps = [b - a for a, b in zip(mins, [*mins[1:], mins[0] + 1440], strict=True)]
        return max(gaps) * 60.0

    def retry_delay(self, failures: int) -> float:
        """The wait before retry number ``failures`` (1 for the first retry)."""
        return self.retry_every * self.retry_backoff ** max(failures - 1, 0)


def next_time(at: tuple[tuple[int, int], ...], after: float) -> float:
    """The first of the daily local times ``at`` strictly after ``after`` (a Unix time)."""
    base = datetime.fromtimestamp(after)
    best = float("inf")
    for day in (0, 1, 2):
        d = base.date() + timedelta(days=day)
        for h, m in at:
            t = datetime(d.year, d.month, d.day, h, m).timestamp()
            if t > after:
                best = min(best, t)
        if best < float("inf"):
            return best
    return best


def parse_duration(value: Any) -> float | None:
    """``"15m"``, ``"1h30m"``, ``"45s"``, ``"1d"`` -> seconds; None if it is not one."""
    if not isinstance(value, str):
        return None
    v = value.strip().lower().replace(" ", "")
    if not v or _DURATION.sub("", v):
        return None
    return float(sum(int(n) * _UNITS[u] for n, u in _DURATION.findall(v)))


class Reader(Protocol):
    """What :mod:`.model`'s reader gives: every problem collected with its line."""

    def fail(self, where: tuple[str | int, ...], message: str) -> None: ...
    def unknown(self, doc: dict[str, Any], known: set[str], where: tuple[str | int, ...]) -> None: ...


def parse_schedule(r: Reader, doc: dict[str, Any]) -> Schedule | None:
    """The ``[schedule]`` table, or None if the job has none (``vzrep-source run`` then leaves it alone)."""
    s = doc.get("schedule")
    if s is None:
        return None
    w: tuple[str | int, ...] = ("schedule",)
    if not isinstance(s, dict):
        r.fail(w, "must be a table ([schedule])")
        return None
    r.unknown(s, {"rpo", "at", "retry_every", "retry_for", "retry_backoff", "verify"}, w)

    def duration(key: str, default: float, low: float, high: float) -> float:
        if key not in s:
            return default
        n = parse_duration(s[key])
        if n is None or not low <= n <= high:
            r.fail(
                (*w, key),
                f'must be a duration from {_show(low)} to {_show(high)} such as "15m", "1h30m", "45s", not {s[key]!r}',
            )
            return default
        return n

    rpo = duration("rpo", 0.0, MIN_RPO, MAX_RPO) if "rpo" in s else None
    at: list[tuple[int, int]] = []
    raw_at = s.get("at", [])
    if not isinstance(raw_at, list) or ("at" in s and not raw_at):
        r.fail((*w, "at"), 'must be an array of local times "HH:MM", such as ["02:00", "14:00"]')
        raw_at = []
    for j, t in enumerate(raw_at):
        m = _TIME.fullmatch(t) if isinstance(t, str) else None
        if m is None:
            r.fail((*w, "at"), f'entry {j + 1} must be a local time "HH:MM" (00:00-23:59), not {t!r}')
            continue
        hm = (int(m.group(1)), int(m.group(2)))
        if hm in at:
            r.fail((*w, "at"), f"entry {j + 1} ({t!r}) is given twice")
        else:
            at.append(hm)
    if rpo is None and not at and "at" not in s:
        r.fail(w, 'give rpo = "15m" (a pass every 15 minutes) and/or at = ["02:00"] (daily times)')
    retry_every = duration("retry_every", 15.0, 1.0, DAY)
    retry_for = duration("retry_for", 1800.0, 0.0, 7 * DAY) if s.get("retry_for") not in ("0", 0) else 0.0
    backoff = s.get("retry_backoff", 1.0)
    if isinstance(backoff, bool) or not isinstance(backoff, int | float) or not 1.0 <= backoff <= 10.0:
        r.fail((*w, "retry_backoff"), f"must be a number from 1 (a fixed wait) to 10, not {backoff!r}")
        backoff = 1.0
    verify = duration("verify", 0.0, 60.0, 366 * DAY) if "verify" in s else None
    return Schedule(rpo, tuple(sorted(at)), retry_every, retry_for, float(backoff), verify)


def _show(seconds: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= n and seconds % n == 0:
            return f"{int(seconds // n)}{unit}"
    return f"{int(seconds)}s"
