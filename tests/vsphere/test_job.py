"""A job holding a vSphere VM (snapshot, HotAdd via the datastore, CBT) and a VM of local disks,
run at once against vcsim and a real target: both replicated, both points tagged with the job."""

from __future__ import annotations

from pathlib import Path

import pytest

from source_agent.jobs.runner import job_exit_code, run_job
from target_agent.storage import points as rp
from tests.support.agents import Target
from tests.support.jobs import job_of, write_job
from tests.support.tools import make_image, qemu_compare
from tests.vsphere.conftest import Lab, Vcsim

pytestmark = pytest.mark.vcsim


def vcenter_table(lab: Lab, vcsim: Vcsim, tmp_path: Path) -> dict[str, object]:
    """The job's [vcenter] table for vcsim (credentials in a 0600 file, datastores mounted here)."""
    cred = tmp_path / "cred"
    cred.write_text(f"user = {vcsim.user}\npassword = {vcsim.password}\n")
    cred.chmod(0o600)
    return {
        "host": f"{vcsim.host}:{vcsim.port}",
        "credentials": str(cred),
        "thumbprint": vcsim.thumbprint,
        "appliance_uuid_file": str(lab.uuid_path),
        "datastore_roots": {ds: str(root) for ds, root in lab.roots.items()},
    }


async def test_a_job_of_a_vsphere_vm_and_a_local_vm(
    lab: Lab, vcsim: Vcsim, target: Target, tmp_path: Path
) -> None:
    lab.write_blocks({1: 0x31, 9: 0x32})
    local = make_image(tmp_path / "local.img", 4 << 20, data_blocks=6)
    path = write_job(
        tmp_path / "job.toml", target,
        [{"name": lab.vm.name, "vsphere": True}, {"name": "local01", "disks": [f"disk0={local}"]}],
        state_dir=tmp_path / "state", vcenter=vcenter_table(lab, vcsim, tmp_path), parallel=2,
    )  # fmt: skip
    job = job_of(path)
    results = await run_job(job, tmp_path / "state")
    assert [(r.vm, r.status) for r in results] == [(lab.vm.name, "replicated"), ("local01", "replicated")], (
        results
    )
    assert job_exit_code(results) == 0
    vs = results[0].report
    assert vs is not None and vs.disks[0].mode == "differential"
    name = vs.disks[0].name
    qemu_compare(lab.flat_file(lab.vm.disks[0].file_name), target.vm(lab.vm.name) / f"{name}.vmdk")
    qemu_compare(local, target.vm("local01") / "disk0.vmdk")
    assert [p.job for p in rp.load(target.vm(lab.vm.name))] == [job.id]

    lab.write_blocks({9: 0x33})  # the next run of the job: CBT, one block
    (vs_again, _) = await run_job(job, tmp_path / "state")
    assert vs_again.report is not None
    d = vs_again.report.disks[0]
    assert d.mode == "cbt" and d.blocks_changed == 1
    assert [p.job for p in rp.load(target.vm(lab.vm.name))] == [job.id, job.id]
    snaps = await lab.client.list_snapshots(lab.vm.moid)
    assert not [s for s in snaps if "vzrep" in s.name.lower()]  # clean-up ran for the job's pass too
