"""One replica disk back to its last committed state (undo replayed) or forward to the new one.

Both are idempotent and safe to interrupt: recovery (``transaction``) may run them again after a
crash in the middle of either.
"""

from __future__ import annotations

import os
import stat

from vzcommon import fsio
from vzcommon.durable import fsync_dir, pwrite_all, unlink_durable
from vzcommon.errors import IntegrityError, StorageError

from . import points, undo
from .paths import DeviceNotAttached, ReplicaPaths, zero_range
from .undo import RecordKind


def rollback_disk(paths: ReplicaPaths) -> str:
    """Restore a disk from its undo log; idempotent and safe to interrupt. Returns what was done."""
    done = "nothing to undo"
    if paths.undo.exists():
        try:
            head = undo.read_header(paths.undo)
        except (IntegrityError, OSError):
            head = None  # the log's header never became durable, so the replica was never touched
        if head is not None and head.created and paths.device is None:
            unlink_durable(paths.flat, paths.descriptor)
            done = "removed the disk this pass had created"
        elif head is not None:
            restored = 0
            try:
                fd = fsio.open(paths.flat, os.O_RDWR)
            except FileNotFoundError:
                if paths.device is not None:  # keep the undo log: the device may come back
                    raise DeviceNotAttached(
                        f"cannot roll back replica disk {paths.disk!r}: its device {paths.device} is not"
                        " there; re-attach the disk and roll back again (rollback is safe to repeat)"
                    ) from None
                if next(undo.read_records(paths.undo), None) is not None:
                    # Original bytes with nowhere to go (the disk was removed, or its device was not
                    # recorded): keep them rather than lose them.
                    raise DeviceNotAttached(
                        f"cannot roll back replica disk {paths.disk!r}: {paths.flat} is missing but its undo"
                        f" log {paths.undo} holds original blocks; the undo log is kept. Restore the disk"
                        " (or start the agent with the vSphere options it used) and roll back again"
                    ) from None
                fd = -1
            if fd >= 0:
                try:
                    block_device = stat.S_ISBLK(os.fstat(fd).st_mode)
                    for rec in undo.read_records(paths.undo):
                        if rec.kind is RecordKind.DATA:
                            pwrite_all(fd, rec.data, rec.offset)  # a short write is an error
                        else:
                            zero_range(fd, rec.offset, rec.length, block_device=block_device)
                        restored += 1
                    # a device is never resized by a pass (vSphere grows it before), so never truncated
                    if paths.device is None and os.fstat(fd).st_size != head.old_size:
                        fsio.ftruncate(fd, head.old_size)
                    fsio.fsync(fd)
                except OSError as exc:
                    raise StorageError(
                        f"rollback of disk {paths.disk!r} failed: {exc.strerror}; fix the storage and run"
                        " `vzrep-target rollback` again (rollback is safe to repeat)"
                    ) from None
                finally:
                    fsio.close(fd)
            done = f"restored {restored} block ranges"
    unlink_durable(paths.map_next, paths.descriptor_next, paths.undo)
    return done


def roll_forward_disk(paths: ReplicaPaths, keep_as: str | None = None) -> None:
    """After the commit point: move the ``.next`` files into place; the undo log becomes restore point
    ``keep_as``'s increment (``points``), or is dropped when no point keeps it."""
    for nxt, final in ((paths.descriptor_next, paths.descriptor), (paths.map_next, paths.map)):
        if nxt.exists():
            fsio.replace(nxt, final)
    fsync_dir(paths.vm_dir)
    if keep_as is not None:
        points.keep_increment(paths.vm_dir, keep_as, paths.disk, paths.undo)
    else:
        unlink_durable(paths.undo)
