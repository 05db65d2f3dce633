"""Where a replica disk's files are, how a range of it is made zeros, and the error for a missing device.

Files of disk ``NAME`` in ``DATA_DIR/<vm>/``:

* ``NAME.vmdk`` -- monolithicFlat descriptor (readable by qemu-img and ESXi)
* ``NAME-flat.vmdk`` -- the flat extent, created sparse
* ``NAME-flat.vmdk.vzmap`` -- block hashes as of the last committed pass
* ``NAME-flat.vmdk.vzundo`` -- original bytes of blocks this pass overwrote (exists only during a pass)
* ``*.next`` -- descriptor and map of the pass being committed (exist only during a commit)

A device-backed replica (vSphere) keeps its flat bytes in ``device``; see ``replica``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vzcommon.blockhash import zero_block
from vzcommon.errors import StorageError
from vzcommon.sparse import punch_hole


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
        punch_hole(fd, offset, length)
        return
    zeros = zero_block(min(length, 1 << 20))
    end = offset + length
    while offset < end:
        offset += os.pwrite(fd, zeros[: min(len(zeros), end - offset)], offset)
