"""One harness per parser: bytes in, and only the errors that parser is allowed to raise out.

Each harness returns a short outcome (``"ok"``, ``"refused"``, ``"tolerated:<Exception>"``) and lets
every other exception propagate: under atheris that is a crash and its input is saved; in the replay
test (tests/fuzz) it fails the test. The rule for each parser:

* protocol (``frame``, ``message``): only :class:`RemoteProtocolError`, after which the connection stays
  in ERROR; a message that decodes re-encodes to the same message.
* ``vmdk``: only :class:`InputError`.  ``record``, ``vzmap``, ``vztemp``: only :class:`IntegrityError`.
* ``ovfenv``: nothing at all -- a bad environment is reported and replaced by safe defaults.
* ABM (``partitions``, ``ntfs``, ``ext``, ``xfs``, ``lvm``, ``swap``): :class:`NotParsed`, or one of
  ``abm._PARSE_ERRORS``, the safety net that :func:`~source_agent.filters.abm.active_extents` turns into
  "fully active" (counted as ``tolerated``: safe, but a parser that gives a plain reason is better).

Some inputs start with a control byte that picks a mode (a connection's state, whether to repair a
checksum): a checksum blocks a mutation fuzzer, so the harness can make it right and fuzz past it.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from blake3 import blake3

from appliance import ovfenv
from fuzz.image import SparseImage
from protocol import codec
from protocol.connection import CLOSED, NEED_DATA, Connection, SourceConnection, TargetConnection
from protocol.errors import RemoteProtocolError
from protocol.framing import HEADER_SIZE, encode_frame
from protocol.messages import (
    MESSAGE_CLASSES,
    DiskReady,
    Hello,
    MapChunk,
    MapEnd,
    MapStatus,
    Message,
    MsgType,
    OpenDisk,
    Welcome,
)
from protocol.state import State
from protocol.version import PROTOCOL_VERSION
from source_agent.filters import ext, lvm, ntfs, partitions, swap, xfs
from source_agent.filters.abm import _PARSE_ERRORS
from source_agent.filters.extents import ExtentList
from source_agent.filters.volume import NotParsed, Range, Volume
from vzcommon import records, vmdk, vzmap
from vzcommon.errors import InputError, IntegrityError
from vzcommon.geometry import block_count

Harness = Callable[[bytes], str]


@dataclass(frozen=True)
class Target:
    name: str
    run: Harness
    #: libFuzzer's -max_len: the longest input it makes up
    max_len: int = 4096


# -- protocol -----------------------------------------------------------------------------------------

BS = 64 * 1024
HELLO = Hello(PROTOCOL_VERSION, "fuzz", "vm1", ("blake3-256",), ("zstd", "none"), BS)
WELCOME = Welcome(PROTOCOL_VERSION, "fuzz", "blake3-256", ("zstd",), BS)
OPEN = OpenDisk(0, "d0", 4 * BS, "", "")
MAP = (
    DiskReady(0, "g", MapStatus.SENDING, "", 2 * BS, (), False),
    MapChunk(0, 0, b"\x07" * 64),
    MapEnd(0, "g", 2),
)


def _fresh_target() -> Connection:
    return TargetConnection()


def _source_after_hello() -> Connection:
    src = SourceConnection()
    src.send(HELLO)
    return src


def _source_opening() -> Connection:
    """Shook hands and opened disk 0: the target's DISK_READY and map come next."""
    src = _source_after_hello()
    src.receive_data(_frame_of(WELCOME))
    assert src.next_event() == WELCOME
    src.send(OPEN)
    return src


def _target_streaming() -> Connection:
    """Shook hands, disk 0 open and its map sent: blocks come next."""
    target = TargetConnection()
    target.receive_data(_frame_of(HELLO) + _frame_of(OPEN))
    assert target.next_event() == HELLO
    target.send(WELCOME)
    assert target.next_event() == OPEN
    for msg in MAP:
        target.send(msg)
    return target


def _frame_of(msg: Message) -> bytes:
    return encode_frame(msg.TYPE, codec.pack(msg.to_fields()))


STARTS: tuple[Callable[[], Connection], ...] = (
    _fresh_target,
    _source_after_hello,
    _source_opening,
    _target_streaming,
)
_STEPS = (1, 7, 4096, 1 << 30)


def fix_crcs(stream: bytes) -> bytes:
    """Rewrite each whole frame's CRC to match its header and body (so mutations get past it)."""
    out = bytearray(stream)
    pos = 0
    while pos + HEADER_SIZE <= len(out):
        length = int.from_bytes(out[pos + 4 : pos + 8], "big")
        end = pos + HEADER_SIZE + length
        if end > len(out):
            break
        crc = zlib.crc32(bytes(out[pos + HEADER_SIZE : end]), zlib.crc32(bytes(out[pos : pos + 8])))
        out[pos + 8 : pos + 12] = crc.to_bytes(4, "big")
        pos = end
    return bytes(out)


def frame(data: bytes) -> str:
    """Control byte: bits 0-1 and 5 the connection's state, bit 2 repair CRCs, bits 3-4 the read size."""
    if not data:
        return "ok"
    ctl, stream = data[0], data[1:]
    conn = STARTS[((ctl & 3) | (ctl >> 3 & 4)) % len(STARTS)]()
    if ctl & 4:
        stream = fix_crcs(stream)
    step = _STEPS[(ctl >> 3) & 3]
    try:
        for pos in range(0, len(stream), step):
            conn.receive_data(stream[pos : pos + step])
            while (event := conn.next_event()) is not NEED_DATA:
                assert isinstance(event, Message), event
        conn.receive_data(b"")
        while isinstance(event := conn.next_event(), Message):
            pass
        assert event is CLOSED, event
        return "ok"
    except RemoteProtocolError:
        assert conn.state is State.ERROR, conn.state
        try:
            conn.next_event()
        except RemoteProtocolError:
            return "refused"
        raise AssertionError("a connection in ERROR went on") from None


def message(data: bytes) -> str:
    """Byte 0 the message type, the rest its msgpack body: decode, validate, and re-encode."""
    if not data:
        return "ok"
    try:
        mtype = MsgType(data[0] % 16)
    except ValueError:
        return "refused"
    try:
        msg = MESSAGE_CLASSES[mtype].from_fields(codec.unpack(data[1:]))
    except RemoteProtocolError:
        return "refused"
    again = MESSAGE_CLASSES[mtype].from_fields(codec.unpack(codec.pack(msg.to_fields())))
    assert again == msg, (msg, again)
    return "ok"


# -- vzcommon and the appliance ------------------------------------------------------------------------


def vmdk_descriptor(data: bytes) -> str:
    """As :func:`vmdk.read_descriptor` reads a file's bytes."""
    vmdk.looks_like_descriptor(data[:1024])
    try:
        desc = vmdk.parse_descriptor(data.decode("utf-8", "replace"), "fuzz.vmdk")
    except InputError:
        return "refused"
    assert desc.size >= 0
    return "ok"


def record(data: bytes) -> str:
    """Control byte bit 0: repair the checksum of a well-formed record before loading it."""
    if not data:
        return "ok"
    body = data[1:]
    if data[0] & 1:
        body = _fix_record(body)
    try:
        got = records.load_record(body, "vzrep-journal", "fuzz")
    except IntegrityError:
        return "refused"
    assert isinstance(got, dict)
    return "ok"


def _fix_record(raw: bytes) -> bytes:
    try:
        outer = json.loads(raw)
        payload = json.dumps(outer["body"], sort_keys=True, separators=(",", ":"))
        outer["crc32"] = zlib.crc32(f"{outer['magic']}:{outer['version']}:{payload}".encode())
        return json.dumps(outer).encode()
    except Exception:  # anything the repair cannot handle is fuzzed as it is
        return raw


_MEMFD: int | None = None


def _memfile(data: bytes) -> str:
    """``data`` as a file (a memfd: no disk I/O per input); returns its path."""
    global _MEMFD
    if _MEMFD is None:
        _MEMFD = os.memfd_create("fuzz")
    os.ftruncate(_MEMFD, 0)
    os.pwrite(_MEMFD, data, 0)
    return f"/proc/self/fd/{_MEMFD}"


_MAP_HEAD = struct.Struct("<8sHHIQQ")


def map_file(data: bytes) -> str:
    """Control byte: bit 0 make the entry count and the file length agree with the header (when the
    map is small), bit 1 repair the BLAKE3 trailer. Then open, verify and read entries."""
    if not data:
        return "ok"
    ctl, body = data[0], bytearray(data[1:])
    if ctl & 1 and len(body) >= _MAP_HEAD.size:
        _, _, _, bs, size, _ = _MAP_HEAD.unpack_from(body)
        if bs:
            n = block_count(size, bs)
            if n <= 1024:
                struct.pack_into("<Q", body, 24, n)
                body = body[: vzmap.HEADER_SIZE + 32 * n].ljust(vzmap.HEADER_SIZE + 32 * n, b"\0")
    if ctl & 2:
        body += blake3(bytes(body)).digest()
    path = _memfile(bytes(body))
    try:
        with vzmap.MapFile.open(path, verify=True) as m:
            n = m.header.entries
            assert len(m.read_entries(0, 3)) == 96
            assert len(m.read_entries(max(n - 1, 0), 2)) == 64
    except IntegrityError:
        return "refused"
    return "ok"


def vztemp(data: bytes) -> str:
    """The source's extent filter files; control byte bit 0 repairs the CRC."""
    if not data:
        return "ok"
    body = data[1:]
    if data[0] & 1 and len(body) >= 4:
        body = body[:-4] + struct.pack("<I", zlib.crc32(body[:-4]))
    try:
        extents, _, _ = ExtentList.from_bytes(body)
    except IntegrityError:
        return "refused"
    assert isinstance(extents, ExtentList)
    return "ok"


def ovf_environment(data: bytes) -> str:
    """Control byte bit 0: the rest is ``key=value`` lines for :func:`ovfenv.validate` (the checks
    behind the XML); else it is the XML document for :func:`ovfenv.parse`. Neither may raise."""
    if not data:
        return "ok"
    if data[0] & 1:
        props = {}
        for line in data[1:].decode("utf-8", "replace").split("\n"):
            key, _, value = line.partition("=")
            props[key] = value
        result = ovfenv.validate(props)
    else:
        result = ovfenv.parse(data[1:])
    assert isinstance(result, ovfenv.Result)
    return "refused" if result.problems else "ok"


# -- ABM ----------------------------------------------------------------------------------------------


def _abm(parse: Callable[[Volume, bool], list[Range]]) -> Harness:
    """A harness for one ABM parser over a sparse image (:mod:`fuzz.image`); the last byte's bit 0
    is the parser's option (skip_pagefile, skip_swap)."""

    def run(data: bytes) -> str:
        reader = SparseImage(data)
        vol = Volume.whole(reader)
        try:
            ranges = parse(vol, bool(data[-1] & 1) if data else False)
        except NotParsed:
            return "refused"
        except _PARSE_ERRORS as exc:
            return f"tolerated:{type(exc).__name__}"
        for r in ranges:
            assert len(r) == 2 and all(type(x) is int for x in r), r
        active = ExtentList(vol.to_disk(ranges)).clip(reader.size)
        assert active.total <= reader.size
        return "ok"

    return run


def _partitions(vol: Volume, _opt: bool) -> list[Range]:
    head = vol.pread(0, 512)
    table = partitions.parse_gpt(vol) if partitions.is_protective_mbr(head) else partitions.parse_mbr(vol)
    for part in table.partitions:
        vol.slice(part.start, part.length, part.label)
    return list(table.structures)


def _lvm(vol: Volume, _opt: bool) -> list[Range]:
    ranges, _ = lvm.active_disk_ranges(vol, lambda lv: list(lv.disk_ranges()))
    return ranges


_IMAGE_LEN = 72 * 1024

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("frame", frame, 8192),
        Target("message", message, 2048),
        Target("vmdk", vmdk_descriptor, vmdk.MAX_DESCRIPTOR),
        Target("ovfenv", ovf_environment, 16384),
        Target("record", record, 16384),
        Target("vzmap", map_file, 4096),
        Target("vztemp", vztemp, 1024),
        Target("partitions", _abm(_partitions), _IMAGE_LEN),
        Target("ntfs", _abm(lambda v, o: ntfs.active_ranges(v, skip_pagefile=o)[0]), _IMAGE_LEN),
        Target("ext", _abm(lambda v, o: ext.active_ranges(v)[0]), _IMAGE_LEN),
        Target("xfs", _abm(lambda v, o: xfs.active_ranges(v)[0]), _IMAGE_LEN),
        Target("lvm", _abm(_lvm), _IMAGE_LEN),
        Target("swap", _abm(lambda v, o: swap.active_ranges(v, skip_swap=o)[0]), 1024),
    )
}
