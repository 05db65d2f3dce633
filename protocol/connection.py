"""Sans-I/O connections: bytes in, messages out; messages in, bytes out.

``conn.receive_data(data)`` buffers bytes from the peer (``b""`` means the peer closed);
``conn.next_event()`` returns the next :class:`~protocol.messages.Message`, :data:`NEED_DATA`, or
:data:`CLOSED`; ``conn.send(msg)`` checks that we may send ``msg`` now and returns its frame.

A HELLO or WELCOME of another protocol version is refused as a version mismatch naming both versions
before its fields are checked (a newer peer's fields may mean nothing here).

Besides the transition table, the connection enforces what needs the session's context: negotiated
block size and codecs, disks known to the session, offsets block-aligned, inside the disk and
strictly increasing, map entries in order and counted, and the totals in DISK_END and COMMIT.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from vzcommon.geometry import Geometry, block_count

from . import codec, framing
from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError, VersionMismatch
from .messages import (
    CODEC_NAMES,
    CONTROL,
    HASH_LEN,
    MESSAGE_CLASSES,
    Block,
    Codec,
    Commit,
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
    Welcome,
    ZeroRange,
)
from .state import CONTROL_TRANSITIONS, TERMINAL, TRANSITIONS, Role, State, Table, next_state
from .version import PROTOCOL_VERSION


class Sentinel(enum.Enum):
    NEED_DATA = "need-data"
    CLOSED = "closed"


NEED_DATA = Sentinel.NEED_DATA
CLOSED = Sentinel.CLOSED
Event = Message | Sentinel


@dataclass
class DiskSession:
    """What the session knows about one open disk."""

    disk_id: int
    name: str
    size: int
    map_status: int = MapStatus.EMPTY
    generation: str = ""
    map_entries: int = 0
    next_offset: int = 0
    blocks: int = 0
    zero_bytes: int = 0
    ended: bool = False


class Connection:
    """One side of a vzrep session."""

    def __init__(self, our_role: Role, *, protocol_version: int = PROTOCOL_VERSION) -> None:
        self.our_role = our_role
        self.their_role = Role.TARGET if our_role is Role.SOURCE else Role.SOURCE
        self.protocol_version = protocol_version
        self.state = State.AWAIT_HELLO
        self.table: Table = TRANSITIONS  # CONTROL_TRANSITIONS once a control HELLO went by
        self.block_size = 0
        self.codecs: frozenset[Codec] = frozenset({Codec.NONE})
        self.hash_alg = ""
        self.vm = ""
        self.disks: dict[int, DiskSession] = {}
        self.current: DiskSession | None = None
        self._proposed: Hello | None = None
        # Received bytes not yet parsed: the chunks as received (never joined into one buffer), the
        # parsed part of the first one, and how many bytes remain in all of them.
        self._chunks: deque[bytes] = deque()
        self._head = 0
        self._avail = 0
        self._eof = False
        self._sent_error = False  # we sent ERROR: we may still read (the peer's reason), not send
        self._peer_error = False  # the peer sent ERROR: nothing more to say, one ERROR per session
        self._broken = False  # a protocol error was raised: nothing more is received, ever
        self._max_body = framing.HANDSHAKE_MAX_BODY

    # -- public API --------------------------------------------------------------------------------

    def send(self, msg: Message) -> bytes:
        """Return the frame for ``msg``; raise LocalProtocolError if it may not be sent now."""
        if isinstance(msg, Error):
            if self._sent_error or self._peer_error or self.state is State.DONE:
                raise LocalProtocolError("an ERROR was already exchanged or the session is done")
            self._sent_error = True
            self.state = State.ERROR
        else:
            try:
                self._apply(msg, self.our_role)
            except ProtocolError as exc:
                self.state = State.ERROR
                self._broken = True
                raise LocalProtocolError(f"cannot send {msg.TYPE.name}: {exc}") from None
        return framing.encode_frame(msg.TYPE, codec.pack(msg.to_fields()))

    def can_send(self, msg_type: MsgType) -> bool:
        """Whether a message of this type may be sent now (say, a KEEPALIVE: only when it is our turn)."""
        if self._sent_error or self._broken:
            return False
        return next_state(self.state, self.our_role, msg_type, self.table) is not None

    def receive_data(self, data: bytes) -> None:
        if self._eof and data:
            raise LocalProtocolError("data received after end of stream")
        if not data:
            self._eof = True
            return
        self._chunks.append(bytes(data))  # no copy for bytes; a caller's bytearray may be reused
        self._avail += len(data)

    def next_event(self) -> Event:
        if self._broken:
            raise RemoteProtocolError("the session is in ERROR; no more messages can be received")
        try:
            return self._next_event()
        except RemoteProtocolError:
            self.state = State.ERROR
            self._broken = True
            raise

    # -- receiving ---------------------------------------------------------------------------------

    def _next_event(self) -> Event:
        avail = self._avail
        if avail < framing.HEADER_SIZE:
            if self._eof:
                if avail:
                    raise RemoteProtocolError("connection closed inside a frame header")
                return CLOSED
            return NEED_DATA
        header = self._peek(framing.HEADER_SIZE)
        msg_type, length, crc = framing.parse_header(header, self._max_body)
        if avail < framing.HEADER_SIZE + length:
            if self._eof:
                raise RemoteProtocolError("connection closed inside a frame body")
            return NEED_DATA
        self._take(framing.HEADER_SIZE)
        body = self._take(length)
        framing.check_crc(header, body, crc)
        try:
            mtype = MsgType(msg_type)
        except ValueError:
            raise RemoteProtocolError(f"unknown message type {msg_type}") from None
        fields = codec.unpack(body)
        handshake = self.state in (State.AWAIT_HELLO, State.AWAIT_WELCOME)
        if (
            handshake
            and mtype in (MsgType.HELLO, MsgType.WELCOME)
            and fields
            and fields[0] != self.protocol_version
        ):
            # before the fields are validated: a newer peer's may be unknown here (a new HELLO mode),
            # and "upgrade the older agent" is what the user needs to read, not a field's complaint
            if isinstance(fields[0], int) and not isinstance(fields[0], bool):
                raise self._version_mismatch(fields[0])
        msg = MESSAGE_CLASSES[mtype].from_fields(fields)
        if isinstance(msg, Error):
            if self.state is State.DONE:
                raise RemoteProtocolError("ERROR received after the session completed")
            if self._peer_error:
                raise RemoteProtocolError("a second ERROR from the peer")
            self.state = State.ERROR
            self._peer_error = True
            return msg
        if self.state in TERMINAL:
            raise RemoteProtocolError(f"{mtype.name} received after the session ended")
        self._apply(msg, self.their_role)
        return msg

    def _peek(self, n: int) -> bytes:
        """A copy of the next ``n`` buffered bytes (``n <= self._avail``; a header), left in the buffer."""
        out = bytearray()
        pos = self._head
        for chunk in self._chunks:
            out += chunk[pos : pos + n - len(out)]
            pos = 0
            if len(out) == n:
                break
        return bytes(out)

    def _take(self, n: int) -> bytes | memoryview:
        """The next ``n`` buffered bytes (``n <= self._avail``), consumed.

        A view into the received chunk when they lie in one (the usual case: no copy), else a copy
        of just those bytes. Message fields decoded from it are copies, so no view outlives a frame.
        """
        if n == 0:  # an empty frame body (its decoding then fails as any short body does)
            return b""
        first = self._chunks[0]
        self._avail -= n
        if len(first) - self._head >= n:
            out: bytes | memoryview = memoryview(first)[self._head : self._head + n]
            self._head += n
            if self._head == len(first):
                self._chunks.popleft()
                self._head = 0
            return out
        parts = []
        while n:
            first = self._chunks[0]
            k = min(n, len(first) - self._head)
            parts.append(first[self._head : self._head + k])
            n -= k
            self._head += k
            if self._head == len(first):
                self._chunks.popleft()
                self._head = 0
        return b"".join(parts)

    # -- the rules ---------------------------------------------------------------------------------

    def _apply(self, msg: Message, sender: Role) -> None:
        """Check ``msg`` against the table and the session context, then update the state."""
        new = next_state(self.state, sender, msg.TYPE, self.table)
        if new is None:
            raise RemoteProtocolError(
                f"{msg.TYPE.name} from the {sender.value} is not allowed in state {self.state.value}"
            )
        check = getattr(self, f"_check_{msg.TYPE.name.lower()}", None)
        if check is not None:
            check(msg)
        self.state = new
        if isinstance(msg, Welcome) and self.current is not None:
            self.state = State.STREAMING  # a resumed pass goes on inside the disk it was cut in

    def _version_mismatch(self, theirs: int) -> VersionMismatch:
        return VersionMismatch(
            f"the {self.their_role.value} speaks protocol version {theirs}, the {self.our_role.value}"
            f" speaks version {self.protocol_version}: upgrade the older agent"
        )

    def _check_hello(self, msg: Hello) -> None:
        if msg.protocol_version != self.protocol_version:
            raise self._version_mismatch(msg.protocol_version)
        self._proposed = msg
        self.vm = msg.vm
        if msg.mode == CONTROL:
            self.table = CONTROL_TRANSITIONS

    def _check_welcome(self, msg: Welcome) -> None:
        hello = self._proposed
        assert hello is not None
        if msg.protocol_version != self.protocol_version:
            raise self._version_mismatch(msg.protocol_version)
        if msg.hash_alg not in hello.hash_algs:
            raise RemoteProtocolError(f"hash algorithm {msg.hash_alg!r} was not offered")
        if msg.block_size != hello.block_size:
            raise RemoteProtocolError(
                f"block size {msg.block_size} differs from the {hello.block_size} offered"
            )
        by_name = {name: c for c, name in CODEC_NAMES.items()}
        chosen = set()
        for name in msg.codecs:
            if name not in hello.codecs or name not in by_name:
                raise RemoteProtocolError(f"codec {name!r} was not offered")
            chosen.add(by_name[name])
        self.codecs = frozenset(chosen | {Codec.NONE})
        self.block_size = msg.block_size
        self.hash_alg = msg.hash_alg
        self._max_body = max(self.block_size, framing.MAP_CHUNK_ENTRIES * HASH_LEN) + framing.BODY_OVERHEAD
        if msg.resumed and not hello.resume:
            raise RemoteProtocolError("WELCOME resumes a pass the source did not ask to resume")
        for disk_id, name, size, blocks, zero_bytes, next_offset, ended in msg.resumed:
            if disk_id in self.disks or any(d.name == name for d in self.disks.values()):
                raise RemoteProtocolError(f"WELCOME resumes disk {disk_id} ({name!r}) twice")
            if next_offset % self.block_size and next_offset != size:
                raise RemoteProtocolError(f"resumed disk {name!r}: offset {next_offset} is not block-aligned")
            disk = DiskSession(
                disk_id, name, size, next_offset=next_offset, blocks=blocks, zero_bytes=zero_bytes
            )
            disk.ended = ended
            self.disks[disk_id] = disk
            if not ended:
                if self.current is not None:
                    raise RemoteProtocolError("WELCOME resumes two disks that were both open")
                self.current = disk

    def resumable(self) -> list[tuple[int, str, int, int, int, int, bool]]:
        """What the target received of each disk: a WELCOME's ``resumed`` for a source resuming it."""
        return [
            (d.disk_id, d.name, d.size, d.blocks, d.zero_bytes, d.next_offset, d.ended)
            for d in self.disks.values()
        ]

    def _check_open_disk(self, msg: OpenDisk) -> None:
        if msg.disk_id in self.disks:
            raise RemoteProtocolError(f"disk id {msg.disk_id} was already opened in this session")
        if any(d.name == msg.name for d in self.disks.values()):
            raise RemoteProtocolError(f"disk name {msg.name!r} was already opened in this session")
        self.current = self.disks[msg.disk_id] = DiskSession(msg.disk_id, msg.name, msg.size)

    def _disk(self, disk_id: int) -> DiskSession:
        disk = self.current
        if disk is None or disk.disk_id != disk_id:
            raise RemoteProtocolError(f"disk id {disk_id} is not the disk open in this session")
        return disk

    def _check_disk_ready(self, msg: DiskReady) -> None:
        disk = self._disk(msg.disk_id)
        if msg.replica_size > disk.size:
            raise RemoteProtocolError("the replica is larger than the source disk")
        disk.map_status = msg.map_status
        disk.generation = msg.generation

    def _check_map_chunk(self, msg: MapChunk) -> None:
        disk = self._disk(msg.disk_id)
        if disk.map_status != MapStatus.SENDING:
            raise RemoteProtocolError("MAP_CHUNK without a map being sent")
        if msg.first_block != disk.map_entries:
            raise RemoteProtocolError(f"MAP_CHUNK at entry {msg.first_block}, expected {disk.map_entries}")
        disk.map_entries += len(msg.hashes) // HASH_LEN
        if disk.map_entries > block_count(disk.size, self.block_size):
            raise RemoteProtocolError("the map has more entries than the disk has blocks")

    def _check_map_end(self, msg: MapEnd) -> None:
        disk = self._disk(msg.disk_id)
        if msg.entries != disk.map_entries or msg.generation != disk.generation:
            raise RemoteProtocolError("MAP_END does not match the map that was sent")

    def _check_block(self, msg: Block) -> None:
        disk = self._disk(msg.disk_id)
        self._check_range(disk, msg.offset, msg.length, "BLOCK")
        if msg.length != Geometry(disk.size, self.block_size).length(msg.offset):
            raise RemoteProtocolError(f"BLOCK at {msg.offset} has length {msg.length}, not one block")
        if msg.codec not in self.codecs:
            raise RemoteProtocolError(f"codec {msg.codec} was not negotiated")
        disk.next_offset = msg.offset + msg.length
        disk.blocks += 1

    def _check_zero_range(self, msg: ZeroRange) -> None:
        disk = self._disk(msg.disk_id)
        self._check_range(disk, msg.offset, msg.length, "ZERO_RANGE")
        end = msg.offset + msg.length
        if msg.length % self.block_size and end != disk.size:
            raise RemoteProtocolError(f"ZERO_RANGE at {msg.offset} does not cover whole blocks")
        disk.next_offset = end
        disk.zero_bytes += msg.length

    def _check_range(self, disk: DiskSession, offset: int, length: int, what: str) -> None:
        if offset % self.block_size:
            raise RemoteProtocolError(f"{what} offset {offset} is not aligned to the block size")
        if offset + length > disk.size:
            raise RemoteProtocolError(
                f"{what} [{offset}, {offset + length}) is beyond the end of disk {disk.name!r} ({disk.size} bytes)"
            )
        if offset < disk.next_offset:
            raise RemoteProtocolError(
                f"{what} offset {offset} goes backwards (next allowed: {disk.next_offset})"
            )

    def _check_disk_end(self, msg: DiskEnd) -> None:
        disk = self._disk(msg.disk_id)
        if (msg.blocks, msg.zero_bytes) != (disk.blocks, disk.zero_bytes):
            raise RemoteProtocolError(
                f"DISK_END counts {msg.blocks} blocks/{msg.zero_bytes} zero bytes,"
                f" the session saw {disk.blocks}/{disk.zero_bytes}"
            )
        disk.ended = True
        self.current = None

    def _check_commit(self, msg: Commit) -> None:
        if msg.disks != len(self.disks):
            raise RemoteProtocolError(f"COMMIT for {msg.disks} disks, the session opened {len(self.disks)}")


class SourceConnection(Connection):
    def __init__(self, **kw: int) -> None:
        super().__init__(Role.SOURCE, **kw)


class TargetConnection(Connection):
    def __init__(self, **kw: int) -> None:
        super().__init__(Role.TARGET, **kw)
