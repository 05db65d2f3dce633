"""vcsim source VM -> HotAdd + CBT -> the core pass over loopback SSH -> replica judged by qemu-img."""

from __future__ import annotations

import pytest

from source_agent.session import PassOptions, run_pass
from source_agent.vsphere.glue import disk_jobs
from source_agent.vsphere.job import vsphere_job
from tests.support.agents import Target
from tests.support.tools import qemu_compare
from tests.vsphere.conftest import BLOCK, Lab

pytestmark = pytest.mark.vcsim


async def one_pass(lab: Lab, target: Target, hw=None):
    async with vsphere_job(
        lab.client,
        vm=lab.vm.name,
        recorded=hw,
        work_dir=lab.work_dir,
        locator=lab.locator,
        uuid_path=lab.uuid_path,
    ) as job:
        report = await run_pass(
            target.spec(),
            lab.vm.name,
            disk_jobs(job),
            PassOptions(block_size=BLOCK, state_dir=lab.work_dir.parent / "state"),
        )
        assert report.ok
        return job, report


async def test_only_changed_blocks_cross_and_the_replica_matches(lab: Lab, target: Target) -> None:
    lab.write_blocks({0: 0x11, 3: 0x33, 40: 0x44})
    job, r = await one_pass(lab, target)
    (d,) = r.disks
    name = job.disks[0].name
    assert d.mode == "differential" and "changeId" in d.reason
    assert d.blocks_changed == 3
    replica = target.vm(lab.vm.name) / f"{name}.vmdk"
    flat = lab.flat_file(lab.vm.disks[0].file_name)
    qemu_compare(flat, replica)

    lab.write_blocks({3: 0x34, 17: 0x77})  # the guest changes one block and writes a new one
    job, r = await one_pass(lab, target, job.hardware)
    (d,) = r.disks
    assert d.mode == "cbt", d.reason
    assert d.blocks_changed == 2 and d.payload_raw == 2 * BLOCK
    assert d.bytes_scanned == 2 * BLOCK  # CBT: only the changed blocks were read
    qemu_compare(flat, replica)

    job, r = await one_pass(lab, target, job.hardware)  # nothing changed
    assert r.disks[0].mode == "cbt" and r.disks[0].blocks_changed == 0 and r.disks[0].bytes_scanned == 0
    qemu_compare(flat, replica)
