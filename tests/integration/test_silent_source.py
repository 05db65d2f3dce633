"""A source that goes silent loses its pass (and the VM's lock); one at work keeps it with KEEPALIVEs.

Real target and source over loopback SSH; the target's idle timeout is shortened from 60 s to
IDLE seconds, the source's keep-alive interval accordingly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from protocol.messages import DiskReady, MsgType
from source_agent import session as source_session
from source_agent.disks import open_disk
from source_agent.planning import Plan
from source_agent.session import DiskJob, PassOptions, run_pass
from target_agent.storage.lock import VmLock
from tests.integration.test_bad_input import SIZE, _valid_block, frame, opened, read_frames
from tests.support.agents import Keys, Target, replicate, snapshot, wait_idle
from tests.support.tools import BS, make_image
from vzcommon.errors import ExitCode

IDLE = 1.5


@pytest.fixture
async def quick_target(tmp_path: Path, session_keys: Keys) -> AsyncIterator[Target]:
    t = await Target(tmp_path / "data", session_keys, idle_timeout=IDLE).start()
    try:
        yield t
    finally:
        await t.stop()


async def test_a_silent_source_is_rolled_back_and_frees_the_vm(quick_target: Target, tmp_path: Path) -> None:
    target = quick_target
    src = make_image(tmp_path / "d.img", SIZE, data_blocks=20)
    await replicate(target.spec(), "victim", [src], tmp_path / "state")
    before = snapshot(target.vm("victim"))

    # Authenticated, subsystem open, HELLO and OPEN_DISK answered, a few blocks written: then nothing.
    tunnel = await opened(target)
    try:
        for i in range(3):
            tunnel.write(frame(MsgType.BLOCK, _valid_block(i * BS)))
        await tunnel.drain()
        t0 = time.monotonic()
        assert VmLock.is_held(target.vm("victim"))
        replies = await read_frames(tunnel)  # what the target says when it gives up
        waited = time.monotonic() - t0
    finally:
        await tunnel.close()
    (code, message) = next(f for t, f in replies if t == MsgType.ERROR)
    assert code == ExitCode.CONNECTION and f"sent nothing for {IDLE:g} s" in message, message
    assert IDLE - 0.5 <= waited <= IDLE + 5, waited
    await wait_idle(target.vm("victim"), limit=5)
    assert not VmLock.is_held(target.vm("victim"))
    assert snapshot(target.vm("victim")) == before  # rolled back

    report = await replicate(target.spec(), "victim", [src], tmp_path / "state")
    assert report.ok


async def test_a_source_at_work_but_silent_keeps_its_pass_with_keepalives(
    quick_target: Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Longer than the idle timeout without a block to send, twice: while planning a disk (state
    STREAMING: a slow CBT query) and between disks (IDLE: the last disk's clean-up)."""
    monkeypatch.setattr(source_session, "KEEPALIVE_INTERVAL", IDLE / 4)
    work = 2 * IDLE

    async def slow_plan(ready: DiskReady) -> Plan:
        await asyncio.sleep(work)
        return Plan()

    readers = [open_disk(make_image(tmp_path / f"d{i}.img", SIZE, data_blocks=5, seed=i), f"d{i}") for i in (0, 1)]
    try:
        jobs = [DiskJob(reader=r, planner=slow_plan, cleanup=lambda: time.sleep(work)) for r in readers]
        report = await run_pass(quick_target.spec(), "busy", jobs, PassOptions(state_dir=tmp_path / "state"))
    finally:
        for r in readers:
            r.close()
    assert report.ok and report.seconds > 3 * work

