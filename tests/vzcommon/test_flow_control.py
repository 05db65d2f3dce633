"""Flow control through the tunnel: a reader slower than its sender holds a bounded amount of data.

Both agents read the channel with ``tunnel_policy.read_size()``. The test sends through the real
server and client (asyncssh on 127.0.0.1) with a small window, to a reader that pauses after every
read, and measures the peak of Python's allocations while the data flows (``tracemalloc``).
"""

from __future__ import annotations

import asyncio
import tracemalloc

import pytest

from source_agent.tunnel import TargetSpec, open_tunnel
from target_agent.server import Stream, start_server
from tests.support.agents import Keys
from vzcommon import tunnel_policy

WINDOW = 1 << 20
PACKET = 64 << 10
TOTAL = 96 << 20  # 96 windows: a reader that leaked a window per pause would hold far more than 8


async def _peak_while_sending(keys: Keys) -> tuple[int, int]:
    """Send TOTAL bytes to a slow reader; return (bytes received, peak bytes allocated meanwhile)."""
    received = 0
    done = asyncio.get_running_loop().create_future()

    async def slow_reader(stream: Stream, peer: str) -> None:
        nonlocal received
        try:
            while received < TOTAL and (data := await stream.read()):
                received += len(data)
                await asyncio.sleep(0.003)  # the disk behind the reader is slower than the link
            await stream.write(b"done")
        finally:
            await stream.close()
            done.set_result(None)

    server, port = await start_server(slow_reader, "127.0.0.1", 0, keys.host_key, keys.authorized_keys)
    try:
        tunnel = await open_tunnel(TargetSpec("127.0.0.1", port, keys.client_key, keys.known_hosts(port)))
        block = bytes(PACKET)
        tracemalloc.start()
        try:
            for _ in range(TOTAL // PACKET):
                tunnel.write(block)
                await tunnel.drain()
            assert await asyncio.wait_for(tunnel.read(), 60) == b"done"
            peak = tracemalloc.get_traced_memory()[1]
            await tunnel.close()
            await done
        finally:
            tracemalloc.stop()
    finally:
        server.close()
        await server.wait_closed()
    return received, peak


async def test_slow_reader_holds_at_most_a_few_windows(session_keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tunnel_policy, "WINDOW", WINDOW)
    monkeypatch.setattr(tunnel_policy, "MAX_PKTSIZE", PACKET)
    received, peak = await _peak_while_sending(session_keys)
    assert received == TOTAL
    # The channel's buffer (a window), the stream's (a window and a packet), one read's result, and
    # the sender's packets in flight; a leak of one window per pause would pass this within 8 pauses.
    assert peak < 8 * WINDOW, f"{peak / WINDOW:.1f} windows allocated at the peak"
