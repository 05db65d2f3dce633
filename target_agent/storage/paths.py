"""Where a replica disk's files are, how a range of it is made zeros, and the error for a missing device.

Files of disk ``NAME`` in ``DATA_DIR/<vm>/``:

* ``NAME.vmdk`` -- monolithicFlat descriptor (readable by qemu-img and ESXi)
* ``NAME-flat.vmdk`` -- the flat extent, created sparse
* ``NAME-flat.vmdk.vzmap`` -- block hashes as of the last committed pass
* ``NAME-flat.vmdk.vzundo`` -- original bytes of blocks this pass overwrote (exists only during a pass)
* ``*.next`` -- descriptor and map of the pass being committed (exist only during a commit)

A device-backed replica (vSphere) keeps its flat bytes in ``device``; see ``replica``.

Replica data is for the agent alone: the VM directory is made 0700 at every pass (whoever created
it: a seeded replica's directory is often 0755) and every file in it is created 0600
(:data:`PRIVATE_DIR`, :data:`PRIVATE_FILE`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vzcommon import fsio
from vzcommon.blockhash import zero_block
from vzcommon.errors import StorageError
from vzcommon.log import get_logger

log = get_logger("vzrep.target.paths")

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def make_private(path: Path | int, mode: int) -> None:
    """chmod a replica's directory (a path) or file (an fd) to ``mode``; best effort: what another user
    owns keeps its mode, with a warning (the agent may still be allowed to write it)."""
    try:
        if isinstance(path, int):
            os.fchmod(path, mode)
        else:
            os.chmod(path, mode)
    except PermissionError as exc:
        log.warning(
            "replica_not_private",
            path=str(path) if not isinstance(path, int) else f"fd {path}",
            error=exc.strerror,
            hint="give it to the agent's user (chown), so the agent can keep it private",
        )


@dataclass(frozen=True)
class ReplicaPaths:
    vm_dir: Path
    disk: str
    device: Path | None = None  # device-backed replica: the flat bytes live here (module docstring)

    @property
    def descriptor(self) -> Path:
        return self.vm_dir / f"{self.disk}.vmdk"

    @property
    def flat(self) -> Path:
        return self.device if self.device is not None else self.vm_dir / f"{self.disk}-flat.vmdk"

    @property
    def map(self) -> Path:
        return self.vm_dir / f"{self.disk}-flat.vmdk.vzmap"

    @property
    def undo(self) -> Path:
        return self.vm_dir / f"{self.disk}-flat.vmdk.vzundo"

    @property
    def map_next(self) -> Path:
        return self.vm_dir / f"{self.disk}-flat.vmdk.vzmap.next"

    @property
    def descriptor_next(self) -> Path:
        return self.vm_dir / f"{self.disk}.vmdk.next"


class DeviceNotAttached(StorageError):
    """A pending pass wrote to a disk that recovery cannot find now; the VM stays pending."""


def zero_range(fd: int, offset: int, length: int, *, block_device: bool) -> None:
    """Make a range read as zeros: punch a hole in a file; write zeros to a block device (a discard
    is not guaranteed to read back as zeros there)."""
    if not block_device:
        fsio.punch_hole(fd, offset, length)
        return
    zeros = zero_block(min(length, 1 << 20))
    end = offset + length
    while offset < end:
        offset += fsio.pwrite(fd, zeros[: min(len(zeros), end - offset)], offset)
