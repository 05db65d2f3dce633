"""Unauthenticated connections are capped per address and in total; a flood of idle ones neither
starves a real pass nor goes unlogged (target_agent.admission, target_agent.server).

The idle connections come from other loopback addresses (127.0.0.2, ...: all of 127/8 is loopback on
Linux), as a flood would come from other hosts; the real pass comes from 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from target_agent.admission import MAX_PER_ADDRESS, MAX_TOTAL, Admission
from tests.support.agents import Keys, Target, TargetProcess, replicate
from tests.support.tools import make_image

MiB = 1 << 20

# -- the rules alone (sans-I/O) -------------------------------------------------------------------


def test_per_address_cap_refuses_the_excess_and_authentication_frees_a_place() -> None:
    gate = Admission(per_address=2, total=10)
    assert gate.admit("a1", "A").admitted and gate.admit("a2", "A").admitted
    refused = gate.admit("a3", "A")
    assert not refused.admitted and "2 unauthenticated connections" in refused.reason
    assert gate.admit("b1", "B").admitted  # another address is not affected
    gate.done("a1")  # authenticated (or gone)
    gate.done("a1")  # idempotent
    assert gate.admit("a4", "A").admitted and gate.pending == 3


def test_total_cap_drops_the_oldest_of_the_busiest_address() -> None:
    gate = Admission(per_address=3, total=4)
    for conn, address in [("a1", "A"), ("b1", "B"), ("a2", "A"), ("a3", "A")]:
        assert gate.admit(conn, address).admitted
    verdict = gate.admit("c1", "C")
    assert verdict.admitted and verdict.evict == "a1" and gate.pending == 4
    assert gate.address_of("a1") is None and gate.address_of("c1") == "C"


def test_refusals_are_logged_once_per_address_and_interval() -> None:
    gate = Admission(log_interval=60.0)
    assert gate.refused("A", 0.0) == 1  # the first at once
    assert [gate.refused("A", t) for t in (1.0, 2.0, 59.0)] == [0, 0, 0]
    assert gate.refused("B", 3.0) == 1  # per address
    assert gate.refused("A", 61.0) == 4  # then one line with the count since the last


# -- a real target on 127.0.0.1 -------------------------------------------------------------------


@asynccontextmanager
async def idle_connections(port: int, sources: dict[str, int]) -> AsyncIterator[list[asyncio.StreamReader]]:
    """``sources[address]`` idle TCP connections from each address, made one after the other."""
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for address, count in sources.items():
            for _ in range(count):
                opened.append(await asyncio.open_connection("127.0.0.1", port, local_addr=(address, 0)))
        yield [r for r, _ in opened]
    finally:
        for _, w in opened:
            w.close()


async def closed_by_target(reader: asyncio.StreamReader, wait: float) -> bool:
    """Whether the target closed this connection (EOF) within ``wait`` seconds (an admitted one just
    sends its SSH version line and waits for ours)."""
    deadline = time.monotonic() + wait
    try:
        while (left := deadline - time.monotonic()) > 0:
            if not await asyncio.wait_for(reader.read(4096), left):
                return True
    except (TimeoutError, ConnectionError):
        pass
    return False


def events(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if name in line]


async def test_a_flood_of_idle_connections_is_capped_and_a_real_pass_gets_in(
    target: Target, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    disk = make_image(tmp_path / "d.img", 4 * MiB, data_blocks=20)
    excess = 20
    # One address: its share is kept, the rest is closed at once.
    async with idle_connections(target.port, {"127.0.0.2": MAX_PER_ADDRESS + excess}) as flood:
        verdicts = await asyncio.gather(*(closed_by_target(r, 3.0) for r in flood))
        assert verdicts == [False] * MAX_PER_ADDRESS + [True] * excess
        # Many addresses: more than MAX_TOTAL in all; the busiest address's oldest make room.
        others = {f"127.0.0.{i}": MAX_PER_ADDRESS for i in range(3, 3 + (MAX_TOTAL + excess) // MAX_PER_ADDRESS)}
        async with idle_connections(target.port, others) as more:
            held = len(flood) + len(more) - sum(await asyncio.gather(*(closed_by_target(r, 3.0) for r in flood + more)))
            assert held == MAX_TOTAL
            # All places taken by idle connections, yet a real pass from 127.0.0.1 replicates.
            report = await replicate(target.spec(), "vm1", [disk], tmp_path / "state")
            assert report.ok
    log = "".join(capsys.readouterr())
    refused, dropped = events(log, "ssh_connection_refused"), events(log, "ssh_connection_dropped")
    assert len(refused) == 1 and "127.0.0.2" in refused[0], refused  # 20 refusals: one line
    per_address = Counter(m.group() for line in refused + dropped if (m := re.search(r"127\.0\.0\.\d+", line)))
    assert len(per_address) > 1 and set(per_address.values()) == {1}, per_address  # one line per address


def open_files(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


async def test_idle_connections_beyond_the_file_limit_do_not_fail_a_pass(tmp_path: Path, session_keys: Keys) -> None:
    """The audit's case: a target limited to few open files (128 here), 300 idle connections from 30
    addresses, then a real `vzrep-source pass`."""
    disk = make_image(tmp_path / "d.img", 4 * MiB, data_blocks=20)
    log_path = tmp_path / "target.log"
    agent = TargetProcess(tmp_path / "data", session_keys, log_path, nofile=128).start()
    try:
        assert agent.proc is not None
        sources = {f"127.0.0.{i}": 10 for i in range(2, 32)}
        async with idle_connections(agent.port, sources):
            await asyncio.sleep(0.5)
            assert open_files(agent.proc.pid) < 128 - 16, "the idle connections hold the agent's files"
            proc = await asyncio.create_subprocess_exec(
                *agent.source_cmd("vm1", disk, tmp_path / "state", "--no-progress"),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            _, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, err.decode()
    finally:
        agent.stop()
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    refusals = [e for e in lines if e.get("event") in ("ssh_connection_refused", "ssh_connection_dropped")]
    assert refusals, "the refusals were not logged"
    assert len(refusals) <= len(sources), "more than one line per address"
    assert sum(e["connections"] for e in refusals) <= 300 - MAX_TOTAL
