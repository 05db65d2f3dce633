"""Message types and messages: one IntEnum, one frozen dataclass per type, validated when built.

A message validates what it can know alone (types, ranges, lengths, names). What needs the session's
context (is this disk open, is this offset inside the disk, is this the right moment) is checked by
:mod:`protocol.connection` against :mod:`protocol.state`.

On the wire a message is the msgpack array of its fields in declaration order.
"""

from __future__ import annotations

import re
from dataclasses import astuple, dataclass
from enum import IntEnum
from typing import Any, ClassVar

from .errors import LocalProtocolError, RemoteProtocolError
from .framing import MAP_CHUNK_ENTRIES, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE

HASH_LEN = 32
MAX_DISK_SIZE = 1 << 50  # 1 PiB: far beyond vSphere's 62 TB limit, small enough to catch garbage
MAX_DISKS = 256
PASS_MODES = ("", "verify", "repair")
#: HELLO's mode for a control session: no pass, one REQUEST about the VM's replica, one REPLICA_STATE
CONTROL = "control"
HELLO_MODES = (*PASS_MODES, CONTROL)
#: what a source may ask in a control session: only a TEST failover (and its end); a real failover and
#: its commit stay at the DR site
REQUEST_ACTIONS = ("points", "test-failover", "end-test")
#: the newest restore points a REPLICA_STATE lists (the rest are counted in ``older``): the frame stays
#: far below the 1 MiB a connection takes after the handshake
MAX_POINTS_SENT = 1024
MAX_RESTORE_POINTS = 10_000  # a job's retention; far beyond any real one, small enough to catch garbage
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_TOKEN_RE = re.compile(r"[\x21-\x7e]{0,256}")


class MsgType(IntEnum):
    HELLO = 1
    WELCOME = 2
    OPEN_DISK = 3
    DISK_READY = 4
    MAP_CHUNK = 5
    MAP_END = 6
    BLOCK = 7
    ZERO_RANGE = 8
    DISK_END = 9
    COMMIT = 10
    COMMITTED = 11
    ERROR = 12
    KEEPALIVE = 13
    REQUEST = 14
    REPLICA_STATE = 15


class Codec(IntEnum):
    NONE = 0
    ZSTD = 1


CODEC_NAMES = {Codec.NONE: "none", Codec.ZSTD: "zstd"}


class MapStatus(IntEnum):
    EMPTY = 0  # no usable map: every block is unknown to the target (new replica)
    CACHED = 1  # the source's cached map (same generation) is current; nothing follows but MAP_END
    SENDING = 2  # MAP_CHUNKs follow


_MAX_CODEC = max(Codec)  # validation runs once per block: not an enum walk each time
_MAX_MAP_STATUS = max(MapStatus)


#: the rule :func:`valid_name` checks, as error messages state it
NAME_RULE = "use 1-64 letters, digits, '.', '_', '+' or '-', starting with a letter or digit, without '..'"


def valid_name(name: str) -> bool:
    """VM and disk names become path components on the target: no separators, no dot-dot, bounded."""
    return bool(_NAME_RE.fullmatch(name)) and ".." not in name


def _fail(msg: str) -> None:
    raise LocalProtocolError(msg)


def _int(value: object, name: str, lo: int = 0, hi: int = (1 << 63) - 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        _fail(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")


def _str(value: object, name: str, max_len: int = 256) -> None:
    if type(value) is not str or len(value) > max_len:
        _fail(f"{name} must be a string of at most {max_len} characters")


def _bool(value: object, name: str) -> None:
    if type(value) is not bool:
        _fail(f"{name} must be true or false, got {value!r}")


def _token(value: object, name: str) -> None:
    if type(value) is not str or not _TOKEN_RE.fullmatch(value):
        _fail(f"{name} must be printable ASCII without spaces, at most 256 characters")


def _name(value: object, what: str) -> None:
    if type(value) is not str or not valid_name(value):
        _fail(f"invalid {what} name {value!r}: {NAME_RULE}")


def _strs(value: object, name: str, max_items: int = 16) -> None:
    if not isinstance(value, tuple) or len(value) > max_items:
        _fail(f"{name} must be a list of at most {max_items} strings")
        return
    for item in value:
        _str(item, name, 4096)


def _bytes(value: object, name: str, max_len: int) -> None:
    if type(value) is not bytes or len(value) > max_len:
        _fail(f"{name} must be at most {max_len} bytes")


def _block_size(value: object) -> None:
    _int(value, "block_size", MIN_BLOCK_SIZE, MAX_BLOCK_SIZE)
    assert isinstance(value, int)
    if value & (value - 1):
        _fail(f"block_size must be a power of two, got {value}")


class Message:
    """Base of all messages; subclasses are frozen dataclasses with a ``TYPE``."""

    TYPE: ClassVar[MsgType]

    def to_fields(self) -> list[Any]:
        return list(astuple(self))  # type: ignore[call-overload]

    @classmethod
    def from_fields(cls, values: list[Any]) -> Message:
        names: tuple[str, ...] = cls.__match_args__  # type: ignore[attr-defined]  # the fields, in order
        if len(values) != len(names):
            raise RemoteProtocolError(f"{cls.TYPE.name} has {len(values)} fields, expected {len(names)}")
        converted = [tuple(v) if isinstance(v, list) else v for v in values]
        try:
            return cls(*converted)
        except LocalProtocolError as exc:
            raise RemoteProtocolError(f"invalid {cls.TYPE.name} from the peer: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise RemoteProtocolError(f"invalid {cls.TYPE.name} from the peer: {exc}") from None


@dataclass(frozen=True, slots=True)
class Hello(Message):
    TYPE = MsgType.HELLO
    protocol_version: int
    agent: str
    vm: str
    hash_algs: tuple[str, ...]
    codecs: tuple[str, ...]
    block_size: int
    #: the job this pass belongs to (its id; "" for a pass run without a job): the target tags the
    #: restore point with it (protocol 4)
    job: str = ""
    #: the job rule (seeding or mapping on): the target refuses the pass, before it creates anything,
    #: unless it already holds a replica of the VM (seeded or mapped); ERROR code NOT_SEEDED (protocol 4)
    require_replica: bool = False
    #: restore points the target keeps for this replica; 0: the target's own setting (protocol 4)
    restore_points: int = 0
    #: "" a pass; "verify": the target hashes the replica's bytes (not its map) and writes nothing;
    #: "repair": a pass whose target hashes the bytes instead of trusting its map (protocol 4);
    #: "control": no pass, a REQUEST about the VM's replica (protocol 5)
    mode: str = ""
    #: the id (WELCOME's ``pass_id``) of a pass whose connection was lost, to go on with (protocol 4)
    resume: str = ""

    def __post_init__(self) -> None:
        _int(self.protocol_version, "protocol_version", 0, 65535)
        _str(self.agent, "agent", 128)
        _name(self.vm, "VM")
        _strs(self.hash_algs, "hash_algs")
        _strs(self.codecs, "codecs")
        _block_size(self.block_size)
        _str(self.job, "job", 64)
        _token(self.job, "job")
        _bool(self.require_replica, "require_replica")
        _int(self.restore_points, "restore_points", 0, MAX_RESTORE_POINTS)
        if self.mode not in HELLO_MODES:
            _fail(f"unknown pass mode {self.mode!r} (known: {', '.join(map(repr, HELLO_MODES))})")
        _token(self.resume, "resume")
        if self.mode == CONTROL and self.resume:
            _fail("a control session resumes no pass")

    @classmethod
    def from_fields(cls, values: list[Any]) -> Message:
        """A HELLO of protocol 1-3 has six fields: read it with the defaults, so that the version
        check names both versions instead of failing on the field count."""
        if len(values) == 6:
            values = [*values, "", False, 0, "", ""]
        return super(Hello, cls).from_fields(values)


@dataclass(frozen=True, slots=True)
class Welcome(Message):
    TYPE = MsgType.WELCOME
    protocol_version: int
    agent: str
    hash_alg: str
    codecs: tuple[str, ...]
    block_size: int
    #: this pass's id: a source whose connection is lost asks to resume it by this id (protocol 4)
    pass_id: str = ""
    #: a resumed pass: the disks the target has, as (disk_id, name, size, blocks, zero_bytes,
    #: next_offset, ended) -- what it received and applied of each (protocol 4)
    resumed: tuple[tuple[int, str, int, int, int, int, bool], ...] = ()

    def __post_init__(self) -> None:
        _int(self.protocol_version, "protocol_version", 0, 65535)
        _str(self.agent, "agent", 128)
        _str(self.hash_alg, "hash_alg", 64)
        _strs(self.codecs, "codecs")
        _block_size(self.block_size)
        _token(self.pass_id, "pass_id")
        if not isinstance(self.resumed, tuple) or len(self.resumed) > MAX_DISKS:
            _fail(f"resumed must be a list of at most {MAX_DISKS} disks")
        entries = []
        for entry in self.resumed:
            e = tuple(entry) if isinstance(entry, list | tuple) else ()
            if len(e) != 7:
                _fail("a resumed disk is [disk_id, name, size, blocks, zero_bytes, next_offset, ended]")
            disk_id, name, size, blocks, zero_bytes, next_offset, ended = e
            _int(disk_id, "resumed disk_id", 0, MAX_DISKS - 1)
            _name(name, "disk")
            _int(size, "resumed size", 512, MAX_DISK_SIZE)
            _int(blocks, "resumed blocks", 0, MAX_DISK_SIZE)
            _int(zero_bytes, "resumed zero_bytes", 0, int(size))  # type: ignore[call-overload]
            _int(next_offset, "resumed next_offset", 0, int(size))  # type: ignore[call-overload]
            _bool(ended, "resumed ended")
            entries.append(e)
        object.__setattr__(self, "resumed", tuple(entries))  # msgpack gives lists: one shape for all


@dataclass(frozen=True, slots=True)
class OpenDisk(Message):
    TYPE = MsgType.OPEN_DISK
    disk_id: int
    name: str
    size: int
    cached_generation: str  # "" when the source has no cached map
    change_id: str  # opaque token (vSphere changeId) stored with the map at commit; "" for none

    def __post_init__(self) -> None:
        _int(self.disk_id, "disk_id", 0, MAX_DISKS - 1)
        _name(self.name, "disk")
        _int(self.size, "size", 512, MAX_DISK_SIZE)
        if self.size % 512:
            _fail(f"disk size {self.size} is not a multiple of 512 bytes")
        _token(self.cached_generation, "cached_generation")
        _token(self.change_id, "change_id")


@dataclass(frozen=True, slots=True)
class DiskReady(Message):
    TYPE = MsgType.DISK_READY
    disk_id: int
    generation: str  # the target map's generation ("" when EMPTY)
    map_status: int
    stored_change_id: str  # change_id committed with the map at the previous pass
    replica_size: int  # current replica size (0 for a new replica)
    notes: tuple[str, ...]  # warnings for the report (map rebuilt, CID changed, ...)
    #: the map was rebuilt from the replica's bytes: it describes no earlier pass (CBT cannot trust
    #: its stored change id)
    map_rebuilt: bool
    #: verify/repair: blocks whose bytes on the replica differ from what its map said (protocol 4)
    map_wrong_blocks: int = 0

    def __post_init__(self) -> None:
        _int(self.disk_id, "disk_id", 0, MAX_DISKS - 1)
        _token(self.generation, "generation")
        _int(self.map_status, "map_status", 0, _MAX_MAP_STATUS)
        _token(self.stored_change_id, "stored_change_id")
        _int(self.replica_size, "replica_size", 0, MAX_DISK_SIZE)
        _strs(self.notes, "notes")
        _bool(self.map_rebuilt, "map_rebuilt")
        _int(self.map_wrong_blocks, "map_wrong_blocks", 0, MAX_DISK_SIZE)


@dataclass(frozen=True, slots=True)
class MapChunk(Message):
    TYPE = MsgType.MAP_CHUNK
    disk_id: int
    first_block: int
    hashes: bytes  # concatenated HASH_LEN-byte entries

    def __post_init__(self) -> None:
        _int(self.disk_id, "disk_id", 0, MAX_DISKS - 1)
        _int(self.first_block, "first_block", 0, MAX_DISK_SIZE // MIN_BLOCK_SIZE)
        _bytes(self.hashes, "hashes", MAP_CHUNK_ENTRIES * HASH_LEN)
        if not self.hashes or len(self.hashes) % HASH_LEN:
            _fail(f"hashes must be a non-empty multiple of {HASH_LEN} bytes")


@dataclass(frozen=True, slots=True)
class MapEnd(Message):
    TYPE = MsgType.MAP_END
    disk_id: int
    generation: str
    entries: int

    def __post_init__(self) -> None:
        _int(self.disk_id, "disk_id", 0, MAX_DISKS - 1)
        _token(self.generation, "generation")
        _int(self.entries, "entries", 0, MAX_DISK_SIZE // MIN_BLOCK_SIZE)


@dataclass(frozen=True, slots=True)
class Block(Message):
    TYPE = MsgType.BLOCK
    disk_id: int
    offset: int
    length: int  # length of the block's bytes after decompression
    hash: bytes  # BLAKE3-256 of the block's bytes
    codec: int
    payload: bytes

    def __post_init__(self) -> None:
        _int(self.disk_id, "disk_id", 0, MAX_DISKS - 1)
        _int(self.offset, "offset", 0, MAX_DISK_SIZE)
        _int(self.length, "length", 1, MAX_BLOCK_SIZE)
        if type(self.hash) is not bytes or len(self.hash) != HASH_LEN:
            _fail(f"hash must be {HASH_LEN} bytes")
        _int(self.codec, "codec", 0, _MAX_CODEC)
        _bytes(self.payload, "payload", MAX_BLOCK_SIZE)
        if self.codec == Codec.NONE and len(self.payload) != self.length:
            _fail(f"raw payload of {len(self.payload)} bytes for a block of {self.length} bytes")

    def to_fields(self) -> list[Any]:  # faster than astuple on the hot path
        return [self.disk_id, self.offset, self.length, self.hash, self.codec, self.payload]


@dataclass(frozen=True, slots=True)
class ZeroRange(Message):
    TYPE = MsgType.ZERO_RANGE
    disk_id: int
    offset: int
    length: int

    def __post_init__(self) -> None:
        _int(self.disk_id, "disk_id", 0, MAX_DISKS - 1)
        _int(self.offset, "offset", 0, MAX_DISK_SIZE)
        _int(self.length, "length", 1, MAX_DISK_SIZE)


@dataclass(frozen=True, slots=True)
class DiskEnd(Message):
    TYPE = MsgType.DISK_END
    disk_id: int
    blocks: int  # BLOCK messages sent for this disk
    zero_bytes: int  # bytes covered by ZERO_RANGE messages

    def __post_init__(self) -> None:
        _int(self.disk_id, "disk_id", 0, MAX_DISKS - 1)
        _int(self.blocks, "blocks", 0, MAX_DISK_SIZE)
        _int(self.zero_bytes, "zero_bytes", 0, MAX_DISK_SIZE)


@dataclass(frozen=True, slots=True)
class Commit(Message):
    TYPE = MsgType.COMMIT
    disks: int  # how many disks this pass opened; the target checks it
    #: the final pass of a planned failover: once committed, the target fails the replica over to it
    failover: bool
    #: a verify's end: the blocks whose bytes differed from the source's, for the target's record of
    #: the result (protocol 4)
    differing_blocks: int = 0

    def __post_init__(self) -> None:
        _int(self.disks, "disks", 0, MAX_DISKS)
        _bool(self.failover, "failover")
        _int(self.differing_blocks, "differing_blocks", 0, MAX_DISK_SIZE)


@dataclass(frozen=True, slots=True)
class Committed(Message):
    TYPE = MsgType.COMMITTED
    generation: str  # the new generation of every map this pass committed
    failed_over: bool  # COMMIT asked for a failover and the replica is failed over now
    note: str  # why a failover that COMMIT asked for did not happen ("" otherwise)

    def __post_init__(self) -> None:
        _token(self.generation, "generation")
        _bool(self.failed_over, "failed_over")
        _str(self.note, "note", 4096)


@dataclass(frozen=True, slots=True)
class Error(Message):
    TYPE = MsgType.ERROR
    code: int  # vzcommon.errors.ExitCode value
    message: str

    def __post_init__(self) -> None:
        _int(self.code, "code", 0, 255)
        _str(self.message, "message", 4096)


@dataclass(frozen=True, slots=True)
class KeepAlive(Message):
    """The source is alive and at work (scanning unchanged blocks, planning the next disk): sent when it
    has had nothing else to send for a while, so the target can end a pass whose source went silent."""

    TYPE = MsgType.KEEPALIVE


@dataclass(frozen=True, slots=True)
class Request(Message):
    """What a control session asks about HELLO's VM (protocol 5): ``points`` (its restore points and
    failover state), ``test-failover`` of ``point`` ("" the newest), or ``end-test``."""

    TYPE = MsgType.REQUEST
    action: str
    point: str = ""

    def __post_init__(self) -> None:
        if self.action not in REQUEST_ACTIONS:
            _fail(f"unknown request {self.action!r} (known: {', '.join(map(repr, REQUEST_ACTIONS))})")
        _token(self.point, "point")
        if self.point and self.action != "test-failover":
            _fail(f"a point goes with a test-failover request, not with {self.action!r}")


#: one restore point in REPLICA_STATE: (id, time, origin, job, live, held_bytes)
PointRow = tuple[str, str, str, str, bool, int]


@dataclass(frozen=True, slots=True)
class ReplicaState(Message):
    """The target's answer to a REQUEST (protocol 5): the replica's restore points, newest first, and
    its failover state, as they are once the request was carried out; ``note`` says what it did."""

    TYPE = MsgType.REPLICA_STATE
    #: "file" (DATA_DIR) or "vsphere" (a replica VM's snapshots)
    kind: str
    #: newest first; for a vSphere replica ``id`` is the snapshot's moid and ``live`` the current one
    points: tuple[PointRow, ...]
    #: points older than the ones listed (beyond :data:`MAX_POINTS_SENT`)
    older: int
    #: the failover record's state ("" none), the point it is at, since when, and what to know of it
    failover_state: str
    failover_point: str
    failover_since: str
    failover_detail: str
    #: a pass (or a rollback, or a suspended pass) holds the VM now
    pass_running: bool
    note: str

    def __post_init__(self) -> None:
        if self.kind not in ("file", "vsphere"):
            _fail(f"replica kind must be 'file' or 'vsphere', got {self.kind!r}")
        if not isinstance(self.points, tuple) or len(self.points) > MAX_POINTS_SENT:
            _fail(f"points must be a list of at most {MAX_POINTS_SENT} restore points")
        rows = []
        for row in self.points:
            r = tuple(row) if isinstance(row, list | tuple) else ()
            if len(r) != 6:
                _fail("a restore point is [id, time, origin, job, live, held_bytes]")
            point_id, time, origin, job, live, held = r
            _token(point_id, "point id")
            _str(time, "point time", 64)
            _str(origin, "point origin", 64)
            _token(job, "point job")
            _bool(live, "point live")
            _int(held, "point held_bytes", 0, MAX_DISK_SIZE * MAX_DISKS)
            rows.append(r)
        object.__setattr__(self, "points", tuple(rows))  # msgpack gives lists: one shape for all
        _int(self.older, "older", 0, 1 << 32)
        _str(self.failover_state, "failover_state", 64)
        _token(self.failover_point, "failover_point")
        _str(self.failover_since, "failover_since", 64)
        _str(self.failover_detail, "failover_detail", 4096)
        _bool(self.pass_running, "pass_running")
        _str(self.note, "note", 4096)


MESSAGE_CLASSES: dict[MsgType, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Welcome,
        OpenDisk,
        DiskReady,
        MapChunk,
        MapEnd,
        Block,
        ZeroRange,
        DiskEnd,
        Commit,
        Committed,
        Error,
        KeepAlive,
        Request,
        ReplicaState,
    )
}
