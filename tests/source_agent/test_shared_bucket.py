"""The appliance's bucket file shared by pass processes: on a virtual clock, two handles on one file
stand for two processes (each opens and locks the file anew at every take, as a process does); the
kernel's side (a SIGKILLed holder of the lock, a killed waiter's debt) with real processes."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from source_agent.bandwidth import Limiter, Limiters, Schedule
from source_agent.shared_bucket import (
    CHUNK_SECONDS,
    MIN_BURST,
    RECHECK,
    SharedBucket,
    _Locked,
    check,
    decode,
    store_rules,
)
from vzcommon.errors import InputError, IntegrityError

MON_9 = dt.datetime(2026, 12, 7, 9, 0)  # a Monday
SAT_9 = dt.datetime(2026, 12, 12, 9, 0)
MB = 1_000_000


class VirtualTime:
    """A clock that moves only when every task waits: a sleeper runs once the tasks that were ready
    have run up to their own sleep and no one wakes before it."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.wakes: list[float] = []

    def clock(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        wake = self.t + seconds
        self.wakes.append(wake)
        while True:
            await asyncio.sleep(0)  # the tasks that are ready run up to their own sleep
            if min(self.wakes) >= wake:
                break
        self.wakes.remove(wake)
        self.t = max(self.t, wake)


def handle(path: Path, vt: VirtualTime, now: dt.datetime = MON_9) -> SharedBucket:
    return SharedBucket(path, clock=vt.clock, now=lambda: now, sleep=vt.sleep)


async def store(path: Path, vt: VirtualTime, *groups: list[str], fresh: bool = False) -> None:
    await store_rules(path, [Schedule.parse(g) for g in groups], fresh=fresh, clock=vt.clock, sleep=vt.sleep)


async def send(bucket: SharedBucket, total: int, frame: int = 64 * 1024) -> float:
    """``total`` bytes (rounded up to whole frames); the seconds waited."""
    waited = 0.0
    for _ in range(-(-total // frame)):
        waited += await bucket.take(frame)
    return waited


async def test_a_pass_alone_gets_the_whole_rate(tmp_path: Path) -> None:
    vt = VirtualTime()
    path = tmp_path / "b"
    await store(path, vt, ["1MB/s"], fresh=True)
    t0 = vt.t
    waited = await send(handle(path, vt), 10 * MB)
    # no static split: 10 MB at 1 MB/s take 10 s (plus at most the chunk taken ahead), not more
    assert 9.9 <= vt.t - t0 <= 10.0 + CHUNK_SECONDS + 1e-9
    assert waited == pytest.approx(vt.t - t0)


async def test_two_passes_together_keep_to_the_rate_and_neither_is_starved(tmp_path: Path) -> None:
    vt = VirtualTime()
    path = tmp_path / "b"
    await store(path, vt, ["1MB/s"], fresh=True)
    t0 = vt.t
    done: dict[str, float] = {}

    async def one(name: str, frame: int) -> None:
        await send(handle(path, vt), 5 * MB, frame)
        done[name] = vt.t - t0

    await asyncio.gather(one("a", 64 * 1024), one("b", 1 << 20))  # small frames against large ones
    assert max(done.values()) >= (10 * MB - MIN_BURST) / 1e6  # together: 1 MB/s
    assert min(done.values()) >= 8.5  # taking turns: each sent its half at about half the rate
    assert max(done.values()) <= 10.5  # and together they had the whole of it


async def test_the_daemon_changes_the_rules_under_running_passes(tmp_path: Path) -> None:
    vt = VirtualTime()
    path = tmp_path / "b"
    await store(path, vt, ["1MB/s"], fresh=True)
    b = handle(path, vt)
    t0 = vt.t
    await send(b, 2 * MB, 100_000)
    assert 1.9 <= vt.t - t0 <= 2.1
    await store(path, vt, ["4MB/s"])  # in place: the same pass reads it at its next take
    t1 = vt.t
    await send(b, 8 * MB, 100_000)
    assert 1.9 <= vt.t - t1 <= 2.1


async def test_outside_every_window_nothing_waits_and_a_new_rule_is_seen_within_a_recheck(
    tmp_path: Path,
) -> None:
    vt = VirtualTime()
    path = tmp_path / "b"
    await store(path, vt, ["1MB/s@mon-fri/08:00-18:00"], fresh=True)
    b = handle(path, vt, now=SAT_9)
    assert await send(b, 50 * MB) == 0 and vt.t == 1000.0  # Saturday: unlimited
    await store(path, vt, ["1MB/s"])
    assert await b.take(1 * MB) == 0  # looked less than RECHECK ago: not yet
    vt.t += RECHECK
    assert await b.take(1 * MB) >= (1 * MB - MIN_BURST) / 1e6 - 1e-9  # less the burst the idle bucket saved


async def test_every_group_applies_and_the_smaller_rate_wins(tmp_path: Path) -> None:
    vt = VirtualTime()
    path = tmp_path / "b"
    await store(path, vt, ["4MB/s"], ["1MB/s@mon-fri/08:00-18:00"], fresh=True)  # run --limit, appliance.toml
    t0 = vt.t
    await send(handle(path, vt), 4 * MB, 100_000)
    assert 3.9 <= vt.t - t0 <= 4.1
    t1 = vt.t
    await send(handle(path, vt, now=SAT_9), 4 * MB, 100_000)  # the file's window is closed: 4 MB/s
    assert 0.9 <= vt.t - t1 <= 1.1


async def test_a_pass_counts_only_its_own_waits(tmp_path: Path) -> None:
    vt = VirtualTime()
    path = tmp_path / "b"
    await store(path, vt, ["1MB/s"], fresh=True)
    own = Limiter(Schedule.parse(["4MB/s"]), clock=vt.clock, now=lambda: MON_9, sleep=vt.sleep)
    a, b = Limiters(own, handle(path, vt)), Limiters(handle(path, vt))

    async def run(lims: Limiters) -> None:
        for _ in range(20):
            await lims.take(100_000)

    t0 = vt.t
    await asyncio.gather(run(a), run(b))
    assert vt.t - t0 >= 3.5  # 4 MB at the appliance's 1 MB/s
    assert a.waited <= vt.t - t0 + 1e-9 and b.waited <= vt.t - t0 + 1e-9  # not the sum of both


async def test_a_missing_or_broken_bucket_is_refused_with_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no shared bandwidth bucket at .*vzrep-source run writes it"):
        check(tmp_path / "none")
    (tmp_path / "junk").write_bytes(b"not a bucket at all, not at all, no")
    with pytest.raises(IntegrityError, match="restart vzrep-source run"):
        check(tmp_path / "junk")
    vt = VirtualTime()
    await store(tmp_path / "b", vt, ["1MB/s"], fresh=True)
    data = bytearray((tmp_path / "b").read_bytes())
    data[-1] ^= 1  # a rule's byte: the checksum catches it
    (tmp_path / "b").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="bad checksum"):
        await handle(tmp_path / "b", vt).take(1)
    await store(tmp_path / "b", vt, ["1MB/s"])  # the daemon writes it anew: usable again
    check(tmp_path / "b")


HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(600)
"""

WAIT = """
import asyncio, sys
from source_agent.shared_bucket import SharedBucket
print("taking", flush=True)
asyncio.run(SharedBucket(__import__("pathlib").Path(sys.argv[1])).take(10**9))
"""


def _python(code: str, path: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), str(path)], stdout=subprocess.PIPE, text=True, env=env
    )


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.stdout is not None
    proc.stdout.close()


async def test_a_sigkilled_holder_of_the_lock_blocks_no_one(tmp_path: Path) -> None:
    path = tmp_path / "b"
    await store_rules(path, [Schedule.parse(["100MB/s"])], fresh=True)
    proc = _python(HOLD, path)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        probe = _Locked(path)
        try:
            assert not probe.try_lock()  # really held by the other process
        finally:
            probe.close()
    finally:
        _kill(proc)
    slept: list[float] = []

    async def note(s: float) -> None:
        slept.append(s)

    assert await SharedBucket(path, sleep=note).take(1000) >= 0  # the kernel dropped the dead one's lock
    assert all(s <= 2 * CHUNK_SECONDS for s in slept)


async def test_a_pass_killed_while_it_waits_leaves_at_most_one_chunk_of_debt(tmp_path: Path) -> None:
    path = tmp_path / "b"
    await store_rules(path, [Schedule.parse(["8KB/s"])], fresh=True)
    before = path.read_bytes()
    proc = _python(WAIT, path)  # a frame of 1 GB at 8 KB/s: it waits for ever, a chunk at a time
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "taking\n"
        for _ in range(1000):  # until it has reserved its first chunk
            if path.read_bytes() != before:
                break
            await asyncio.sleep(0.01)
    finally:
        _kill(proc)
    credit, _, _, _ = decode(path.read_bytes(), path)
    chunk = 8000 * CHUNK_SECONDS if 8000 * CHUNK_SECONDS > 4096 else 4096
    assert -chunk - 1e-6 <= credit < 0  # it had reserved; no more than one chunk stays owed
    slept: list[float] = []

    async def note(s: float) -> None:
        slept.append(s)

    await SharedBucket(path, sleep=note).take(1)
    assert sum(slept) <= 2 * chunk / 8000 + 1e-6  # the next pass waits out that chunk and its own
