"""Garbage in, only RemoteProtocolError out.

Feeds random bytes and mutated valid conversations into both connection roles. At least 100k inputs
run in the suite; ``make fuzz`` sets VZREP_FUZZ_INPUTS higher.
"""

from __future__ import annotations

import os
import random

from protocol.connection import NEED_DATA, Connection, SourceConnection, TargetConnection
from protocol.errors import RemoteProtocolError
from protocol.messages import (
    Block,
    DiskEnd,
    DiskReady,
    MapChunk,
    MapEnd,
    MapStatus,
    Message,
    OpenDisk,
    ZeroRange,
)

from .helpers import BS, hello, welcome

INPUTS = int(os.environ.get("VZREP_FUZZ_INPUTS", "100000"))


def _valid_stream() -> tuple[bytes, bytes]:
    """A valid conversation: what the source sends, and what the target sends."""
    s, t = SourceConnection(), TargetConnection()
    to_t, to_s = bytearray(), bytearray()

    def go(sender: Connection, receiver: Connection, msg: Message, out: bytearray) -> None:
        frame = sender.send(msg)
        out += frame
        receiver.receive_data(frame)
        while receiver.next_event() is not NEED_DATA:
            pass

    go(s, t, hello(), to_t)
    go(t, s, welcome(), to_s)
    go(s, t, OpenDisk(0, "d0", 4 * BS, "", ""), to_t)
    go(t, s, DiskReady(0, "g", MapStatus.SENDING, "", 2 * BS, ()), to_s)
    go(t, s, MapChunk(0, 0, b"\x07" * 64), to_s)
    go(t, s, MapEnd(0, "g", 2), to_s)
    go(s, t, Block(0, 0, BS, b"h" * 32, 0, bytes(range(256)) * (BS // 256)), to_t)
    go(s, t, ZeroRange(0, BS, 2 * BS), to_t)
    go(s, t, DiskEnd(0, 1, 2 * BS), to_t)
    return bytes(to_t), bytes(to_s)


def _feed(conn: Connection, data: bytes, rng: random.Random) -> None:
    try:
        pos = 0
        while pos < len(data):
            step = rng.choice((1, 7, 64, 4096, len(data)))
            conn.receive_data(data[pos : pos + step])
            pos += step
            while conn.next_event() is not NEED_DATA:
                pass
    except RemoteProtocolError:
        return


def _mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        i = rng.randrange(len(b)) if b else 0
        if op < 0.5 and b:
            b[i] = rng.randrange(256)
        elif op < 0.7:
            b[i:i] = rng.randbytes(rng.randint(1, 8))
        elif op < 0.85 and b:
            del b[i : i + rng.randint(1, 16)]
        else:
            j = rng.randrange(len(b)) if b else 0
            b[i:i] = b[j : j + rng.randint(1, 32)]
    return bytes(b)


def test_fuzz_only_protocol_errors() -> None:
    rng = random.Random(20261121)
    to_t, to_s = _valid_stream()
    handshake_end = to_s.index(b"VZ", 1)  # the source side after the WELCOME
    for i in range(INPUTS):
        kind = i % 4
        if kind == 0:
            _feed(TargetConnection(), rng.randbytes(rng.randint(0, 64)), rng)
        elif kind == 1:
            _feed(TargetConnection(), _mutate(to_t, rng), rng)
        elif kind == 2:
            src = SourceConnection()
            src.send(hello())
            _feed(src, _mutate(to_s, rng), rng)
        else:
            # A target mid-session receiving mutated frames from a header onwards.
            data = _mutate(to_t[: rng.randint(0, len(to_t))], rng)
            _feed(TargetConnection(), data, rng)
    assert handshake_end > 0
