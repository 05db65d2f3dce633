"""The ``.vzmap`` file: the hash of every block of a replica, as of the last committed pass.

Layout (little endian)::

    header, 512 bytes:
      magic b"VZMAP\\0\\r\\n"  version u16  hash_len u16  block_size u32  disk_size u64  entries u64
      cid u32 (replica descriptor CID at commit)  hash_alg 16s  generation 64s
      change_id_len u16  change_id 256s  (zero padding)
    entries x hash_len bytes   (all-zero entry = content unknown; see vzcommon.blockhash)
    trailer: BLAKE3-256 of header and entries

The target writes a map only at the end of a successful pass, as a ``.next`` file that the commit
renames into place. The source keeps a copy in its cache, built the same way, so an unchanged map
need not cross the link again. Entries are read and written with pread/pwrite, never loaded whole, so
memory stays bounded whatever the disk size.
"""

from __future__ import annotations

import contextlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from blake3 import blake3

from . import fsio
from .blockhash import HASH_LEN, HASH_NAME
from .durable import pwrite_all
from .errors import IntegrityError
from .geometry import block_count

MAGIC = b"VZMAP\x00\r\n"
VERSION = 1
HEADER_SIZE = 512
_HEAD = struct.Struct("<8sHHIQQI16s64sH256s")
_IO_CHUNK = 4 << 20


@dataclass(frozen=True)
class MapHeader:
    block_size: int
    disk_size: int
    entries: int
    cid: int = 0
    hash_alg: str = HASH_NAME
    generation: str = ""
    change_id: str = ""

    def pack(self) -> bytes:
        cid = self.change_id.encode()
        head = _HEAD.pack(
            MAGIC,
            VERSION,
            HASH_LEN,
            self.block_size,
            self.disk_size,
            self.entries,
            self.cid,
            self.hash_alg.encode(),
            self.generation.encode(),
            len(cid),
            cid,
        )
        return head.ljust(HEADER_SIZE, b"\0")

    @classmethod
    def unpack(cls, data: bytes, where: str) -> MapHeader:
        if len(data) < HEADER_SIZE or data[:8] != MAGIC:
            raise IntegrityError(f"{where} is not a vzrep block map")
        _, version, hash_len, bs, size, entries, cid, alg, gen, clen, change = _HEAD.unpack_from(data)
        if version != VERSION or hash_len != HASH_LEN:
            raise IntegrityError(f"{where}: map version {version} / hash length {hash_len} not supported")
        if bs <= 0 or entries != block_count(size, bs):
            raise IntegrityError(f"{where}: map header is inconsistent")
        return cls(
            bs,
            size,
            entries,
            cid,
            alg.rstrip(b"\0").decode("ascii", "replace"),
            gen.rstrip(b"\0").decode("ascii", "replace"),
            change[:clen].decode("ascii", "replace"),
        )


class MapFile:
    """A committed map, opened read-only. ``open`` verifies the checksum unless told not to."""

    def __init__(self, path: Path, fd: int, header: MapHeader) -> None:
        self.path, self._fd, self.header = path, fd, header

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, verify: bool = True) -> MapFile:
        p = Path(path)
        fd = fsio.open(p, os.O_RDONLY)
        try:
            header = MapHeader.unpack(os.pread(fd, HEADER_SIZE, 0), str(p))
            body_len = HEADER_SIZE + header.entries * HASH_LEN
            if os.fstat(fd).st_size != body_len + 32:
                raise IntegrityError(f"{p}: map file has the wrong length (truncated?)")
            if verify:
                h = blake3()
                pos = 0
                while pos < body_len:
                    chunk = os.pread(fd, min(_IO_CHUNK, body_len - pos), pos)
                    if not chunk:
                        break
                    h.update(chunk)
                    pos += len(chunk)
                if h.digest() != os.pread(fd, 32, body_len):
                    raise IntegrityError(f"{p}: map fails its checksum")
        except BaseException:
            fsio.close(fd)
            raise
        return cls(p, fd, header)

    def read_entries(self, first: int, count: int) -> bytes:
        """Entries ``[first, first+count)``; entries past the map's end read as unknown."""
        have = max(0, min(count, self.header.entries - first))
        data = os.pread(self._fd, have * HASH_LEN, HEADER_SIZE + first * HASH_LEN) if have else b""
        return data + bytes((count - have) * HASH_LEN)

    def close(self) -> None:
        if self._fd >= 0:
            fsio.close(self._fd)
            self._fd = -1

    def __enter__(self) -> MapFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MapBuilder:
    """A map being built for the next commit, in a file of its own (``*.next``)."""

    def __init__(
        self, path: str | os.PathLike[str], block_size: int, disk_size: int, base: MapFile | None
    ) -> None:
        self.path = Path(path)
        self.block_size = block_size
        self.disk_size = disk_size
        self.entries = block_count(disk_size, block_size)
        self._fd = fsio.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)  # block hashes: private
        try:
            fsio.ftruncate(self._fd, HEADER_SIZE + self.entries * HASH_LEN)  # sparse: all unknown
            if base is not None and base.header.block_size == block_size:
                n = min(base.header.entries, self.entries)
                for first in range(0, n, _IO_CHUNK // HASH_LEN):
                    count = min(_IO_CHUNK // HASH_LEN, n - first)
                    self.set_range(first, base.read_entries(first, count))
        except BaseException:
            self.abort()
            raise

    def set_range(self, first: int, hashes: bytes) -> None:
        if first < 0 or first + len(hashes) // HASH_LEN > self.entries:
            raise IndexError("map entry out of range")
        pwrite_all(self._fd, hashes, HEADER_SIZE + first * HASH_LEN)

    def fill(self, first: int, count: int, value: bytes) -> None:
        step = _IO_CHUNK // HASH_LEN
        for i in range(first, first + count, step):
            self.set_range(i, value * min(step, first + count - i))

    def read_entries(self, first: int, count: int) -> bytes:
        count = max(0, min(count, self.entries - first))
        return os.pread(self._fd, count * HASH_LEN, HEADER_SIZE + first * HASH_LEN)

    def finish(self, *, generation: str, cid: int = 0, change_id: str = "") -> MapHeader:
        """Write header and checksum and fsync; the caller renames the file into place."""
        header = MapHeader(
            self.block_size, self.disk_size, self.entries, cid, HASH_NAME, generation, change_id
        )
        pwrite_all(self._fd, header.pack(), 0)
        body_len = HEADER_SIZE + self.entries * HASH_LEN
        fsio.ftruncate(self._fd, body_len)
        h = blake3()
        pos = 0
        while pos < body_len:
            chunk = os.pread(self._fd, min(_IO_CHUNK, body_len - pos), pos)
            h.update(chunk)
            pos += len(chunk)
        pwrite_all(self._fd, h.digest(), body_len)
        fsio.fsync(self._fd)
        fsio.close(self._fd)
        self._fd = -1
        return header

    def abort(self) -> None:
        if self._fd >= 0:
            fsio.close(self._fd)
            self._fd = -1
        with contextlib.suppress(FileNotFoundError):
            fsio.unlink(self.path)
