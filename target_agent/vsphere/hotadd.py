"""HotAdd the replica's disks to the target appliance for the pass, and always detach them.

The replica's *current* disk files are attached (the top of its snapshot chain, so restore points
stay intact), ``independent_persistent`` so writes go to that file whatever the appliance's own
snapshots. The core's target writer writes the devices; a failed pass rolls back through ``.vzundo``
inside the ``async with`` block, i.e. before the disks are detached. Detach runs shielded from
cancellation; markers in the appliance's extraConfig let the next start detach what a crash left.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from target_agent.vsphere.replica import ReplicaVm
from vsphere.cleanup import run_shielded
from vsphere.client import VSphereClient
from vsphere.devices import Locator, find_block_device, locate
from vsphere.model import AttachedDisk, HotAddRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplicaDevice:
    name: str  # stable source disk name
    path: Path  # the block device (or file) to write
    size: int
    attached: AttachedDisk


@contextlib.asynccontextmanager
async def replica_disks(
    client: VSphereClient,
    replica: ReplicaVm,
    appliance_moid: str,
    *,
    locator: Locator | None = None,
    locate_timeout: float = 30.0,
) -> AsyncIterator[dict[str, ReplicaDevice]]:
    names = list(replica.disks)
    requests = [
        HotAddRequest(
            replica.disks[n].file_name,
            replica.disks[n].capacity,
            "independent_persistent",
            f"{replica.vm.moid}/-",
        )
        for n in names
    ]
    attached: list[AttachedDisk] = []
    try:
        attached = await client.hotadd(appliance_moid, requests)
        loc = locator or find_block_device
        out = {}
        for n, att in zip(names, attached, strict=True):
            out[n] = ReplicaDevice(n, await locate(loc, att, locate_timeout), att.capacity, att)
        yield out
    finally:
        if attached:
            await run_shielded(lambda: client.detach(appliance_moid, attached))
