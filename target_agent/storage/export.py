"""A restore point's disks, written out as thin monolithicFlat VMDKs: test failover and file restore.

The live replica is copied sparsely (only its data segments are read; holes stay holes), then the
increments of every newer point are applied to the copy, newest first, and each disk is cut to its
size at the point (a disk that grew later is exported at its old size). The replica and its points
are only read, under the VM's lock (a pass waits its turn: exit 10). The copy is made in a hidden
directory inside the destination and renamed into place when complete, so a crash leaves either
nothing or a stale hidden directory (removed by the next export), never a half-made disk.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path

from vzcommon import fsio
from vzcommon.durable import fsync_dir, pwrite_all, write_durable
from vzcommon.errors import InputError, IntegrityError, StorageError
from vzcommon.sparse import data_segments
from vzcommon.vmdk import render_flat_descriptor

from . import points as rp
from . import undo
from .lock import VmLock
from .paths import ReplicaPaths, zero_range

COPY_CHUNK = 64 << 20


def check_increment(vdir: Path, point: rp.Point, disk: str) -> Path:
    """The increment's file, refused unless its size and SHA-256 are those recorded at commit."""
    inc = point.increments[disk]
    path = rp.increment_path(vdir, point.id, disk)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise IntegrityError(
            f"restore point {point.id}: the increment of disk {disk!r} is missing ({path})"
        ) from None
    if size != inc.bytes or rp.sha256_of(path) != inc.sha256:
        raise IntegrityError(
            f"restore point {point.id}: the increment of disk {disk!r} ({path}) is damaged"
            f" ({size} bytes, {inc.bytes} recorded, or its SHA-256 differs); points older than"
            f" {point.id} cannot be restored"
        )
    return path


def _sparse_copy(src: Path, dst: Path, size: int) -> None:
    """Copy only the data segments (holes stay holes), in the kernel (``copy_file_range``: no bytes
    through user space, and a reflink where the filesystem shares extents)."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.truncate(size)
        for off, length in data_segments(fin.fileno(), 0, size):
            end = off + length
            while off < end:
                n = fsio.copy_file_range(fin.fileno(), fout.fileno(), min(COPY_CHUNK, end - off), off, off)
                if n <= 0:  # the source shrank under us
                    raise OSError(5, f"{src} ended at {off} while being copied")
                off += n
        fsio.fsync(fout.fileno())


def _apply(increment: Path, fd: int) -> None:
    """Apply one reverse increment (checked by :func:`check_increment`) to an open copy."""
    for rec in undo.read_records(increment):
        if rec.kind is undo.RecordKind.DATA:
            pwrite_all(fd, rec.data, rec.offset)
        else:
            zero_range(fd, rec.offset, rec.length, block_device=False)


def export_point(data_dir: Path, vm: str, point_id: str, out_dir: Path) -> list[Path]:
    """Write the VM's disks as they were at ``point_id`` into ``out_dir``; the descriptors written."""
    vdir = data_dir / vm
    if not vdir.is_dir():
        raise InputError(f"no replica of VM {vm!r} in {data_dir}")
    with VmLock(vdir, vm):
        points = rp.load(vdir)
        k = rp.find(points, point_id, vm)
        point, newer = points[k], points[k + 1 :]
        # every increment is checked before anything is written
        steps = [(p, d, check_increment(vdir, p, d)) for p in reversed(newer) for d in p.increments]
        out_dir.mkdir(parents=True, exist_ok=True)
        exists = [
            d
            for d in point.disks
            if (out_dir / f"{d}.vmdk").exists() or (out_dir / f"{d}-flat.vmdk").exists()
        ]
        if exists:
            raise InputError(f"{out_dir} already holds disk {exists[0]!r}; export into an empty directory")
        work = out_dir / f".vzrep-export-{point.id}"
        shutil.rmtree(work, ignore_errors=True)  # a crashed export's leftovers
        work.mkdir(mode=0o700)
        try:
            for disk, size in point.disks.items():
                live = ReplicaPaths(vdir, disk)
                if not live.flat.exists():
                    raise IntegrityError(
                        f"restore point {point.id}: replica disk {disk!r} is missing ({live.flat})"
                    )
                flat = work / f"{disk}-flat.vmdk"
                _sparse_copy(live.flat, flat, live.flat.stat().st_size)
                fd = fsio.open(flat, os.O_RDWR)
                try:
                    for p, d, inc in steps:
                        if d == disk and not p.increments[d].created:
                            _apply(inc, fd)
                    fsio.ftruncate(fd, size)  # a disk that grew after the point is cut to its size then
                    fsio.fsync(fd)
                finally:
                    fsio.close(fd)
                write_durable(
                    work / f"{disk}.vmdk",
                    render_flat_descriptor(flat.name, size, secrets.randbits(32) or 1).encode(),
                    0o600,
                )
            fsync_dir(work)
            done = []
            for disk in point.disks:
                for name in (f"{disk}-flat.vmdk", f"{disk}.vmdk"):
                    fsio.replace(work / name, out_dir / name)
                done.append(out_dir / f"{disk}.vmdk")
            fsync_dir(out_dir)
        except OSError as exc:
            raise StorageError(f"export of restore point {point.id} of VM {vm!r} failed: {exc}") from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
            with contextlib.suppress(OSError):
                fsync_dir(out_dir)
    return done
