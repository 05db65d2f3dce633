"""Run a source pass and wait inside it, to be killed by test_orphans (simulated crash)."""

from __future__ import annotations

import asyncio
import json
import sys

from source_agent.vsphere.cbt import StoredDiskState
from source_agent.vsphere.job import vsphere_job
from vsphere.connection import connect
from vsphere.devices import DatastoreFileLocator
from vsphere.options import ConnectOptions, Credentials


async def main(cfg: dict[str, str]) -> None:
    opts = ConnectOptions(
        host=cfg["host"],
        port=int(cfg["port"]),
        credentials=Credentials(None, cfg["user"], cfg["password"]),
        thumbprint=cfg["thumbprint"],
    )
    client = await connect(opts)
    locator = DatastoreFileLocator(json.loads(cfg["roots"]))
    async with vsphere_job(
        client,
        vm=cfg["vm"],
        stored={cfg["vm"]: StoredDiskState(replica_empty=True)},
        recorded=None,
        work_dir=cfg["work_dir"],
        locator=locator,
        uuid_path=cfg["uuid_path"],
    ):
        print("ATTACHED", flush=True)
        await asyncio.sleep(600)


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
