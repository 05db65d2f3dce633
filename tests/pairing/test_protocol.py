"""Pair tests for the sans-I/O pairing protocol: one side's output is fed to the other's input."""

from __future__ import annotations

import json
import struct

import pytest

from pairing.protocol import (
    MAX_ATTEMPTS,
    NEED_DATA,
    CodeGate,
    CodeUnavailable,
    FrameReader,
    PairingProtocolError,
    SourcePaired,
    SourcePairing,
    State,
    TargetPaired,
    TargetPairing,
    WrongCode,
    encode,
    new_code,
    normalise_code,
)
from vzcommon.errors import PairingError
from vzcommon.ssh import asyncssh

HOST_KEY = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
CLIENT_KEY = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()


def _msg(data: bytes) -> dict:
    frames = FrameReader()
    frames.receive_data(data)
    msg = frames.next_message()
    assert msg is not NEED_DATA and frames.next_message() is NEED_DATA
    assert isinstance(msg, dict)
    return msg


def run_pair(source_code: str, target_code: str) -> tuple[SourcePaired, TargetPaired, list[bytes]]:
    """Run both sides; returns both results and the wire messages (for replay tests)."""
    src = SourcePairing(source_code, CLIENT_KEY, "src")
    tgt = TargetPairing(normalise_code(target_code), HOST_KEY, 2222, "tgt")
    wire = [src.start()]
    reply, _ = tgt.handle(_msg(wire[-1]))
    assert reply is not None
    wire.append(reply)
    reply, _ = src.handle(_msg(reply))
    assert reply is not None
    wire.append(reply)
    reply, target_result = tgt.handle(_msg(reply))
    assert reply is not None
    wire.append(reply)
    none, source_result = src.handle(_msg(reply))
    assert none is None
    return source_result, target_result, wire


def test_right_code_exchanges_keys():
    code = new_code()
    source_result, target_result, _ = run_pair(code, code)
    assert source_result == SourcePaired(HOST_KEY, 2222, "tgt")
    assert target_result == TargetPaired(CLIENT_KEY, "src")


def test_codes_are_typed_loosely():
    source_result, _, _ = run_pair("abcd-efgh", "ABCDEFGH")
    assert source_result.host_key == HOST_KEY
    assert normalise_code("0O1Il-2345") == b"00111" + b"2345"


def test_short_code_is_refused():
    with pytest.raises(PairingError, match="too short"):
        normalise_code("12-34")


def test_wrong_code_fails_on_the_source_before_it_reveals_anything():
    src = SourcePairing("AAAA-AAAA", CLIENT_KEY, "src")
    tgt = TargetPairing(normalise_code("BBBB-BBBB"), HOST_KEY, 2222, "tgt")
    reply, _ = tgt.handle(_msg(src.start()))
    assert reply is not None
    with pytest.raises(WrongCode):
        src.handle(_msg(reply))
    assert src.state is State.ERROR


def test_wrong_code_from_an_attacker_source_fails_on_the_target():
    """A source that skips its own check still cannot produce the target's expected confirmation."""
    tgt = TargetPairing(normalise_code("BBBB-BBBB"), HOST_KEY, 2222, "tgt")
    attacker = SourcePairing("AAAA-AAAA", CLIENT_KEY, "evil")
    reply, _ = tgt.handle(_msg(attacker.start()))
    assert reply is not None
    pake = _msg(reply)
    forged = encode({"t": "confirm", "confirm": pake["confirm"], "box": pake["confirm"]})
    with pytest.raises(WrongCode):
        tgt.handle(_msg(forged))
    assert tgt.state is State.ERROR


def test_replay_of_a_captured_exchange_fails():
    code = "CDEF-GHJK"
    _, _, wire = run_pair(code, code)
    # An attacker who recorded a whole successful exchange replays the source's messages to a target
    # with the same code: the target's SPAKE2 message is fresh, so the recorded confirmation is wrong.
    tgt = TargetPairing(normalise_code(code), HOST_KEY, 2222, "tgt")
    tgt.handle(_msg(wire[0]))
    with pytest.raises(WrongCode):
        tgt.handle(_msg(wire[2]))
    # Replaying the target's side to a fresh source fails the same way.
    src = SourcePairing(code, CLIENT_KEY, "src")
    src.start()
    with pytest.raises(WrongCode):
        src.handle(_msg(wire[1]))


def test_messages_out_of_order_are_protocol_errors():
    tgt = TargetPairing(normalise_code("CDEF-GHJK"), HOST_KEY, 2222, "tgt")
    with pytest.raises(PairingProtocolError):
        tgt.handle({"t": "confirm", "confirm": "AA==", "box": "AA=="})
    assert tgt.state is State.ERROR
    with pytest.raises(PairingProtocolError):
        tgt.handle({"t": "hello", "v": 1, "pake": "AA=="})


@pytest.mark.parametrize(
    "msg",
    [
        {"t": "hello", "v": 2, "pake": "AA=="},
        {"t": "hello", "v": 1},
        {"t": "hello", "v": 1, "pake": "not base64!"},
        {"t": "hello", "v": 1, "pake": "QUFBQQ=="},
        {"t": "hello", "v": 1, "pake": 5},
        {"t": "nonsense"},
    ],
)
def test_garbage_hello_is_a_remote_protocol_error(msg):
    tgt = TargetPairing(normalise_code("CDEF-GHJK"), HOST_KEY, 2222, "tgt")
    with pytest.raises(PairingProtocolError):
        tgt.handle(msg)


def test_frame_reader_limits_and_partial_input():
    frames = FrameReader()
    data = encode({"t": "x"})
    frames.receive_data(data[:3])
    assert frames.next_message() is NEED_DATA
    frames.receive_data(data[3:])
    assert frames.next_message() == {"t": "x"}
    for bad in (struct.pack(">I", 10**6), struct.pack(">I", 3) + b"abc", struct.pack(">I", 2) + b"[]"):
        frames = FrameReader()
        frames.receive_data(bad)
        with pytest.raises(PairingProtocolError):
            frames.next_message()


def test_fuzzed_frames_only_raise_remote_protocol_errors():
    import random

    rng = random.Random(5)
    for _ in range(300):
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 60)))
        if rng.random() < 0.5:
            body = json.dumps({"t": rng.choice(["hello", "confirm", "pake", "x"]), "pake": body.hex()}).encode()
        frames = FrameReader()
        frames.receive_data(struct.pack(">I", len(body)) + body)
        tgt = TargetPairing(normalise_code("CDEF-GHJK"), HOST_KEY, 2222, "tgt")
        try:
            msg = frames.next_message()
            if msg is not NEED_DATA:
                assert isinstance(msg, dict)
                tgt.handle(msg)
        except PairingProtocolError:
            pass


class TestCodeGate:
    def test_expiry(self):
        gate = CodeGate("CDEF-GHJK", now=100.0, expiry=900.0)
        gate.admit(100.0)
        with pytest.raises(CodeUnavailable, match="expired"):
            gate.admit(1000.0)
        assert gate.exhausted(1000.0)

    def test_single_use(self):
        gate = CodeGate("CDEF-GHJK", now=0.0)
        gate.admit(0.0)
        gate.succeeded()
        with pytest.raises(CodeUnavailable, match="already used"):
            gate.admit(1.0)

    def test_attempts_are_spaced_and_limited(self):
        gate = CodeGate("CDEF-GHJK", now=0.0)
        now = 0.0
        gate.admit(now)
        with pytest.raises(CodeUnavailable, match="try again"):
            gate.admit(now + 0.1)
        for _ in range(MAX_ATTEMPTS - 1):
            now += 60.0
            gate.admit(now)
        with pytest.raises(CodeUnavailable, match="too many"):
            gate.admit(now + 60.0)
