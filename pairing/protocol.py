"""Pairing protocol: SPAKE2 over a plain TCP port, then an authenticated exchange of SSH keys.

Sans-I/O: nothing here touches a socket or a clock (the clock is passed in). The async loop that
drives it is :mod:`pairing.net`.

Wire format: each message is a 4-byte big-endian length and a UTF-8 JSON object (at most
``MAX_MESSAGE`` bytes). The source is SPAKE2 side A, the target side B; both use the normalised code
as the password. ``T = SHA256(pakeA || pakeB)`` is the transcript hash.

    1 source -> target  hello    {v, pake: pakeA}
    2 target -> source  pake     {pake: pakeB, confirm: HMAC(k_tc, T)}
    3 source -> target  confirm  {confirm: HMAC(k_sc, T), box: AESGCM(k_s, {client_key, name})}
    4 target -> source  welcome  {box: AESGCM(k_t, {host_key, agent_port, name})}
      or, at any point, target -> source  error {reason}

An error whose reason starts with ``busy:`` (another source is pairing right now) is not final: the
source tries again (:class:`PairingBusy`).

Security rules. Keys come from HKDF(K) with one label each. Each side checks the other's
confirmation before it sends anything derived from its own key, so a peer that does not know the
code gets at most one guess per session and nothing to test guesses against offline. SPAKE2 messages
are fresh per session, so a replayed exchange derives a different key and fails at step 3. The
target's :class:`CodeGate` counts every session that reached step 2 as an attempt until it succeeds:
attempts are limited, spaced out, and the code expires and is single-use.

Transitions (a (state, message) pair missing from ``_TABLE`` is a PairingProtocolError):
    source: SENT_HELLO --pake--> SENT_CONFIRM --welcome--> DONE
    target: START --hello--> SENT_PAKE --confirm--> DONE
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import os
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from spake2 import SPAKE2_A, SPAKE2_B
from spake2.ed25519_basic import NotOnCurve
from spake2.spake2 import SPAKEError

from vzcommon.errors import ExitCode, PairingError

VERSION = 1
MAX_MESSAGE = 16 * 1024
ID_SOURCE, ID_TARGET = b"vzrep-source", b"vzrep-target"
CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U
DEFAULT_EXPIRY = 15 * 60.0
MAX_ATTEMPTS = 5


class PairingProtocolError(PairingError):
    """The peer sent something the pairing protocol does not allow."""


class WrongCode(PairingError):
    """The peers' codes differ (or a man in the middle guessed and lost)."""


class CodeUnavailable(PairingError):
    """The code expired, was used, or has no attempts left."""


class PairingBusy(PairingError):
    """The target is pairing another source right now: try again shortly (not a failed attempt)."""

    exit_code = ExitCode.BUSY


class NeedData(Enum):
    NEED_DATA = auto()


NEED_DATA = NeedData.NEED_DATA


# --- codes -------------------------------------------------------------------------------------


def new_code() -> str:
    """A one-time code as shown on the target's console: ``XXXX-XXXX`` (40 bits)."""
    raw = "".join(secrets.choice(CODE_ALPHABET) for _ in range(8))
    return f"{raw[:4]}-{raw[4:]}"


def normalise_code(code: str) -> bytes:
    """The SPAKE2 password of a code as typed: case, spaces and dashes ignored; O/I/L read as 0/1/1."""
    table = str.maketrans({"O": "0", "I": "1", "L": "1"})
    cleaned = "".join(ch for ch in code.upper() if ch not in " -\t").translate(table)
    if len(cleaned) < 8:
        raise PairingError("the pairing code is too short: it has at least 8 characters")
    return cleaned.encode()


class CodeGate:
    """The target's rules for one code: expiry, single use, limited and spaced attempts."""

    def __init__(
        self, code: str, now: float, expiry: float = DEFAULT_EXPIRY, max_attempts: int = MAX_ATTEMPTS
    ):
        self.password = normalise_code(code)
        self.expires_at = now + expiry
        self.attempts_left = max_attempts
        self.not_before = now
        self.used = False

    def admit(self, now: float) -> None:
        """Start an attempt or raise why not (the attempt counts until :meth:`succeeded`)."""
        if self.used:
            raise CodeUnavailable("this pairing code was already used: show a new code on the target")
        if now >= self.expires_at:
            raise CodeUnavailable("the pairing code expired: show a new code on the target")
        if self.attempts_left <= 0:
            raise CodeUnavailable("too many wrong codes: show a new code on the target")
        if now < self.not_before:
            raise CodeUnavailable(f"wrong code recently: try again in {math.ceil(self.not_before - now)} s")
        self.attempts_left -= 1
        failures = MAX_ATTEMPTS - self.attempts_left
        self.not_before = now + min(2.0 ** (failures - 1), 30.0)

    def succeeded(self) -> None:
        self.used = True

    def exhausted(self, now: float) -> bool:
        return self.used or now >= self.expires_at or self.attempts_left <= 0


# --- framing -----------------------------------------------------------------------------------


def encode(msg: dict[str, Any]) -> bytes:
    body = json.dumps(msg, separators=(",", ":"), sort_keys=True).encode()
    if len(body) > MAX_MESSAGE:
        raise PairingError("internal: pairing message too large")
    return struct.pack(">I", len(body)) + body


class FrameReader:
    """Bytes in, JSON objects out; garbage raises PairingProtocolError."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    def next_message(self) -> dict[str, Any] | NeedData:
        if len(self._buf) < 4:
            return NEED_DATA
        (length,) = struct.unpack(">I", self._buf[:4])
        if length > MAX_MESSAGE:
            raise PairingProtocolError(f"pairing message of {length} bytes exceeds {MAX_MESSAGE}")
        if len(self._buf) < 4 + length:
            return NEED_DATA
        body = bytes(self._buf[4 : 4 + length])
        del self._buf[: 4 + length]
        try:
            msg = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            raise PairingProtocolError("pairing message is not JSON") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
            raise PairingProtocolError("pairing message has no type")
        return msg


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(msg: dict[str, Any], field: str, limit: int = 4096) -> bytes:
    value = msg.get(field)
    if not isinstance(value, str) or len(value) > limit:
        raise PairingProtocolError(f"pairing message field {field!r} is missing or malformed")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise PairingProtocolError(f"pairing message field {field!r} is not base64") from None


# --- session keys ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Keys:
    source_confirm: bytes
    target_confirm: bytes
    source_box: bytes
    target_box: bytes
    transcript: bytes

    @classmethod
    def derive(cls, shared: bytes, pake_a: bytes, pake_b: bytes) -> _Keys:
        transcript = hashlib.sha256(pake_a + pake_b).digest()

        def k(label: str) -> bytes:
            return HKDF(hashes.SHA256(), 32, salt=transcript, info=f"vzrep-pair-v1 {label}".encode()).derive(
                shared
            )

        return cls(k("source confirm"), k("target confirm"), k("source box"), k("target box"), transcript)

    def mac(self, key: bytes) -> bytes:
        return hmac.new(key, self.transcript, hashlib.sha256).digest()


def _seal(key: bytes, payload: dict[str, Any]) -> str:
    nonce = os.urandom(12)
    return _b64(nonce + AESGCM(key).encrypt(nonce, json.dumps(payload).encode(), b"vzrep-pair-v1"))


def _open(key: bytes, msg: dict[str, Any]) -> dict[str, Any]:
    blob = _unb64(msg, "box", 3 * MAX_MESSAGE)
    try:
        plain = AESGCM(key).decrypt(blob[:12], blob[12:], b"vzrep-pair-v1")
        payload = json.loads(plain)
    except (InvalidTag, ValueError):
        raise PairingProtocolError("the peer's sealed payload does not open") from None
    if not isinstance(payload, dict):
        raise PairingProtocolError("the peer's sealed payload is not an object")
    return payload


def _str(payload: dict[str, Any], field: str, limit: int = 8192) -> str:
    value = payload.get(field)
    if not isinstance(value, str) or len(value) > limit or not value.isprintable():
        raise PairingProtocolError(f"the peer's {field} is missing or malformed")
    return value


# --- the two sides -----------------------------------------------------------------------------


class State(Enum):
    START = auto()
    SENT_HELLO = auto()
    SENT_PAKE = auto()
    SENT_CONFIRM = auto()
    DONE = auto()
    ERROR = auto()


@dataclass(frozen=True)
class SourcePaired:
    """What the source learns: the target's SSH host key and agent port."""

    host_key: str
    agent_port: int
    name: str


@dataclass(frozen=True)
class TargetPaired:
    """What the target learns: the source's SSH client key."""

    client_key: str
    name: str


class _Side:
    _table: dict[tuple[State, str], Callable[[Any, dict[str, Any]], tuple[bytes | None, Any]]]

    def __init__(self) -> None:
        self.state = State.START

    def handle(self, msg: dict[str, Any]) -> tuple[bytes | None, Any]:
        """Process one message: returns (reply bytes or None, result or None)."""
        if msg.get("t") == "error":
            self.state = State.ERROR
            reason = str(msg.get("reason"))[:200]
            if reason == "wrong code":
                raise WrongCode(reason)
            if reason.startswith(BUSY_PREFIX):
                raise PairingBusy(f"the target is {reason}")
            raise PairingError(f"the peer refused pairing: {reason}")
        handler = self._table.get((self.state, str(msg.get("t"))))
        if handler is None:
            self.state = State.ERROR
            raise PairingProtocolError(
                f"unexpected pairing message {str(msg.get('t'))[:40]!r} in {self.state.name}"
            )
        try:
            return handler(self, msg)
        except PairingError:
            self.state = State.ERROR
            raise


class SourcePairing(_Side):
    def __init__(self, code: str, client_key: str, name: str) -> None:
        super().__init__()
        self._spake = SPAKE2_A(normalise_code(code), idA=ID_SOURCE, idB=ID_TARGET)
        self._client_key, self._name = client_key, name
        self._pake_a = b""
        self._keys: _Keys | None = None

    def start(self) -> bytes:
        assert self.state is State.START, "start() is called once"
        self._pake_a = self._spake.start()
        self.state = State.SENT_HELLO
        return encode({"t": "hello", "v": VERSION, "pake": _b64(self._pake_a)})

    def _on_pake(self, msg: dict[str, Any]) -> tuple[bytes | None, Any]:
        pake_b = _unb64(msg, "pake")
        try:
            shared = self._spake.finish(pake_b)
        except (SPAKEError, NotOnCurve, ValueError, TypeError):
            raise PairingProtocolError("the target's SPAKE2 message is invalid") from None
        keys = _Keys.derive(shared, self._pake_a, pake_b)
        if not hmac.compare_digest(_unb64(msg, "confirm"), keys.mac(keys.target_confirm)):
            raise WrongCode("wrong pairing code (or not talking to the real target): nothing was pinned")
        self._keys = keys
        self.state = State.SENT_CONFIRM
        box = _seal(keys.source_box, {"client_key": self._client_key, "name": self._name})
        return encode({"t": "confirm", "confirm": _b64(keys.mac(keys.source_confirm)), "box": box}), None

    def _on_welcome(self, msg: dict[str, Any]) -> tuple[bytes | None, Any]:
        assert self._keys is not None
        payload = _open(self._keys.target_box, msg)
        port = payload.get("agent_port")
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise PairingProtocolError("the target's agent port is malformed")
        self.state = State.DONE
        return None, SourcePaired(_str(payload, "host_key"), port, _str(payload, "name", 255))

    _table = {(State.SENT_HELLO, "pake"): _on_pake, (State.SENT_CONFIRM, "welcome"): _on_welcome}


class TargetPairing(_Side):
    """One session on the target; the caller admits it through a :class:`CodeGate` first."""

    def __init__(self, password: bytes, host_key: str, agent_port: int, name: str) -> None:
        super().__init__()
        self._spake = SPAKE2_B(password, idA=ID_SOURCE, idB=ID_TARGET)
        self._offer = {"host_key": host_key, "agent_port": agent_port, "name": name}
        self._keys: _Keys | None = None

    def _on_hello(self, msg: dict[str, Any]) -> tuple[bytes | None, Any]:
        if msg.get("v") != VERSION:
            raise PairingProtocolError(f"unsupported pairing version {str(msg.get('v'))[:10]}")
        pake_a = _unb64(msg, "pake")
        pake_b = self._spake.start()
        try:
            shared = self._spake.finish(pake_a)
        except (SPAKEError, NotOnCurve, ValueError, TypeError):
            raise PairingProtocolError("the source's SPAKE2 message is invalid") from None
        self._keys = _Keys.derive(shared, pake_a, pake_b)
        self.state = State.SENT_PAKE
        return encode(
            {"t": "pake", "pake": _b64(pake_b), "confirm": _b64(self._keys.mac(self._keys.target_confirm))}
        ), None

    def _on_confirm(self, msg: dict[str, Any]) -> tuple[bytes | None, Any]:
        assert self._keys is not None
        if not hmac.compare_digest(_unb64(msg, "confirm"), self._keys.mac(self._keys.source_confirm)):
            raise WrongCode("a source tried a wrong pairing code")
        payload = _open(self._keys.source_box, msg)
        result = TargetPaired(_str(payload, "client_key"), _str(payload, "name", 255))
        self.state = State.DONE
        return encode({"t": "welcome", "box": _seal(self._keys.target_box, self._offer)}), result

    _table = {(State.START, "hello"): _on_hello, (State.SENT_PAKE, "confirm"): _on_confirm}


BUSY_PREFIX = "busy:"


def error_message(reason: str) -> bytes:
    return encode({"t": "error", "reason": reason})


def busy_message(detail: str) -> bytes:
    """The error that tells a source to try again (:class:`PairingBusy`)."""
    return error_message(f"{BUSY_PREFIX} {detail}")
