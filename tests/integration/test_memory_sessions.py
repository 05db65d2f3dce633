"""Both sessions driven together over the in-memory transport (tests/support/memory.py): no SSH.

The same sessions the agents run over SSH, in one event loop: a full pass, an incremental pass,
a target that fails the pass, and a link cut mid-pass. The replica is judged by qemu-img compare.
"""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

import pytest

from source_agent.disks import open_disk
from source_agent.session import DiskJob, PassOptions, PassReport, run_pass_over
from target_agent.session import TargetSession
from target_agent.storage import replica as target_replica
from tests.support.agents import snapshot
from tests.support.memory import memory_pair
from tests.support.tools import change_blocks, make_image, qemu_compare
from vzcommon.errors import StorageError, VzrepError

MiB = 1 << 20
VM = "mem"


async def one_pass(
    data_dir: Path, state: Path, disk: Path, *, limit: int = 1 << 20, cut_after: int | None = None
) -> PassReport:
    link = memory_pair(limit)
    target = asyncio.create_task(TargetSession(data_dir, "memory").run(link.target))
    reader = open_disk(disk, "d")
    try:
        if cut_after is not None:

            async def cutter() -> None:
                while link.source.sent < cut_after:  # noqa: ASYNC110 (polls a counter, no event to wait on)
                    await asyncio.sleep(0.001)
                link.cut()

            cut = asyncio.create_task(cutter())
        try:
            return await run_pass_over(
                link.source, "memory", VM, [DiskJob(reader=reader)], PassOptions(state_dir=state)
            )
        finally:
            if cut_after is not None:
                cut.cancel()
                await asyncio.gather(cut, return_exceptions=True)
    finally:
        reader.close()
        await asyncio.wait_for(target, 30)


async def test_full_then_incremental_pass(tmp_path: Path) -> None:
    disk = make_image(tmp_path / "d.img", 32 * MiB, data_blocks=150)
    data, state = tmp_path / "data", tmp_path / "state"
    data.mkdir()
    first = await one_pass(data, state, disk)
    assert first.ok and first.disks[0].map_status == "empty"
    qemu_compare(disk, data / VM / "d.vmdk")
    changed = change_blocks(disk, 12, seed=3)
    second = await one_pass(data, state, disk, limit=256 * 1024)  # a small window: flow control works
    assert second.ok and second.disks[0].blocks_changed == len(changed)
    assert second.disks[0].map_status == "cached"  # the source's cached map was confirmed, not resent
    qemu_compare(disk, data / VM / "d.vmdk")


async def test_a_target_failure_reaches_the_source_as_its_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = make_image(tmp_path / "d.img", 16 * MiB, data_blocks=60)
    data, state = tmp_path / "data", tmp_path / "state"
    data.mkdir()
    await one_pass(data, state, disk)
    before = snapshot(data / VM)
    change_blocks(disk, 30, seed=4)

    def full(self: object, *args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(target_replica.DiskWriter, "write_block", full)
    with pytest.raises(StorageError, match="No space left") as exc:
        await one_pass(data, state, disk)
    assert exc.value.from_peer
    assert snapshot(data / VM) == before


async def test_a_cut_link_rolls_the_pass_back(tmp_path: Path) -> None:
    disk = make_image(tmp_path / "d.img", 32 * MiB, data_blocks=300)
    data, state = tmp_path / "data", tmp_path / "state"
    data.mkdir()
    await one_pass(data, state, disk)
    before = snapshot(data / VM)
    change_blocks(disk, 200, seed=5)
    with pytest.raises(VzrepError) as exc:
        await one_pass(data, state, disk, limit=128 * 1024, cut_after=2 * MiB)
    assert exc.value.exit_code == 4
    assert snapshot(data / VM) == before
    assert not list((data / VM).glob("*.vzundo"))  # rolled back, nothing pending
    after = await one_pass(data, state, disk)  # and the next pass repairs it
    assert after.ok
    qemu_compare(disk, data / VM / "d.vmdk")
