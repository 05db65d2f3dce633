"""Every message survives encode -> frame -> decode unchanged (hypothesis round trips)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import codec, framing
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.messages import (
    MESSAGE_CLASSES,
    Block,
    Commit,
    Committed,
    DiskEnd,
    DiskReady,
    Error,
    Hello,
    KeepAlive,
    MapChunk,
    MapEnd,
    Message,
    MsgType,
    OpenDisk,
    ReplicaState,
    Request,
    Welcome,
    ZeroRange,
    valid_name,
)

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,20}", fullmatch=True).filter(valid_name)
tokens = st.from_regex(r"[\x21-\x7e]{0,40}", fullmatch=True)
ids = st.integers(0, 255)
offsets = st.integers(0, 1 << 50)
hashes = st.binary(min_size=32, max_size=32)
block_sizes = st.sampled_from([1 << k for k in range(16, 23)])
strs = st.lists(st.text(max_size=30), max_size=4).map(tuple)

MESSAGES = {
    MsgType.HELLO: st.builds(
        Hello, st.integers(0, 65535), st.text(max_size=20), names, strs, strs, block_sizes
    ),
    MsgType.WELCOME: st.builds(
        Welcome, st.integers(0, 65535), st.text(max_size=20), st.text(max_size=20), strs, block_sizes
    ),
    MsgType.OPEN_DISK: st.builds(
        OpenDisk, ids, names, st.integers(1, 1 << 30).map(lambda n: n * 512), tokens, tokens
    ),
    MsgType.DISK_READY: st.builds(
        DiskReady, ids, tokens, st.integers(0, 2), tokens, st.integers(0, 1 << 40), strs
    ),
    MsgType.MAP_CHUNK: st.builds(
        MapChunk,
        ids,
        st.integers(0, 1 << 30),
        st.integers(1, 64).flatmap(lambda n: st.binary(min_size=32 * n, max_size=32 * n)),
    ),
    MsgType.MAP_END: st.builds(MapEnd, ids, tokens, st.integers(0, 1 << 30)),
    MsgType.BLOCK: st.builds(
        lambda d, o, h, p: Block(d, o, len(p), h, 0, p),
        ids,
        offsets,
        hashes,
        st.binary(min_size=1, max_size=4096),
    ),
    MsgType.ZERO_RANGE: st.builds(ZeroRange, ids, offsets, st.integers(1, 1 << 40)),
    MsgType.DISK_END: st.builds(DiskEnd, ids, st.integers(0, 1 << 40), st.integers(0, 1 << 40)),
    MsgType.COMMIT: st.builds(Commit, st.integers(0, 256), st.booleans()),
    MsgType.COMMITTED: st.builds(Committed, tokens, st.booleans(), st.text(max_size=200)),
    MsgType.ERROR: st.builds(Error, st.integers(0, 255), st.text(max_size=200)),
    MsgType.KEEPALIVE: st.just(KeepAlive()),
    MsgType.REQUEST: st.one_of(
        st.sampled_from(["points", "end-test"]).map(Request),
        st.builds(Request, st.just("test-failover"), tokens),
    ),
    MsgType.REPLICA_STATE: st.builds(
        ReplicaState,
        st.sampled_from(["file", "vsphere"]),
        st.lists(
            st.tuples(tokens, st.text(max_size=30), st.text(max_size=10), tokens, st.booleans(), offsets),
            max_size=5,
        ).map(tuple),
        st.integers(0, 1 << 32),
        st.text(max_size=20),
        tokens,
        st.text(max_size=30),
        st.text(max_size=200),
        st.booleans(),
        st.text(max_size=200),
    ),
}


def test_every_type_has_a_strategy() -> None:
    assert set(MESSAGES) == set(MsgType) == set(MESSAGE_CLASSES)


@pytest.mark.parametrize("mtype", list(MsgType), ids=lambda t: t.name)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_round_trip(mtype: MsgType, data) -> None:
    msg: Message = data.draw(MESSAGES[mtype])
    frame = framing.encode_frame(msg.TYPE, codec.pack(msg.to_fields()))
    msg_type, length, crc = framing.parse_header(frame[: framing.HEADER_SIZE], framing.ABSOLUTE_MAX_BODY)
    body = frame[framing.HEADER_SIZE :]
    assert length == len(body)
    framing.check_crc(frame[: framing.HEADER_SIZE], body, crc)
    assert MESSAGE_CLASSES[MsgType(msg_type)].from_fields(codec.unpack(body)) == msg


@pytest.mark.parametrize(
    "build",
    [
        lambda: OpenDisk(0, "../etc", 512, "", ""),
        lambda: OpenDisk(0, "a/b", 512, "", ""),
        lambda: OpenDisk(0, "d", 513, "", ""),
        lambda: OpenDisk(-1, "d", 512, "", ""),
        lambda: OpenDisk(0, "x" * 65, 512, "", ""),
        lambda: Block(0, -1, 1, b"h" * 32, 0, b"x"),
        lambda: Block(0, 0, 2, b"h" * 32, 0, b"x"),
        lambda: Block(0, 0, 1, b"h" * 31, 0, b"x"),
        lambda: Block(0, 0, (4 << 20) + 1, b"h" * 32, 1, b"x"),
        lambda: Hello(1, "a", "vm", (), (), 1000),
        lambda: Hello(1, "a", "vm", (), (), 96 * 1024),
        lambda: Hello(4, "a", "vm", (), (), 65536, "job id with spaces"),
        lambda: Hello(4, "a", "vm", (), (), 65536, "j" * 65),
        lambda: Hello(4, "a", "vm", (), (), 65536, "", 1),
        lambda: Hello(4, "a", "vm", (), (), 65536, "", False, -1),
        lambda: Hello(4, "a", "vm", (), (), 65536, "", False, 10_001),
        lambda: MapChunk(0, 0, b"x" * 33),
        lambda: ZeroRange(0, 0, 0),
        lambda: Commit(True, False),
        lambda: Commit(1, "yes"),
        lambda: Committed("g", 1, ""),
        lambda: Committed("g", False, "x" * 5000),
        lambda: Hello(5, "a", "vm", (), (), 65536, "", False, 0, "failover"),
        lambda: Hello(5, "a", "vm", (), (), 65536, "", False, 0, "control", "pass-1"),
        lambda: Request("failover"),
        lambda: Request("commit"),
        lambda: Request("points", "g1"),
        lambda: Request("end-test", "g1"),
        lambda: Request("test-failover", "a point"),
        lambda: ReplicaState("nfs", (), 0, "", "", "", "", False, ""),
        lambda: ReplicaState("file", (("g", "t", "pass", "", True),), 0, "", "", "", "", False, ""),
        lambda: ReplicaState("file", (("g 1", "t", "pass", "", True, 0),), 0, "", "", "", "", False, ""),
        lambda: ReplicaState("file", (("g", "t", "pass", "", 1, 0),), 0, "", "", "", "", False, ""),
        lambda: ReplicaState("file", (("g", "t", "pass", "", True, -1),), 0, "", "", "", "", False, ""),
        lambda: ReplicaState("file", (("g", "t", "", "", False, 0),) * 1025, 0, "", "", "", "", False, ""),
        lambda: ReplicaState("file", (), 0, "test", "", "", "x" * 5000, False, ""),
    ],
)
def test_invalid_messages_refused_on_construction(build) -> None:
    with pytest.raises(LocalProtocolError):
        build()


def test_a_replica_state_from_the_peer_has_one_shape() -> None:
    """msgpack gives the rows as lists; the message holds them as tuples, as a locally built one does."""
    built = ReplicaState("file", (("g2", "t", "pass", "job", True, 0),), 0, "", "", "", "", False, "")
    got = ReplicaState.from_fields(codec.unpack(codec.pack(built.to_fields())))
    assert got == built and isinstance(got.points[0], tuple)
    with pytest.raises(RemoteProtocolError, match="invalid REPLICA_STATE"):
        ReplicaState.from_fields(["file", [["g", "t", "pass", "", True]], 0, "", "", "", "", False, ""])


def test_invalid_fields_from_peer_are_remote_errors() -> None:
    with pytest.raises(RemoteProtocolError, match="invalid OPEN_DISK"):
        OpenDisk.from_fields([0, "../../etc", 512, "", ""])
    with pytest.raises(RemoteProtocolError, match="fields"):
        OpenDisk.from_fields([0, "d", 512])
    with pytest.raises(RemoteProtocolError):
        codec.unpack(b"\x81\xa1a\x01")  # a map, not a field list
    with pytest.raises(RemoteProtocolError):
        codec.unpack(codec.pack([1]) + b"\x00")  # trailing bytes
