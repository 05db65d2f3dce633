"""vzrep-source vsphere-check against vcsim: what the agent sees, without changing anything."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from source_agent.vsphere.cli import add_arguments, add_source_commands, format_check, vsphere_check
from tests.vsphere.conftest import Lab, Vcsim

pytestmark = pytest.mark.vcsim


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd")
    p = sub.add_parser("pass")
    p.add_argument("--vm")
    add_arguments(p)
    add_source_commands(sub)
    return parser.parse_args(argv)


async def test_vsphere_check_reports_and_changes_nothing(lab: Lab, vcsim: Vcsim, tmp_path: Path) -> None:
    cred = tmp_path / "cred"
    cred.write_text(
        f"host = {vcsim.host}\nport = {vcsim.port}\nuser = {vcsim.user}\npassword = {vcsim.password}\n"
    )
    cred.chmod(0o600)
    await lab.client.create_snapshot(lab.vm.moid, "user-snap", "by hand", False)
    args = parse(
        [
            "vsphere-check",
            "--vcenter",
            f"{vcsim.host}:{vcsim.port}",
            "--credentials",
            str(cred),
            "--thumbprint",
            vcsim.thumbprint,
            "--vm",
            lab.vm.name,
            "--appliance-uuid-file",
            str(lab.uuid_path),
        ]
    )
    result = await vsphere_check(args)
    json.dumps(result)  # printable as JSON
    assert result["vm"]["moid"] == lab.vm.moid and result["vm"]["cbt_enabled"] is False
    assert result["appliance"]["moid"] == lab.appliance.moid
    assert result["missing_privileges"] == {lab.vm.moid: [], lab.appliance.moid: []}
    assert any("CBT is off" in n for n in result["notes"])
    assert any("user snapshots" in n for n in result["notes"])
    assert "session_key" not in result["session"]
    text = format_check(result)
    assert lab.vm.name in text and "missing privileges" in text
    assert not (await lab.client.vm_info(lab.vm.moid)).cbt_enabled  # read-only
    assert [s.name for s in await lab.client.list_snapshots(lab.vm.moid)] == ["user-snap"]


def test_pass_options_parse() -> None:
    args = parse(["pass", "--vm", "web", "--vcenter", "vc.example", "--insecure", "--quiesce"])
    assert (args.vcenter, args.insecure, args.quiesce) == ("vc.example", True, True)
    assert not hasattr(args, "restore_points")  # kept by the target (serve --restore-points), not asked here
