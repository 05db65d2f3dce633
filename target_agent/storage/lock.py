"""One pass per VM at a time: an exclusive ``flock`` on ``DATA_DIR/<vm>/.lock``.

The kernel drops a flock when its holder dies, so a killed agent cannot leave a VM stuck.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from vzcommon.errors import BusyError


def try_flock(path: Path, busy: str) -> int:
    """The fd of ``path`` (created 0600) holding an exclusive flock; BusyError(busy) if another has it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BusyError(busy) from None
    return fd


@contextlib.contextmanager
def exclusive(path: Path, busy: str) -> Iterator[None]:
    """One holder at a time of ``path``'s flock for the block (seed and map of a VM use their own)."""
    fd = try_flock(path, busy)
    try:
        yield
    finally:
        os.close(fd)


class VmLock:
    def __init__(self, vm_dir: Path, vm: str) -> None:
        self.path = vm_dir / ".lock"
        self.vm = vm
        self._fd = -1

    def acquire(self) -> VmLock:
        self._fd = try_flock(
            self.path,
            f"VM {self.vm!r} is busy on this target: a pass, rollback, verify, export (a test failover"
            " makes one), seeding or mapping of it is already running; wait for it to finish",
        )
        return self

    @staticmethod
    def is_held(vm_dir: Path) -> bool:
        """Whether a pass or rollback holds the VM's lock now; read-only (never creates ``.lock``)."""
        try:
            fd = os.open(vm_dir / ".lock", os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return False  # nobody ever locked it, so nobody holds it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops the probe's lock if it was taken
        return False

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> VmLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
