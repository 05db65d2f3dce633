from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import codec, framing
from protocol.connection import CLOSED, NEED_DATA, SourceConnection, TargetConnection
from protocol.errors import LocalProtocolError, RemoteProtocolError, VersionMismatch
from protocol.messages import (
    Block,
    Codec,
    Commit,
    Committed,
    DiskEnd,
    DiskReady,
    Error,
    Hello,
    KeepAlive,
    MapChunk,
    MapEnd,
    MapStatus,
    MsgType,
    OpenDisk,
    ReplicaState,
    Request,
    Welcome,
    ZeroRange,
)
from protocol.state import State
from protocol.version import PROTOCOL_VERSION

from .helpers import BS, Pair, hello, welcome

H = b"\x11" * 32


def open_disk(p: Pair, size: int = 4 * BS, disk_id: int = 0, name: str = "d0") -> None:
    p.deliver(p.source, OpenDisk(disk_id, name, size, "", ""))
    p.deliver(p.target, DiskReady(disk_id, "", MapStatus.EMPTY, "", 0, (), False))
    p.deliver(p.target, MapEnd(disk_id, "", 0))


def test_full_conversation() -> None:
    p = Pair()
    p.handshake()
    assert p.source.state is p.target.state is State.IDLE
    p.deliver(p.source, OpenDisk(0, "d0", 3 * BS + 512, "", "cid"))
    p.deliver(p.target, DiskReady(0, "g1", MapStatus.SENDING, "old", 2 * BS, ("note",), False))
    p.deliver(p.target, MapChunk(0, 0, H * 2))
    p.deliver(p.target, MapEnd(0, "g1", 2))
    assert p.source.state is State.STREAMING
    got = p.deliver(p.source, Block(0, 0, BS, H, Codec.NONE, b"x" * BS))
    assert got == [Block(0, 0, BS, H, Codec.NONE, b"x" * BS)]
    p.deliver(p.source, ZeroRange(0, BS, 2 * BS))
    p.deliver(p.source, Block(0, 3 * BS, 512, H, Codec.ZSTD, b"zz"))
    p.deliver(p.source, DiskEnd(0, 2, 2 * BS))
    p.deliver(p.source, Commit(1, False))
    p.deliver(p.target, Committed("g2", False, ""))
    assert p.source.state is p.target.state is State.DONE


def test_keepalive_only_while_the_source_speaks() -> None:
    p = Pair()
    assert not p.source.can_send(MsgType.KEEPALIVE)  # before HELLO
    p.deliver(p.source, hello())
    assert not p.source.can_send(MsgType.KEEPALIVE)  # the target's turn
    p.deliver(p.target, welcome())
    assert p.deliver(p.source, KeepAlive()) == [KeepAlive()] and p.target.state is State.IDLE
    open_disk(p)
    assert p.source.can_send(MsgType.KEEPALIVE) and not p.target.can_send(MsgType.KEEPALIVE)
    assert p.deliver(p.source, KeepAlive()) == [KeepAlive()] and p.target.state is State.STREAMING
    p.deliver(p.source, Block(0, 0, BS, H, Codec.NONE, b"x" * BS))
    p.deliver(p.source, KeepAlive())
    p.deliver(p.source, DiskEnd(0, 1, 0))  # the keep-alives count as nothing
    p.deliver(p.source, Commit(1, False))
    assert not p.source.can_send(MsgType.KEEPALIVE)
    with pytest.raises(LocalProtocolError, match="KEEPALIVE"):
        p.source.send(KeepAlive())
    # From the target, or out of turn, it is the peer's protocol error.
    q = Pair()
    q.handshake()
    q.source.receive_data(_raw_frame(KeepAlive()))
    with pytest.raises(RemoteProtocolError, match="KEEPALIVE from the target is not allowed"):
        q.source.next_event()


def test_version_mismatch_names_both_versions() -> None:
    p = Pair()
    s = SourceConnection(protocol_version=7)
    with pytest.raises(VersionMismatch, match=f"version 7.*version {PROTOCOL_VERSION}"):
        p.target.receive_data(s.send(Hello(7, "x", "vm", ("blake3-256",), (), BS)))
        p.target.next_event()
    assert p.target.state is State.ERROR
    # The target may still tell the source why, once.
    p.target.send(Error(8, "version mismatch"))
    with pytest.raises(LocalProtocolError):
        p.target.send(Error(8, "again"))


def test_a_hello_carries_the_job_id_the_job_rule_and_the_retention() -> None:
    p = Pair()
    msg = Hello(PROTOCOL_VERSION, "t", "vm", ("blake3-256",), ("none",), BS, "0b7d2f3e-3c55", True, 5)
    (got,) = p.deliver(p.source, msg)
    assert isinstance(got, Hello) and (got.job, got.require_replica, got.restore_points) == (
        "0b7d2f3e-3c55",
        True,
        5,
    )


def test_a_protocol_3_hello_is_a_version_mismatch_naming_both_versions() -> None:
    """A source of protocol 3 sends six fields: refused for its version, not for its field count."""
    p = Pair()
    old = [3, "vzrep-source/0.1", "vm", ["blake3-256"], ["none"], BS]
    frame = framing.encode_frame(MsgType.HELLO, codec.pack(old))
    p.target.receive_data(frame)
    with pytest.raises(
        VersionMismatch, match=f"protocol version 3, the target speaks version {PROTOCOL_VERSION}"
    ):
        p.target.next_event()


def control_hello(version: int = PROTOCOL_VERSION) -> Hello:
    return Hello(version, "t", "vm", ("blake3-256",), ("zstd", "none"), BS, mode="control")


ANSWER = ReplicaState(
    "file", (("g2", "2026-12-07T10:00:00+00:00", "pass", "", True, 0),), 0, "", "", "", "", False, ""
)


def test_a_control_session_is_one_request_and_its_answer() -> None:
    p = Pair()
    p.deliver(p.source, control_hello())
    p.deliver(p.target, welcome())
    assert p.source.state is p.target.state is State.CONTROL
    assert p.deliver(p.source, Request("test-failover", "g1")) == [Request("test-failover", "g1")]
    assert p.target.state is State.ANSWERING and not p.source.can_send(MsgType.REQUEST)
    assert p.deliver(p.target, ANSWER) == [ANSWER]
    assert p.source.state is p.target.state is State.DONE
    with pytest.raises(LocalProtocolError, match="REQUEST"):  # one request a session
        p.source.send(Request("points"))


def test_a_control_session_carries_no_pass_and_a_pass_no_request() -> None:
    p = Pair()
    p.deliver(p.source, control_hello())
    p.deliver(p.target, welcome())
    rogue = SourceConnection()
    rogue.state, rogue.block_size = State.IDLE, BS  # a peer that opens a disk in a control session
    p.target.receive_data(rogue.send(OpenDisk(0, "d0", BS, "", "")))
    with pytest.raises(
        RemoteProtocolError, match="OPEN_DISK from the source is not allowed in state control"
    ):
        p.target.next_event()
    q = Pair()
    q.handshake()  # a pass
    with pytest.raises(LocalProtocolError, match="cannot send REQUEST"):
        q.source.send(Request("points"))
    q2 = Pair()
    q2.handshake()
    q2.target.receive_data(framing.encode_frame(MsgType.REQUEST, codec.pack(["points", ""])))
    with pytest.raises(RemoteProtocolError, match="REQUEST from the source is not allowed in state idle"):
        q2.target.next_event()
    assert q2.target.state is State.ERROR


def test_a_refused_request_is_an_error_in_place_of_the_answer() -> None:
    p = Pair()
    p.deliver(p.source, control_hello())
    p.deliver(p.target, welcome())
    p.deliver(p.source, Request("end-test"))
    (got,) = p.deliver(p.target, Error(15, "VM 'vm' is failed-over: only the DR site ends it"))
    assert isinstance(got, Error) and p.source.state is p.target.state is State.ERROR


def test_an_older_target_names_both_versions_to_a_control_hello() -> None:
    """A protocol-4 target meets a protocol-5 source's control HELLO: a version mismatch, at once."""
    old = TargetConnection(protocol_version=4)
    old.receive_data(SourceConnection().send(control_hello()))
    with pytest.raises(
        VersionMismatch,
        match=f"source speaks protocol version {PROTOCOL_VERSION}, the target speaks version 4",
    ):
        old.next_event()
    assert old.state is State.ERROR


def test_a_newer_peer_is_told_the_versions_before_its_fields_are_judged() -> None:
    """A HELLO of a newer protocol with a mode this agent does not know, a WELCOME with a field it does
    not know: each is a version mismatch naming both versions, not a complaint about a field."""
    t = TargetConnection()
    newer = [PROTOCOL_VERSION + 1, "s", "vm", ["blake3-256"], ["none"], BS, "", False, 0, "future-mode", ""]
    t.receive_data(framing.encode_frame(MsgType.HELLO, codec.pack(newer)))
    with pytest.raises(
        VersionMismatch, match=f"version {PROTOCOL_VERSION + 1}, the target speaks version {PROTOCOL_VERSION}"
    ):
        t.next_event()
    s = SourceConnection()
    s.send(hello())
    later = [*Welcome(PROTOCOL_VERSION + 1, "t", "blake3-256", (), BS).to_fields(), "a new field"]
    s.receive_data(framing.encode_frame(MsgType.WELCOME, codec.pack(later)))
    with pytest.raises(VersionMismatch, match=f"target speaks protocol version {PROTOCOL_VERSION + 1}"):
        s.next_event()


def test_out_of_order_message_is_remote_error() -> None:
    p = Pair()
    rogue = SourceConnection()
    rogue.state = State.IDLE  # a peer that skipped the handshake
    rogue.block_size = BS
    frame = rogue.send(OpenDisk(0, "d0", BS, "", ""))
    p.target.receive_data(frame)
    with pytest.raises(RemoteProtocolError, match="not allowed in state await-hello"):
        p.target.next_event()
    assert p.target.state is State.ERROR
    with pytest.raises(RemoteProtocolError):
        p.target.next_event()


def test_local_misuse_is_local_error() -> None:
    s = SourceConnection()
    with pytest.raises(LocalProtocolError):
        s.send(welcome())
    assert s.state is State.ERROR


@pytest.mark.parametrize(
    "bad, match",
    [
        (Block(0, 5 * BS, BS, H, 0, b"x" * BS), "beyond the end"),
        (Block(0, 100, BS, H, 0, b"x" * BS), "not aligned"),
        (Block(0, 0, 100, H, 0, b"x" * 100), "not one block"),
        (Block(1, 0, BS, H, 0, b"x" * BS), "not the disk open"),
        (ZeroRange(0, 0, 5 * BS), "beyond the end"),
        (ZeroRange(0, 0, 100), "whole blocks"),
        (DiskEnd(0, 3, 0), "DISK_END counts"),
    ],
)
def test_context_checks(bad, match) -> None:
    p = Pair()
    p.handshake()
    open_disk(p)
    # Bypass the sender's own checks to act as a hostile source.
    rogue = SourceConnection()
    rogue.__dict__.update({k: v for k, v in p.source.__dict__.items() if not k.startswith("_buf")})
    frame = _raw_frame(bad)
    p.target.receive_data(frame)
    with pytest.raises(RemoteProtocolError, match=match):
        p.target.next_event()
    assert p.target.state is State.ERROR


def test_offsets_must_increase() -> None:
    p = Pair()
    p.handshake()
    open_disk(p)
    p.deliver(p.source, Block(0, BS, BS, H, 0, b"x" * BS))
    p.target.receive_data(_raw_frame(Block(0, 0, BS, H, 0, b"x" * BS)))
    with pytest.raises(RemoteProtocolError, match="backwards"):
        p.target.next_event()


def test_duplicate_disk_and_commit_count() -> None:
    p = Pair()
    p.handshake()
    open_disk(p)
    p.deliver(p.source, DiskEnd(0, 0, 0))
    with pytest.raises(LocalProtocolError, match="already opened"):
        p.source.send(OpenDisk(0, "d1", BS, "", ""))
    p2 = Pair()
    p2.handshake()
    p2.target.receive_data(_raw_frame(Commit(2, False)))
    with pytest.raises(RemoteProtocolError, match="COMMIT for 2 disks"):
        p2.target.next_event()


def test_unknown_codec_refused_after_negotiation() -> None:
    p = Pair()
    p.deliver(p.source, Hello(PROTOCOL_VERSION, "t", "vm", ("blake3-256",), ("none",), BS))
    p.deliver(p.target, welcome().__class__(PROTOCOL_VERSION, "t", "blake3-256", (), BS))
    open_disk(p)
    p.target.receive_data(_raw_frame(Block(0, 0, BS, H, Codec.ZSTD, b"z")))
    with pytest.raises(RemoteProtocolError, match="codec 1 was not negotiated"):
        p.target.next_event()


def test_oversized_frame_refused_before_body_arrives() -> None:
    t = TargetConnection()
    header = framing.HEADER.pack(framing.MAGIC, 1, 1, framing.HANDSHAKE_MAX_BODY + 1, 0)
    t.receive_data(header)  # no body at all: the header alone must be refused
    with pytest.raises(RemoteProtocolError, match="exceeds the limit"):
        t.next_event()


def test_oversized_after_handshake_uses_negotiated_limit() -> None:
    p = Pair()
    p.handshake()
    limit = max(BS, framing.MAP_CHUNK_ENTRIES * 32) + framing.BODY_OVERHEAD
    p.target.receive_data(framing.HEADER.pack(framing.MAGIC, 1, 7, limit + 1, 0))
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        p.target.next_event()


def test_bad_crc_magic_version_unknown_type() -> None:
    frame = bytearray(SourceConnection().send(hello()))
    frame[-1] ^= 1
    t = TargetConnection()
    t.receive_data(bytes(frame))
    with pytest.raises(RemoteProtocolError, match="CRC"):
        t.next_event()
    for mutate, match in [
        ((0, 0x41), "magic"),
        ((2, 9), "frame version 9"),
        ((3, 99), "unknown message type"),
    ]:
        f = bytearray(SourceConnection().send(hello()))
        f[mutate[0]] = mutate[1]
        if mutate[0] == 3:
            f[:] = framing.encode_frame(99, bytes(f[12:]))
        t = TargetConnection()
        t.receive_data(bytes(f))
        with pytest.raises(RemoteProtocolError, match=match):
            t.next_event()


def test_partial_frames_and_eof() -> None:
    frame = SourceConnection().send(hello())
    t = TargetConnection()
    for b in frame[:-1]:
        t.receive_data(bytes([b]))
        assert t.next_event() is NEED_DATA
    t.receive_data(frame[-1:])
    assert t.next_event() == hello()
    t.receive_data(b"")
    assert t.next_event() is CLOSED
    t2 = TargetConnection()
    t2.receive_data(frame[:20])
    t2.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="closed inside"):
        t2.next_event()


def test_error_from_peer_is_an_event() -> None:
    p = Pair()
    p.handshake()
    got = p.deliver(p.target, Error(9, "disk full"))
    assert got == [Error(9, "disk full")]
    assert p.source.state is State.ERROR


def _raw_frame(msg) -> bytes:
    from protocol import codec

    return framing.encode_frame(msg.TYPE, codec.pack(msg.to_fields()))


SOURCE_MSGS = [
    hello(),
    OpenDisk(0, "d0", 8 * BS, "", ""),
    Block(0, 0, BS, H, Codec.NONE, bytes(range(256)) * (BS // 256)),
    ZeroRange(0, BS, BS),
    Block(0, 2 * BS, BS, H, Codec.ZSTD, b"z" * 1000),
    Block(0, 3 * BS, BS, H, Codec.NONE, b"\x07" * BS),
    DiskEnd(0, 3, BS),
    Commit(1, False),
]


def _answer(t: TargetConnection, msg: object) -> None:
    """What the target says back, so that its state machine lets the source go on."""
    if isinstance(msg, Hello):
        t.send(welcome())
    elif isinstance(msg, OpenDisk):
        t.send(DiskReady(0, "", MapStatus.EMPTY, "", 0, (), False))
        t.send(MapEnd(0, "", 0))


def _source_stream() -> bytes:
    p = Pair()
    out = b""
    for m in SOURCE_MSGS:
        frame = p.source.send(m)
        out += frame
        p.target.receive_data(frame)
        while (ev := p.target.next_event()) is not NEED_DATA:
            _answer(p.target, ev)
            if isinstance(ev, Hello):
                p.source.receive_data(welcome_frame())
            elif isinstance(ev, OpenDisk):
                p.source.receive_data(ready_frames())
        while p.source.next_event() is not NEED_DATA:
            pass
    return out


def welcome_frame() -> bytes:
    t = TargetConnection()
    t.receive_data(SourceConnection().send(hello()))
    t.next_event()
    return t.send(welcome())


def ready_frames() -> bytes:
    p = Pair()
    p.handshake()
    p.deliver(p.source, OpenDisk(0, "d0", 8 * BS, "", ""))
    return p.target.send(DiskReady(0, "", MapStatus.EMPTY, "", 0, (), False)) + p.target.send(
        MapEnd(0, "", 0)
    )


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=4 * BS + 400), max_size=40))
def test_a_stream_cut_anywhere_gives_the_same_messages(cuts: list[int]) -> None:
    """Frames reach the target in whatever pieces the tunnel returns: headers and bodies split
    across pieces, several frames in one piece, single bytes. The messages must not depend on it."""
    stream = _source_stream()
    t = TargetConnection()
    got = []
    pos = 0
    for cut in [*sorted({c for c in cuts if 0 < c < len(stream)}), len(stream)]:
        t.receive_data(stream[pos:cut])
        pos = cut
        while (ev := t.next_event()) is not NEED_DATA:
            got.append(ev)
            _answer(t, ev)
    assert got == SOURCE_MSGS
    t.receive_data(b"")
    assert t.next_event() is CLOSED
