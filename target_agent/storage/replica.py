"""One replica disk during a pass: the write path with undo, and the map.

The disk's files are named in ``paths``; undoing or finishing a pass is ``rollback``'s. Whether a
block is "unchanged" is decided here and only here: the session verified what arrived against its
hash, and the writer, which reads the replica's bytes anyway for the undo log, skips a block whose
bytes the replica already holds (no write, no undo record).

**Device-backed replicas** (vSphere jobs): the flat bytes live in a given ``device`` -- the replica
VM's disk HotAdded to the target appliance (a block device), or its ``-flat.vmdk`` on a datastore the
appliance mounts (vcsim in the tests). vSphere owns that disk's descriptor, so none is written, and a
device is never created, unlinked or truncated: growth happens in vSphere before the pass (the
vSphere client extends the disk), and the undo header still records the old size. Map, undo log and journal
stay in ``DATA_DIR/<vm>/`` under the same names, so recovery finds them; the journal records the
device (see ``transaction``).
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from protocol.messages import MapStatus
from vzcommon import fsio
from vzcommon.blockhash import hash_block, zero_block, zero_hash
from vzcommon.durable import fsync_dir, start_writeback, write_durable
from vzcommon.errors import InputError, IntegrityError, StorageError
from vzcommon.geometry import Geometry, block_count
from vzcommon.log import get_logger
from vzcommon.sparse import data_segments
from vzcommon.vmdk import read_descriptor, render_flat_descriptor
from vzcommon.vzmap import MapBuilder, MapFile

from .paths import PRIVATE_FILE, ReplicaPaths, make_private, zero_range
from .points import Increment
from .undo import RecordKind, UndoLog, encode_record

log = get_logger("vzrep.target.replica")

#: Flush undo and data once this many original bytes are pending (bounds memory on huge zero ranges).
FLUSH_BYTES = 16 << 20


@dataclass
class OpenResult:
    map_status: MapStatus
    generation: str
    stored_change_id: str
    replica_size: int
    notes: list[str] = field(default_factory=list)
    #: the map was rebuilt from the replica's bytes (no trusted map of an earlier pass)
    map_rebuilt: bool = False
    #: verify/repair: blocks whose bytes on disk differ from what the committed map said of them
    map_wrong_blocks: int = 0


@dataclass
class WriteStats:
    blocks_written: int = 0
    blocks_unchanged: int = 0
    bytes_written: int = 0
    bytes_zeroed: int = 0
    undo_bytes: int = 0
    #: what the writer was given, whatever it had to do: BLOCKs and the bytes ZERO_RANGEs cover
    blocks_applied: int = 0
    zero_range_bytes: int = 0


def _storage_error(exc: OSError, what: str) -> StorageError:
    return StorageError(
        f"{what}: {exc.strerror or exc}; the pass is rolled back and the replica keeps its previous state"
    )


def trusted_map(paths: ReplicaPaths, size: int, block_size: int, notes: list[str]) -> MapFile | None:
    """The committed map, if it can be trusted for this replica; otherwise None and a note why."""
    if not paths.map.exists():
        notes.append("no block map for the existing replica: re-verifying the whole disk by hashing")
        return None
    try:
        m = MapFile.open(paths.map)
    except (IntegrityError, OSError) as exc:
        notes.append(f"block map not trusted ({exc}): re-verifying the whole disk by hashing")
        return None
    h = m.header
    reason = ""
    if h.block_size != block_size:
        reason = f"block size changed from {h.block_size} to {block_size}"
    elif h.disk_size != size:
        reason = f"map describes {h.disk_size} bytes, the replica has {size}"
    elif paths.device is None:  # a device's descriptor (and its CID) belongs to vSphere
        try:
            cid = read_descriptor(paths.descriptor).cid
        except InputError:
            cid = -1
        if cid != h.cid:
            reason = (
                f"replica descriptor CID changed from {h.cid:08x} to {cid & 0xFFFFFFFF:08x} outside replication"
                " (was the replica powered on or edited?)"
            )
    if reason:
        m.close()
        notes.append(f"{reason}: re-verifying the whole disk by hashing")
        log.warning("map_not_trusted", disk=paths.disk, reason=reason)
        return None
    return m


def device_size(path: Path) -> int:
    """Size of a device or file (``st_size`` is 0 for a block device, so seek to its end)."""
    fd = fsio.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        fsio.close(fd)


def replica_hashes(fd: int, size: int, block_size: int) -> Iterator[tuple[int, bytes]]:
    """(first block, its hashes and those after it) for the data segments of the replica's bytes, 128
    blocks a read; blocks in holes are not read and not yielded (they hash as zero blocks)."""
    for seg_off, seg_len in data_segments(fd, 0, size):
        first = seg_off // block_size
        last = block_count(seg_off + seg_len, block_size)
        for idx0 in range(first, last, 128):
            idx1 = min(last, idx0 + 128)
            start, end = idx0 * block_size, min(idx1 * block_size, size)
            buf = memoryview(os.pread(fd, end - start, start))
            hashes = bytearray()
            for pos in range(0, len(buf), block_size):
                hashes += hash_block(buf[pos : pos + block_size])
            yield idx0, bytes(hashes)


def hash_replica(fd: int, size: int, block_size: int, builder: MapBuilder) -> None:
    """Rebuild map entries from the replica's bytes; holes hash as zero blocks without reading."""
    geometry = Geometry(size, block_size)
    builder.fill(0, geometry.blocks, zero_hash(block_size))
    if geometry.tail != block_size and size:
        builder.set_range(geometry.full_blocks, zero_hash(geometry.tail))
    for first, hashes in replica_hashes(fd, size, block_size):
        builder.set_range(first, hashes)


class DiskWriter:
    """Writes one disk of a pass: undo first, then the block, then the new map entry."""

    def __init__(
        self,
        paths: ReplicaPaths,
        *,
        size: int,
        block_size: int,
        pass_id: str,
        change_id: str,
        fresh: bool = False,
    ) -> None:
        self.paths = paths
        self.size = size
        self.block_size = block_size
        self.pass_id = pass_id
        self.change_id = change_id
        self.stats = WriteStats()
        self.old_size = 0
        self.created = False
        #: device-backed: the device is known to read as zeros (a disk created for this replica in this
        #: pass), so it is neither hashed nor reported as holding data
        self.fresh = fresh
        self._block_device = False
        self.builder: MapBuilder | None = None
        self._undo: UndoLog | None = None
        self._fd = -1
        self._pending_undo: list[bytes] = []
        self._pending_bytes = 0
        self._pending_writes: list[tuple[int, bytes | int]] = []
        self._zero_block = zero_block(block_size)

    # -- open ----------------------------------------------------------------------------------

    def open(self, cached_generation: str, *, rehash: bool = False) -> OpenResult:
        """Check the replica and its map, then create the undo log and size the flat extent.

        ``rehash`` (verify and repair): the map is not trusted whatever its state; the replica's bytes
        are hashed, and where they differ from the committed map is counted and noted."""
        p = self.paths
        exists = p.flat.exists()
        if p.device is not None:
            if not exists:
                raise StorageError(
                    f"the device {p.device} of replica disk {p.disk!r} is gone (was it detached?);"
                    " the pass is rolled back"
                )
            self.old_size = device_size(p.device)
            self._block_device = stat.S_ISBLK(p.device.stat().st_mode)
            if self.size > self.old_size:
                raise StorageError(
                    f"replica disk {p.disk!r} ({p.device}) has {self.old_size} bytes, the source disk"
                    f" {self.size}: it must be extended first (in vSphere for a replica VM disk, with truncate for a mapped file)"
                )
        else:
            self.old_size = p.flat.stat().st_size if exists else 0
        self.created = not exists
        if exists and self.size < self.old_size:
            raise InputError(
                f"source disk {p.disk!r} shrank from {self.old_size} to {self.size} bytes: a replica cannot shrink;"
                " move the replica aside to start a new one"
            )
        result = OpenResult(MapStatus.EMPTY, "", "", self.old_size)
        try:
            base = (
                trusted_map(p, self.old_size, self.block_size, result.notes)
                if exists and not self.fresh and not rehash
                else None
            )
            self.builder = MapBuilder(p.map_next, self.block_size, self.size, base)
            if base is None and self.fresh:
                self.builder.fill(0, block_count(self.size, self.block_size), zero_hash(self.block_size))
                if self.size % self.block_size:
                    self.builder.set_range(
                        self.size // self.block_size, zero_hash(self.size % self.block_size)
                    )
                result.replica_size = 0  # a new, empty replica: the source may read allocated areas only
            elif base is not None:
                result.generation = base.header.generation
                result.stored_change_id = base.header.change_id
                result.map_status = (
                    MapStatus.CACHED if cached_generation == result.generation else MapStatus.SENDING
                )
                base.close()
            elif exists:
                with open(p.flat, "rb") as f:
                    hash_replica(f.fileno(), self.old_size, self.block_size, self.builder)
                result.generation = secrets.token_hex(8)
                result.map_rebuilt = True
                result.map_status = MapStatus.SENDING
                if rehash:
                    self._compare_with_map(result)
            self._undo = UndoLog.create(
                p.undo, old_size=self.old_size, created=self.created, pass_id=self.pass_id, disk=p.disk
            )
            self._fd = fsio.open(p.flat, os.O_RDWR | (0 if p.device is not None else os.O_CREAT), PRIVATE_FILE)
            if p.device is None and not self.created:  # a seeded flat file may be anyone's to read
                make_private(self._fd, PRIVATE_FILE)
            if self.created:
                fsync_dir(p.vm_dir)
            if self.size > self.old_size and p.device is None:
                fsio.ftruncate(self._fd, self.size)  # sparse growth; rollback truncates to old_size
        except OSError as exc:
            raise _storage_error(exc, f"cannot prepare replica disk {p.disk!r}") from None
        return result

    def _compare_with_map(self, result: OpenResult) -> None:
        """Where the committed map disagrees with the bytes just hashed: the map itself was wrong (or
        the storage changed the bytes under it)."""
        assert self.builder is not None
        try:
            old = MapFile.open(self.paths.map)
        except FileNotFoundError:
            result.notes.append("verify: the replica had no block map to compare its bytes with")
            return
        except (IntegrityError, OSError) as exc:
            result.notes.append(f"verify: the block map is damaged ({exc}); the replica's bytes were hashed")
            result.map_wrong_blocks = block_count(self.old_size, self.block_size)
            return
        with old:
            if old.header.block_size != self.block_size or old.header.disk_size != self.old_size:
                result.notes.append("verify: the block map describes another geometry; the bytes were hashed")
                result.map_wrong_blocks = block_count(self.old_size, self.block_size)
                return
            n = block_count(self.old_size, self.block_size)
            wrong: list[int] = []
            for first in range(0, n, 4096):
                count = min(4096, n - first)
                a, b = old.read_entries(first, count), self.builder.read_entries(first, count)
                if a != b:
                    size = len(a) // count
                    wrong += [first + i for i in range(count) if a[i * size : (i + 1) * size] != b[i * size : (i + 1) * size]]
        result.map_wrong_blocks = len(wrong)
        if wrong:
            shown = ", ".join(f"block {i} (offset {i * self.block_size})" for i in wrong[:10])
            more = f" and {len(wrong) - 10} more" if len(wrong) > 10 else ""
            result.notes.append(
                f"verify: the replica's bytes differ from its block map in {len(wrong)} block(s): {shown}{more}"
            )

    def map_entries(self, first: int, count: int) -> bytes:
        assert self.builder is not None
        return self.builder.read_entries(first, count)

    # -- the write path ------------------------------------------------------------------------

    def _original(self, offset: int, length: int) -> bytes | None:
        """The replica's current bytes at a range, or None if they read as zeros without reading."""
        if offset >= self.old_size:
            return None
        end = min(offset + length, self.old_size)
        if next(data_segments(self._fd, offset, end), None) is None:
            return None
        data = os.pread(self._fd, length, offset)
        return None if data == zero_block(len(data)) else data

    def write_block(self, offset: int, data: bytes, digest: bytes) -> None:
        """Queue one verified block; its undo record is durable before it reaches the replica."""
        assert self.builder is not None
        orig = self._original(offset, len(data))
        idx = offset // self.block_size
        self.stats.blocks_applied += 1
        if orig == data or (orig is None and data == zero_block(len(data))):
            self.stats.blocks_unchanged += 1
        else:
            if offset < self.old_size:
                rec = (
                    encode_record(offset, RecordKind.DATA, orig)
                    if orig is not None
                    else encode_record(offset, RecordKind.ZERO, length=len(data))
                )
                self._pending_undo.append(rec)
                self._pending_bytes += len(rec)
            self._pending_writes.append((offset, data))
            self._pending_bytes += len(data)
            self.stats.blocks_written += 1
            self.stats.bytes_written += len(data)
        self.builder.set_range(idx, digest)
        if self._pending_bytes >= FLUSH_BYTES:
            self.flush()

    def write_zeros(self, offset: int, length: int) -> None:
        """Make a range read as zeros: only its data parts are saved to undo and punched."""
        assert self.builder is not None
        bs, geometry = self.block_size, Geometry(self.size, self.block_size)
        end = offset + length
        self.stats.zero_range_bytes += length
        full_end = geometry.full_blocks * bs  # where a short last block starts (or the disk's end)
        full = (min(end, full_end) - offset) // bs if offset < full_end else 0
        if full > 0:
            self.builder.fill(offset // bs, full, zero_hash(bs))
        if end == self.size and geometry.tail != bs:
            self.builder.set_range(geometry.full_blocks, zero_hash(geometry.tail))
        for seg_off, seg_len in list(data_segments(self._fd, offset, min(end, self.old_size))):
            pos = seg_off
            while pos < seg_off + seg_len:
                n = min(bs, seg_off + seg_len - pos)
                orig = os.pread(self._fd, n, pos)
                if orig != zero_block(len(orig)):
                    rec = encode_record(pos, RecordKind.DATA, orig)
                    self._pending_undo.append(rec)
                    self._pending_writes.append((pos, len(orig)))
                    self._pending_bytes += len(rec)
                    self.stats.bytes_zeroed += len(orig)
                    if self._pending_bytes >= FLUSH_BYTES:
                        self.flush()
                pos += n

    def flush(self) -> None:
        """Group commit: fsync the batch's undo records, then write its blocks (the write-ahead rule).

        The blocks' writeback starts at once, so the commit's fsync finds little left to write.
        """
        assert self._undo is not None
        try:
            if self._pending_undo:
                records = b"".join(self._pending_undo)
                self._undo.append(records)
                self.stats.undo_bytes += len(records)
            lo, hi = -1, -1
            for offset, what in self._pending_writes:
                if isinstance(what, int):
                    zero_range(self._fd, offset, what, block_device=self._block_device)
                    continue
                view = memoryview(what)
                pos = offset
                while view:
                    n = fsio.pwrite(self._fd, view, pos)
                    view, pos = view[n:], pos + n
                lo, hi = (offset, pos) if lo < 0 else (min(lo, offset), max(hi, pos))
            if lo >= 0:
                start_writeback(self._fd, lo, hi - lo)
        except OSError as exc:
            raise _storage_error(exc, f"cannot write replica disk {self.paths.disk!r}") from None
        finally:
            self._pending_undo.clear()
            self._pending_writes.clear()
            self._pending_bytes = 0

    # -- commit preparation --------------------------------------------------------------------

    def increment(self) -> Increment:
        """The pass's undo log as a restore point's reverse increment (after :meth:`prepare_commit`)."""
        assert self._undo is not None
        return Increment(
            bytes=self._undo.bytes,
            sha256=self._undo.sha256.hexdigest(),
            old_size=self.old_size,
            created=self.created,
        )

    def prepare_commit(self, generation: str) -> int:
        """Make data durable and write the ``.next`` descriptor and map; return the new CID."""
        assert self.builder is not None
        self.flush()
        cid = secrets.randbits(32) or 1
        try:
            fsio.fsync(self._fd)
            if self.paths.device is None:  # vSphere owns a device's descriptor
                text = render_flat_descriptor(self.paths.flat.name, self.size, cid)
                write_durable(self.paths.descriptor_next, text.encode(), PRIVATE_FILE)
            self.builder.finish(generation=generation, cid=cid, change_id=self.change_id)
        except OSError as exc:
            raise _storage_error(exc, f"cannot commit replica disk {self.paths.disk!r}") from None
        return cid

    def close(self) -> None:
        if self._fd >= 0:
            fsio.close(self._fd)
            self._fd = -1
        if self._undo is not None:
            self._undo.close()
        if self.builder is not None and self.builder._fd >= 0:
            self.builder.abort()
