"""Where a HotAdded disk shows up inside the appliance: a block device, or a file for tests.

A locator maps an :class:`AttachedDisk` to a path the reader can open. In the appliance the disk is a
SCSI block device: found by its disk UUID (``/dev/disk/by-id/wwn-0x6000c2...``, present when the
appliance VM has ``disk.EnableUUID = TRUE``) or else by its SCSI unit (``/dev/disk/by-path/
...-scsi-0:0:<unit>:0``) when that is unambiguous. When the appliance can see the datastore as a
directory (an NFS datastore mounted on the appliance, or vcsim in the tests), the
:class:`DatastoreFileLocator` resolves the disk's datastore path to its ``-flat.vmdk`` file instead.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from vsphere.model import AttachedDisk, split_datastore_path
from vzcommon.errors import VSphereError

Locator = Callable[[AttachedDisk], Path]


def _device_size(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def find_block_device(
    disk: AttachedDisk, *, dev_root: str | os.PathLike[str] = "/dev/disk", check_size: bool = True
) -> Path:
    """The appliance's device node for ``disk``; raises ``VSphereError`` when it is not (yet) there."""
    root = Path(dev_root)
    if disk.uuid:
        hexid = disk.uuid.replace("-", "").replace(" ", "").lower()
        for name in (f"wwn-0x{hexid}", f"scsi-3{hexid}"):
            p = root / "by-id" / name
            if p.exists():
                return p.resolve()
    pattern = re.compile(rf"-scsi-\d+:\d+:{disk.unit_number}:0$")
    by_path = root / "by-path"
    candidates = sorted(p for p in by_path.iterdir() if pattern.search(p.name)) if by_path.is_dir() else []
    if check_size and disk.capacity:
        candidates = [p for p in candidates if _device_size(p) == disk.capacity]
    if len(candidates) == 1:
        return candidates[0].resolve()
    if not candidates:
        raise VSphereError(
            f"the HotAdded disk {disk.file_name} (SCSI unit {disk.unit_number}) has no device node in "
            f"{root}; is the appliance's SCSI bus rescanned (udev running)?"
        )
    raise VSphereError(
        f"{len(candidates)} devices could be the HotAdded disk {disk.file_name} at SCSI unit "
        f"{disk.unit_number}; set disk.EnableUUID = TRUE on the appliance VM so disks are found by UUID"
    )


class DatastoreFileLocator:
    """Resolve ``[datastore] dir/disk.vmdk`` to ``<root>/dir/disk-flat.vmdk`` (or the path itself)."""

    def __init__(self, roots: Mapping[str, str | os.PathLike[str]]) -> None:
        self._roots = {name: Path(p) for name, p in roots.items()}

    def __call__(self, disk: AttachedDisk) -> Path:
        ds, rel = split_datastore_path(disk.file_name)
        if ds not in self._roots:
            raise VSphereError(f"datastore {ds} of {disk.file_name} is not mounted on this appliance")
        path = self._roots[ds] / rel
        flat = path.with_name(path.name.removesuffix(".vmdk") + "-flat.vmdk")
        for p in (flat, path):
            if p.exists():
                return p
        raise VSphereError(f"{disk.file_name} has no data file under {self._roots[ds]}")


async def locate(locator: Locator, disk: AttachedDisk, wait: float = 30.0) -> Path:
    """Call ``locator`` until the device appears (udev needs a moment after HotAdd)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return await asyncio.to_thread(locator, disk)
        except VSphereError:
            if time.monotonic() >= deadline:
                raise
        await asyncio.sleep(0.25)
