"""The appliance's bandwidth limit, shared by every pass process: a token bucket in a small file.

``vzrep-source run`` starts each pass as a process of its own, so the appliance's limit cannot be an
object in memory: it is a file (beside the daemon's history, ``<db>.bandwidth``) that holds the
bucket's two numbers -- bytes of credit and when they were counted (``CLOCK_MONOTONIC``, the same
clock in every process of the machine) -- and the rules (:mod:`.bandwidth`), so that a rule the
administrator changes applies to passes already running. The daemon writes the rules
(:func:`store_rules`); each pass's :class:`SharedBucket` takes credit from it.

Each take locks the file (``flock``), reads it, refills the credit at the rate of the rule that holds
now, reserves one *chunk* (``CHUNK_SECONDS`` of the rate, at least 4 KiB), writes it back and unlocks:
a few system calls, about twenty times a second per pass whatever the rate. Credit may go negative:
the pass that took it sleeps until the bucket has paid its debt, so concurrent passes queue up in
the order they asked, together never faster than the rate (beyond one burst, ``BURST_SECONDS`` of
it), and a pass alone gets the whole rate. The pass spends its chunk frame by frame before it asks
again.

Why this cannot leak or lock the budget: the lock is held only between two system calls, never
across an ``await`` or a sleep, and the kernel drops a ``flock`` when its process dies, SIGKILL
included; a pass never blocks on the lock (it tries, and yields to its event loop between tries),
so its SSH keep-alives go on even if a holder was stopped. A pass killed while it waits leaves at
most its one chunk of debt (``CHUNK_SECONDS``) for the others to wait out.

Outside every window no credit is taken: the pass looks at the file again every ``RECHECK`` seconds.

The file is not state to survive a crash: the daemon writes it anew at each start, in place (the
running passes keep its name open between takes, not its inode). Format, little-endian: a header
``magic "VZBW", version u16, rule count u16, credit f64, counted-at f64, crc32 u32`` then each rule
``rate f64, group u8, weekdays u8 (bit 0 Monday), start u16, end u16``; the crc32 covers all but
itself. Rules of one *group* are one schedule (the first whose window holds); groups (``run
--limit`` and the jobs directory's ``appliance.toml``) all apply, the smallest rate wins.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import fcntl
import os
import struct
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

from vzcommon.errors import InputError, IntegrityError

from .bandwidth import Rule, Schedule

MAGIC = b"VZBW"
VERSION = 1
_HEAD = struct.Struct("<4sHHddI")
_RULE = struct.Struct("<dBBHH")
MAX_RULES = 64
CHUNK_SECONDS = 0.05  # credit taken at once: 20 takes a second per pass, and what a killed one leaves
MIN_CHUNK = 4096.0
BURST_SECONDS = 0.25  # as Limiter: credit an idle appliance may save up (at least 256 KiB)
MIN_BURST = 256 * 1024.0
RECHECK = 1.0  # with no rule holding, how often a pass looks at the rules again
LOCK_RETRY = 0.001


def strictest(rates: Sequence[float]) -> float:
    """The rate when several limits hold: the smallest that limits (0: none does)."""
    return min((r for r in rates if r > 0), default=0.0)


def encode(credit: float, at: float, groups: Sequence[Schedule]) -> bytes:
    rules = [(g, r) for g, s in enumerate(groups) for r in s.rules]
    if len(rules) > MAX_RULES:
        raise InputError(f"{len(rules)} bandwidth rules: at most {MAX_RULES} for the appliance")
    body = b"".join(_RULE.pack(r.rate, g, sum(1 << d for d in r.days), r.start, r.end) for g, r in rules)
    head = _HEAD.pack(MAGIC, VERSION, len(rules), credit, at, 0)[: _HEAD.size - 4]
    return head + struct.pack("<I", zlib.crc32(head + body)) + body


def decode(data: bytes, path: Path) -> tuple[float, float, tuple[Schedule, ...], bytes]:
    """(credit, counted at, the groups' schedules, the rules' bytes) of a bucket file's content."""
    why = ""
    if len(data) < _HEAD.size:
        why = "too short"
    else:
        magic, version, count, credit, at, crc = _HEAD.unpack_from(data)
        body = data[_HEAD.size : _HEAD.size + count * _RULE.size]
        if magic != MAGIC:
            why = "not a bandwidth bucket"
        elif version != VERSION:
            why = f"version {version}, this agent reads {VERSION}"
        elif count > MAX_RULES or len(body) != count * _RULE.size:
            why = "truncated"
        elif zlib.crc32(data[: _HEAD.size - 4] + body) != crc:
            why = "bad checksum"
    if why:
        raise IntegrityError(
            f"the shared bandwidth bucket {path} is unusable ({why}): restart vzrep-source run, which"
            " writes it anew"
        )
    groups: dict[int, list[Rule]] = {}
    for i in range(count):
        rate, g, days, start, end = _RULE.unpack_from(body, i * _RULE.size)
        groups.setdefault(g, []).append(
            Rule(rate, frozenset(d for d in range(7) if days >> d & 1), start, end)
        )
    return credit, at, tuple(Schedule(tuple(rs)) for _, rs in sorted(groups.items())), body


class _Locked:
    """The bucket file opened and ``flock``-ed; never held across an await (see the module docstring)."""

    def __init__(self, path: Path, create: bool = False) -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0), 0o600)
        except FileNotFoundError:
            raise InputError(
                f"no shared bandwidth bucket at {path}: vzrep-source run writes it (beside its --db) and"
                " gives its passes --shared-limit"
            ) from None
        except OSError as exc:
            raise InputError(f"cannot open the shared bandwidth bucket {path}: {exc.strerror}") from None

    def try_lock(self) -> bool:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        return True

    def read(self) -> bytes:
        return os.pread(self.fd, _HEAD.size + MAX_RULES * _RULE.size, 0)

    def write(self, data: bytes) -> None:
        if os.pwrite(self.fd, data, 0) != len(data):
            raise IntegrityError(f"short write to the shared bandwidth bucket {self.path}")

    def close(self) -> None:
        os.close(self.fd)  # drops the lock too


async def _locked(path: Path, sleep: Callable[[float], object], create: bool = False) -> _Locked:
    f = _Locked(path, create)
    try:
        while not f.try_lock():  # a holder keeps it for two system calls: yield, never block the loop
            await sleep(LOCK_RETRY)  # type: ignore[misc]
    except BaseException:
        f.close()
        raise
    return f


async def store_rules(
    path: Path,
    groups: Sequence[Schedule],
    *,
    fresh: bool = False,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = asyncio.sleep,
) -> None:
    """The daemon's side: write the rules (creating the file), keeping the credit unless ``fresh``.

    In place, under the lock: running passes read the new rules at their next take."""
    f = await _locked(path, sleep, create=True)
    try:
        credit, at = 0.0, clock()
        if not fresh:
            try:
                credit, at, _, _ = decode(f.read(), path)
            except IntegrityError:  # new, or left by another version: start empty
                pass
        data = encode(credit, at, groups)
        f.write(data)
        os.ftruncate(f.fd, len(data))
    finally:
        f.close()


def check(path: Path) -> None:
    """Refuse a bucket file that is missing or unreadable before the pass connects, not at its first frame."""
    f = _Locked(path)
    try:
        decode(f.read(), path)
    finally:
        f.close()


class SharedBucket:
    """A pass's handle on the appliance's bucket file: ``await take(n)`` before sending n bytes, which
    returns the seconds it waited (``clock``/``now``/``sleep`` are for tests)."""

    active = True  # rules may appear while the pass runs

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], dt.datetime] = dt.datetime.now,
        sleep: Callable[[float], object] = asyncio.sleep,
    ) -> None:
        self.path = path
        self._clock, self._now, self._sleep = clock, now, sleep
        self._credit = 0.0  # reserved in the file, not yet sent
        self._free_until = -1.0

    async def take(self, n: int) -> float:
        waited = 0.0
        while self._credit < n:
            if self._clock() < self._free_until:
                return waited  # no rule held at the last look
            rate, wait = await self._reserve()
            if rate <= 0:
                self._credit = 0.0
                self._free_until = self._clock() + RECHECK
                return waited
            if wait > 0:
                await self._sleep(wait)  # type: ignore[misc]
                waited += wait
        self._credit -= n
        return waited

    async def _reserve(self) -> tuple[float, float]:
        """Take one chunk: (the rate now, seconds until the bucket has paid for it)."""
        f = await _locked(self.path, self._sleep)
        try:
            credit, at, groups, body = decode(f.read(), self.path)
            rate = strictest([s.rate(self._now()) for s in groups])
            if rate <= 0:
                return 0.0, 0.0
            t = self._clock()  # read under the lock: the takes of all processes are in clock order
            cap = max(rate * BURST_SECONDS, MIN_BURST)
            credit = min(cap, credit + max(0.0, t - at) * rate)  # t < at: a clock of an earlier boot
            chunk = max(rate * CHUNK_SECONDS, MIN_CHUNK)
            credit -= chunk
            head = _HEAD.pack(MAGIC, VERSION, len(body) // _RULE.size, credit, t, 0)[: _HEAD.size - 4]
            f.write(head + struct.pack("<I", zlib.crc32(head + body)))
        finally:
            f.close()
        self._credit += chunk
        return rate, max(0.0, -credit / rate)
