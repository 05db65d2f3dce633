"""The ``.vzundo`` write-ahead undo log: original bytes of every block a pass overwrites.

The rule (write-ahead): the undo records of a batch are written and fsynced before any block of that
batch is written to the replica. A crash therefore leaves every overwritten block recoverable.

Layout (little endian)::

    header, 512 bytes: magic b"VZUNDO\\0\\n"  version u16  flags u16 (1 = the pass created the disk)
                       old_size u64  pass_id 64s  disk 64s  crc32 u32 of the bytes before it
    record:            magic b"VZUR"  offset u64  length u32  kind u8 (0 data, 1 zero)
                       crc32 u32 of (offset, length, kind, data)  then ``length`` bytes if kind is data

Records are appended only. Reading stops at the first short or failing record: a torn tail record
was never fsynced, so the block it would protect was never written.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from vzcommon import fsio
from vzcommon.checksum import crc32
from vzcommon.durable import fsync_dir
from vzcommon.errors import IntegrityError

MAGIC = b"VZUNDO\x00\n"
VERSION = 1
HEADER_SIZE = 512
_HEAD = struct.Struct("<8sHHQ64s64s")
_REC = struct.Struct("<4sQIBI")
_REC_MAGIC = b"VZUR"
FLAG_CREATED = 1


class RecordKind(IntEnum):
    DATA = 0  # the original bytes follow
    ZERO = 1  # the range read as zeros (a hole); rollback punches it again


@dataclass(frozen=True)
class UndoHeader:
    old_size: int
    created: bool
    pass_id: str
    disk: str


@dataclass(frozen=True)
class UndoRecord:
    offset: int
    length: int
    kind: RecordKind
    data: bytes


def _record_crc(offset: int, length: int, kind: int, data: bytes) -> int:
    return crc32(data, crc32(struct.pack("<QIB", offset, length, kind)))


def encode_record(offset: int, kind: RecordKind, data: bytes = b"", length: int = 0) -> bytes:
    length = len(data) if kind is RecordKind.DATA else length
    return _REC.pack(_REC_MAGIC, offset, length, kind, _record_crc(offset, length, kind, data)) + data


class UndoLog:
    """An open undo log, appended to by one disk writer."""

    def __init__(self, path: Path, fd: int, header: bytes) -> None:
        self.path, self._fd = path, fd
        self.bytes = len(header)
        #: SHA-256 of the whole file as written: a committed log kept as a restore point's increment
        #: is recorded with it (``points``), computed here so keeping it costs no extra read
        self.sha256 = hashlib.sha256(header)

    @classmethod
    def create(
        cls, path: str | os.PathLike[str], *, old_size: int, created: bool, pass_id: str, disk: str
    ) -> UndoLog:
        """Create the log and make it (and its name) durable before the replica is touched."""
        p = Path(path)
        fd = fsio.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        try:
            head = _HEAD.pack(
                MAGIC, VERSION, FLAG_CREATED if created else 0, old_size, pass_id.encode(), disk.encode()
            )
            head += struct.pack("<I", crc32(head))
            head = head.ljust(HEADER_SIZE, b"\0")
            fsio.write(fd, head)
            fsio.fsync(fd)
            fsync_dir(p.parent)
        except BaseException:
            fsio.close(fd)
            raise
        return cls(p, fd, head)

    def append(self, records: bytes) -> None:
        """Append encoded records and fsync them (one group commit)."""
        view = memoryview(records)
        while view:
            n = fsio.write(self._fd, view)
            view = view[n:]
        fsio.fdatasync(self._fd)
        self.bytes += len(records)
        self.sha256.update(records)

    def close(self) -> None:
        if self._fd >= 0:
            fsio.close(self._fd)
            self._fd = -1


def read_header(path: str | os.PathLike[str]) -> UndoHeader:
    with open(path, "rb") as f:
        raw = f.read(HEADER_SIZE)
    if len(raw) < _HEAD.size + 4 or raw[:8] != MAGIC:
        raise IntegrityError(f"{path} is not a vzrep undo log")
    (crc,) = struct.unpack_from("<I", raw, _HEAD.size)
    if crc32(raw[: _HEAD.size]) != crc:
        raise IntegrityError(f"{path}: undo log header fails its checksum")
    _, version, flags, old_size, pass_id, disk = _HEAD.unpack_from(raw)
    if version != VERSION:
        raise IntegrityError(f"{path}: undo log version {version} is not supported")
    return UndoHeader(
        old_size, bool(flags & FLAG_CREATED), pass_id.rstrip(b"\0").decode(), disk.rstrip(b"\0").decode()
    )


def read_records(path: str | os.PathLike[str]) -> Iterator[UndoRecord]:
    """Yield the valid records in order; stop silently at a torn tail."""
    with open(path, "rb") as f:
        f.seek(HEADER_SIZE)
        while True:
            head = f.read(_REC.size)
            if len(head) < _REC.size:
                return
            magic, offset, length, kind, crc = _REC.unpack(head)
            if magic != _REC_MAGIC or kind not in (0, 1) or length > 1 << 30:
                return
            data = f.read(length) if kind == RecordKind.DATA else b""
            if len(data) != (length if kind == RecordKind.DATA else 0):
                return
            if _record_crc(offset, length, kind, data) != crc:
                return
            yield UndoRecord(offset, length, RecordKind(kind), data)
