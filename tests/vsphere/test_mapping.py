"""vSphere replica mapping against vcsim: an existing VM at the DR site, with a snapshot an operator
took, becomes a VM's replica (``vzrep-target map --replica-vm``). Before the mapping, the job rule
skips the VM and no replica VM is created; after it, the first pass writes only the differences into
the existing VM and leaves two restore points (the mapped state and the latest); the operator's
snapshot is untouched and never listed as a restore point."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from source_agent.jobs.runner import run_job
from target_agent.vsphere.restore_points import take_restore_point
from tests.support.agents import Keys
from tests.support.jobs import job_of, write_job
from tests.support.tools import qemu_compare
from tests.vsphere.conftest import BLOCK, Lab, Vcsim, make_vm
from tests.vsphere.test_failover import Cli
from tests.vsphere.test_job import vcenter_table
from tests.vsphere.test_target_pass import VSphereTarget, no_hotadds, running_vtarget
from vzcommon.errors import VzrepError

pytestmark = pytest.mark.vcsim


@pytest.fixture
async def vtarget(tmp_path: Path, session_keys: Keys, vcsim: Vcsim, lab: Lab) -> AsyncIterator[VSphereTarget]:
    async with running_vtarget(tmp_path, session_keys, vcsim, lab, restore_points=5) as t:
        yield t


async def test_mapping_onto_an_existing_vm_with_a_foreign_snapshot(
    lab: Lab, vcsim: Vcsim, vtarget: VSphereTarget, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    existing = await make_vm(lab.client, f"dr-copy-{uuid.uuid4().hex[:6]}")
    try:
        copy_flat = lab.flat_file(existing.disks[0].file_name)
        with open(copy_flat, "r+b") as f:  # the copy another tool made: blocks 1, 2 as the source's, 5 older
            for idx, fill in {1: 0x11, 2: 0x12, 5: 0x50}.items():
                f.seek(idx * BLOCK)
                f.write(bytes([fill]) * BLOCK)
        lab.write_blocks({1: 0x11, 2: 0x12, 5: 0x55, 9: 0x99})
        foreign = await lab.client.create_snapshot(existing.moid, "admin-check", "taken by hand", False)
        path = write_job(
            tmp_path / "job.toml", vtarget,  # type: ignore[arg-type]
            [{"name": lab.vm.name, "vsphere": True, "map_replica_vm": existing.name}],
            state_dir=tmp_path / "state", vcenter=vcenter_table(lab, vcsim, tmp_path), mapping=True,
        )  # fmt: skip
        job = job_of(path)

        (res,) = await run_job(job, tmp_path / "state")  # not mapped yet: skipped, nothing created
        assert (res.status, res.exit_code) == ("skipped", 16)
        assert f"--replica-vm {existing.name} --vcenter HOST" in res.reason
        with pytest.raises(VzrepError):
            await lab.client.find_vm(f"{lab.vm.name}_replica")
        await no_hotadds(lab)

        cli = Cli(vcsim, vtarget.data_dir, lab.vm.name, tmp_path, capsys)
        rc, out, err = await cli.run("map", "--replica-vm", existing.name)
        assert rc == 0, err
        assert f"is mapped onto the VM {existing.name}" in out and "records its state" in out

        (res,) = await run_job(job, tmp_path / "state")
        assert res.status == "replicated" and res.report is not None, res.reason
        d = res.report.disks[0]
        assert d.map_rebuilt and d.blocks_changed == 2  # blocks 5 and 9: the differences only
        assert d.payload_raw == 2 * BLOCK
        await no_hotadds(lab)
        now = await lab.client.vm_info(existing.moid)
        qemu_compare(lab.flat_file(lab.vm.disks[0].file_name), lab.flat_file(now.disks[0].file_name))
        rows = await cli.points()
        ours = [r for r in rows if r["kind"] == "restore-point"]
        assert len(ours) == 2 and all(r["ours"] for r in ours)  # the mapped state and the latest
        (f,) = [r for r in rows if not r["ours"]]
        assert (f["id"], f["name"], f["kind"]) == (foreign.moid, "admin-check", "foreign")
    finally:
        await lab.client.destroy_vm(existing.moid)


async def test_mapping_onto_a_vm_with_3_of_our_restore_points_makes_4(
    lab: Lab, vcsim: Vcsim, vtarget: VSphereTarget, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another job (another appliance) replicated into this VM and left 3 restore points: they count."""
    existing = await make_vm(lab.client, f"dr-rep-{uuid.uuid4().hex[:6]}")
    try:
        for n in range(3):
            await take_restore_point(lab.client, existing.moid, pass_id=f"other-job-{n}")
        lab.write_blocks({4: 0x44})
        cli = Cli(vcsim, vtarget.data_dir, lab.vm.name, tmp_path, capsys)
        rc, out, err = await cli.run("map", "--replica-vm", existing.moid)
        assert rc == 0 and "its 3 restore points of ours count" in out, err
        path = write_job(
            tmp_path / "job.toml", vtarget,  # type: ignore[arg-type]
            [{"name": lab.vm.name, "vsphere": True, "map_replica_vm": existing.moid}],
            state_dir=tmp_path / "state", vcenter=vcenter_table(lab, vcsim, tmp_path), mapping=True,
        )  # fmt: skip
        (res,) = await run_job(job_of(path), tmp_path / "state")
        assert res.status == "replicated" and res.report is not None, res.reason
        assert res.report.disks[0].blocks_changed == 1
        ours = [r for r in await cli.points() if r["kind"] == "restore-point"]
        assert len(ours) == 4 and sorted(r["pass"] for r in ours)[1:] == [f"other-job-{n}" for n in range(3)]
    finally:
        await lab.client.destroy_vm(existing.moid)
