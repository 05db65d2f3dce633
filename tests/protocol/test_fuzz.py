"""Garbage in, only RemoteProtocolError out.

Feeds random bytes and mutated valid conversations into both connection roles, then the end of the
stream. Every input must end one of three ways: a RemoteProtocolError that leaves the connection in
ERROR for good, a clean CLOSED at a frame boundary, or (the stream ending inside a frame) a
RemoteProtocolError that says so. At least 100k inputs run in the suite (VZREP_FUZZ_INPUTS sets
more). ``make fuzz`` is the coverage-guided search over the same decoder (fuzz/, target ``frame``).
"""

from __future__ import annotations

import itertools
import os
import random
from collections import Counter
from collections.abc import Callable

import pytest

from protocol import framing
from protocol.connection import CLOSED, NEED_DATA, Connection, SourceConnection, TargetConnection
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.framing import HEADER_SIZE
from protocol.messages import (
    Block,
    DiskEnd,
    DiskReady,
    Error,
    Hello,
    MapChunk,
    MapEnd,
    MapStatus,
    Message,
    MsgType,
    OpenDisk,
    ReplicaState,
    Request,
    ZeroRange,
)
from protocol.state import State
from protocol.version import PROTOCOL_VERSION

from .helpers import BS, hello, welcome

INPUTS = int(os.environ.get("VZREP_FUZZ_INPUTS", "100000"))


_OPEN = OpenDisk(0, "d0", 4 * BS, "", "")
_MAP: tuple[Message, ...] = (
    DiskReady(0, "g", MapStatus.SENDING, "", 2 * BS, (), False),
    MapChunk(0, 0, b"\x07" * 64),
    MapEnd(0, "g", 2),
)
_DATA: tuple[Message, ...] = (
    Block(0, 0, BS, b"h" * 32, 0, bytes(range(256)) * (BS // 256)),
    ZeroRange(0, BS, 2 * BS),
    DiskEnd(0, 1, 2 * BS),
)


def _valid_frames() -> tuple[list[bytes], list[bytes]]:
    """A valid conversation, frame by frame: what the source sends, and what the target sends."""
    s, t = SourceConnection(), TargetConnection()
    to_t: list[bytes] = []
    to_s: list[bytes] = []

    def go(sender: Connection, receiver: Connection, msg: Message, out: list[bytes]) -> None:
        frame = sender.send(msg)
        out.append(frame)
        receiver.receive_data(frame)
        assert receiver.next_event() == msg
        assert receiver.next_event() is NEED_DATA

    go(s, t, hello(), to_t)
    go(t, s, welcome(), to_s)
    go(s, t, _OPEN, to_t)
    for msg in _MAP:
        go(t, s, msg, to_s)
    for msg in _DATA:
        go(s, t, msg, to_t)
    return to_t, to_s


# Connections ready for a part of the conversation: [0] is the handshake, [1:] what follows.


def _source_after_hello() -> SourceConnection:
    src = SourceConnection()
    src.send(hello())
    return src


def _source_opening(to_s: list[bytes]) -> SourceConnection:
    """A source that has shaken hands and opened disk 0: what the target says next is about the disk."""
    src = _source_after_hello()
    src.receive_data(to_s[0])
    assert src.next_event() == welcome()
    src.send(_OPEN)
    return src


def _target_streaming(to_t: list[bytes]) -> TargetConnection:
    """A target that has shaken hands, opened disk 0 and sent its map: blocks come next."""
    target = TargetConnection()
    target.receive_data(to_t[0] + to_t[1])
    assert target.next_event() == hello()
    target.send(welcome())
    assert target.next_event() == _OPEN
    for msg in _MAP:
        target.send(msg)
    return target


def _frames_end_at(data: bytes) -> int:
    """Where the frames of ``data`` end by their headers' length fields alone (a judge that knows
    nothing of the connection): ``len(data)`` for whole frames, more if the last one is cut."""
    pos = 0
    while pos < len(data):
        if len(data) - pos < HEADER_SIZE:
            return pos + HEADER_SIZE
        pos += HEADER_SIZE + int.from_bytes(data[pos + 4 : pos + 8], "big")
    return pos


def _feed(conn: Connection, data: bytes, rng: random.Random) -> str:
    """Feed ``data`` in random steps, then the end of the stream; say how the connection ended.

    ``"error"``: a RemoteProtocolError, after which the connection is in ERROR and refuses to go on;
    ``"eof-inside-frame"``: the same, for a stream that ended inside a frame; ``"closed"``: every
    frame was accepted and the end of the stream came at a frame boundary. Any other exception
    propagates and fails the test.
    """
    try:
        pos = 0
        while pos < len(data):
            step = rng.choice((1, 7, 64, 4096, len(data)))
            conn.receive_data(data[pos : pos + step])
            pos += step
            while (event := conn.next_event()) is not NEED_DATA:
                assert isinstance(event, Message), f"{event} before the end of the stream"
        conn.receive_data(b"")
        while isinstance(event := conn.next_event(), Message):
            pass
        assert event is CLOSED, f"{event} after the end of the stream"
        assert _frames_end_at(data) == len(data), "a stream cut inside a frame passed for a clean close"
        return "closed"
    except RemoteProtocolError as exc:
        assert conn.state is State.ERROR, f"{conn.state} after {exc!r}"
        with pytest.raises(RemoteProtocolError):
            conn.next_event()  # and it stays there
        if "connection closed inside a frame" not in str(exc):
            return "error"
        # every frame before the cut was accepted, so the frame lengths step over the end
        assert _frames_end_at(data) > len(data), exc
        return "eof-inside-frame"


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
    to_t, to_s = _valid_frames()
    outcomes: Counter[str] = Counter()
    for i in range(INPUTS):
        kind = i % 5
        if kind == 0:
            outcomes[_feed(TargetConnection(), rng.randbytes(rng.randint(0, 64)), rng)] += 1
        elif kind == 1:
            # a target receiving a mutated HELLO, and maybe more
            data = _mutate(b"".join(to_t)[: rng.randint(0, 2 * len(to_t[0]))], rng)
            outcomes[_feed(TargetConnection(), data, rng)] += 1
        elif kind == 2:
            # a source whose HELLO is answered with a mutated WELCOME, and maybe more
            data = _mutate(b"".join(to_s)[: rng.randint(0, 2 * len(to_s[0]))], rng)
            outcomes[_feed(_source_after_hello(), data, rng)] += 1
        elif kind == 3:
            # a source that opened a disk, receiving a mutated DISK_READY and map
            outcomes[_feed(_source_opening(to_s), _mutate(b"".join(to_s[1:]), rng), rng)] += 1
        else:
            # a target mid-session receiving mutated blocks, cut anywhere
            data = b"".join(to_t[2:])
            data = _mutate(data[: rng.randint(0, len(data))], rng)
            outcomes[_feed(_target_streaming(to_t), data, rng)] += 1
    assert set(outcomes) == {"error", "closed", "eof-inside-frame"}, outcomes
    # the mutations mostly break something; a fuzz that only ever ended cleanly would test nothing
    assert outcomes["error"] + outcomes["eof-inside-frame"] > INPUTS // 2, outcomes


_ANSWER = ReplicaState(
    "file", (("g2", "2026-12-07T10:00:00+00:00", "pass", "job-1", True, 0), ("g1", "t", "seed", "", False, 4096)),
    1, "test", "g1", "2026-12-07T10:01:00+00:00", "exported to /srv/vzrep/web01/failover-test", False, "started",
)  # fmt: skip


def test_fuzz_control_sessions_only_protocol_errors() -> None:
    """A target that shook hands for a control session receiving a mutated REQUEST, a source that sent
    its request receiving a mutated REPLICA_STATE: only RemoteProtocolError, or a clean close."""
    rng = random.Random(20261207)
    s, t = SourceConnection(), TargetConnection()
    ask = Request("test-failover", "g1")
    frames = []
    for sender, receiver, msg in (
        (s, t, _control_hello()),
        (t, s, welcome()),
        (s, t, ask),
        (t, s, _ANSWER),
    ):
        frames.append(sender.send(msg))
        receiver.receive_data(frames[-1])
        assert receiver.next_event() == msg
    outcomes: Counter[str] = Counter()
    for i in range(max(INPUTS // 10, 1000)):
        if i % 2:
            target = TargetConnection()
            target.receive_data(frames[0])
            assert target.next_event() == _control_hello()
            target.send(welcome())
            outcomes[_feed(target, _mutate(frames[2], rng), rng)] += 1
        else:
            source = SourceConnection()
            source.send(_control_hello())
            source.receive_data(frames[1])
            assert source.next_event() == welcome()
            source.send(ask)
            outcomes[_feed(source, _mutate(frames[3], rng), rng)] += 1
    assert set(outcomes) <= {"error", "closed", "eof-inside-frame"} and outcomes["error"], outcomes


def _control_hello() -> Hello:
    return Hello(PROTOCOL_VERSION, "test", "vm1", ("blake3-256",), ("zstd", "none"), BS, mode="control")


def _cuts(frames: list[bytes]) -> list[tuple[int, int | None]]:
    """Where to cut a stream of ``frames``: ``(cut, how far into its frame)``, None at a boundary.
    Every byte of each frame's header, and the start and end of each body (the 64 KiB BLOCK body is
    not cut at each of its bytes)."""
    out: list[tuple[int, int | None]] = []
    starts = [0, *itertools.accumulate(len(f) for f in frames)]
    for start, frame in zip(starts, frames, strict=False):
        out.append((start, None))
        into = set(range(1, min(len(frame), HEADER_SIZE + 64))) | set(
            range(max(1, len(frame) - 64), len(frame))
        )
        out += [(start + k, k) for k in sorted(into)]
    out.append((starts[-1], None))
    return out


@pytest.mark.parametrize("part", ["target-handshake", "target-streaming", "source-handshake", "source-map"])
def test_end_of_stream_inside_a_frame_is_a_protocol_error(part: str) -> None:
    """The stream ending inside a frame header or body is the peer's fault; at a boundary it is CLOSED."""
    to_t, to_s = _valid_frames()
    frames = {
        "target-handshake": to_t[:1],
        "target-streaming": to_t[2:],
        "source-handshake": to_s[:1],
        "source-map": to_s[1:],
    }[part]
    ready: dict[str, Callable[[], Connection]] = {
        "target-handshake": TargetConnection,
        "target-streaming": lambda: _target_streaming(to_t),
        "source-handshake": _source_after_hello,
        "source-map": lambda: _source_opening(to_s),
    }
    stream = b"".join(frames)
    for cut, into in _cuts(frames):
        conn = ready[part]()
        conn.receive_data(stream[:cut])
        while isinstance(conn.next_event(), Message):
            pass
        conn.receive_data(b"")
        if into is None:
            assert conn.next_event() is CLOSED, cut
            continue
        where = "header" if into < HEADER_SIZE else "body"
        with pytest.raises(RemoteProtocolError, match=f"connection closed inside a frame {where}"):
            conn.next_event()
        assert conn.state is State.ERROR, cut
        with pytest.raises(RemoteProtocolError):
            conn.next_event()
        with pytest.raises(LocalProtocolError, match="after end of stream"):
            conn.receive_data(stream[cut : cut + 1])  # nothing can follow the end of the stream


def test_garbage_after_the_peers_error_leaves_the_connection_in_error() -> None:
    source, target = SourceConnection(), TargetConnection()
    target.receive_data(source.send(hello()))
    assert target.next_event() == hello()
    error_frame = source.send(Error(8, "giving up"))
    target.receive_data(error_frame)
    assert target.next_event() == Error(8, "giving up") and target.state is State.ERROR
    corrupt = bytearray(error_frame)
    corrupt[-1] ^= 0xFF
    target.receive_data(bytes(corrupt))
    with pytest.raises(RemoteProtocolError, match="CRC mismatch"):
        target.next_event()
    assert target.state is State.ERROR
    target.receive_data(error_frame)  # a second ERROR, after the garbage
    with pytest.raises(RemoteProtocolError):
        target.next_event()


def test_an_empty_frame_body_is_a_protocol_error() -> None:
    frame = framing.encode_frame(MsgType.HELLO, b"")  # a valid header and CRC; nothing to decode
    target = TargetConnection()
    target.receive_data(frame)
    with pytest.raises(RemoteProtocolError):
        target.next_event()
    assert target.state is State.ERROR
