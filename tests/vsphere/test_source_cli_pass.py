"""`vzrep-source pass --vcenter` end to end: the CLI as a subprocess against vcsim and a target."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.agents import Target
from tests.support.tools import qemu_compare
from tests.vsphere.conftest import Lab, Vcsim

pytestmark = pytest.mark.vcsim


def cli_pass(
    lab: Lab, vcsim: Vcsim, target: Target, tmp_path: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    cred = tmp_path / "cred"
    cred.write_text(f"user = {vcsim.user}\npassword = {vcsim.password}\n")
    cred.chmod(0o600)
    spec = target.spec()
    cmd = [
        sys.executable,
        "-m",
        "source_agent.cli",
        "pass",
        "--target",
        f"127.0.0.1:{target.port}",
        "--identity",
        str(spec.identity),
        "--known-hosts",
        str(spec.known_hosts),
        "--vm",
        lab.vm.name,
        "--vcenter",
        f"{vcsim.host}:{vcsim.port}",
        "--credentials",
        str(cred),
        "--thumbprint",
        vcsim.thumbprint,
        "--appliance-uuid-file",
        str(lab.uuid_path),
        "--state-dir",
        str(tmp_path / "state"),
        "--json",
        *extra,
    ]
    for ds, root in lab.roots.items():
        cmd += ["--datastore-root", f"{ds}={root}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


async def test_cli_vsphere_pass_then_cbt_pass(lab: Lab, vcsim: Vcsim, target: Target, tmp_path: Path) -> None:
    lab.write_blocks({1: 0x21, 9: 0x22})
    import asyncio

    res = await asyncio.to_thread(cli_pass, lab, vcsim, target, tmp_path)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["ok"] and report["disks"][0]["mode"] == "differential"
    assert (tmp_path / "state" / "vsphere" / lab.vm.name / "hardware.json").exists()
    name = report["disks"][0]["name"]
    flat = lab.flat_file(lab.vm.disks[0].file_name)
    qemu_compare(flat, target.vm(lab.vm.name) / f"{name}.vmdk")

    lab.write_blocks({9: 0x23})
    res = await asyncio.to_thread(cli_pass, lab, vcsim, target, tmp_path)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    d = report["disks"][0]
    assert d["mode"] == "cbt" and d["blocks_changed"] == 1 and d["bytes_scanned"] == 64 * 1024
    qemu_compare(flat, target.vm(lab.vm.name) / f"{name}.vmdk")
    # Clean-up always ran: no snapshot of ours is left on the VM.
    snaps = await lab.client.list_snapshots(lab.vm.moid)
    assert not [s for s in snaps if "vzrep" in s.name.lower()]


async def test_a_hardware_change_names_the_command_that_records_it(
    lab: Lab, vcsim: Vcsim, target: Target, tmp_path: Path
) -> None:
    """The source VM's hardware changes after the first pass: the pass stops naming `accept-hardware`;
    that command shows the change and records it, and the next pass runs."""
    import asyncio

    lab.write_blocks({1: 0x31})
    res = await asyncio.to_thread(cli_pass, lab, vcsim, target, tmp_path)
    assert res.returncode == 0, res.stderr
    await lab.client.reconfigure(lab.vm.moid, num_cpu=2, memory_mb=512)
    res = await asyncio.to_thread(cli_pass, lab, vcsim, target, tmp_path)
    assert res.returncode == 3 and "vzrep-source accept-hardware --vm" in res.stderr, res.stderr
    cred = tmp_path / "cred"
    accept = [
        sys.executable, "-m", "source_agent.cli", "accept-hardware", "--vm", lab.vm.name,
        "--vcenter", f"{vcsim.host}:{vcsim.port}", "--credentials", str(cred), "--thumbprint", vcsim.thumbprint,
        "--state-dir", str(tmp_path / "state"), "--json",
    ]  # fmt: skip
    done = await asyncio.to_thread(subprocess.run, accept, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    changes = json.loads(done.stdout)["changes"]
    assert any("CPUs 1 -> 2" in c for c in changes) and any("memory (MB) 256 -> 512" in c for c in changes)
    res = await asyncio.to_thread(cli_pass, lab, vcsim, target, tmp_path)
    assert res.returncode == 0, res.stderr
    done = await asyncio.to_thread(subprocess.run, accept, capture_output=True, text=True, timeout=60)
    assert json.loads(done.stdout)["changes"] == []  # as recorded now
