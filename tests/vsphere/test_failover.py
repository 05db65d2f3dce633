"""Failover of a vSphere replica against vcsim, through ``vzrep-target points|failover --vcenter``.

Three real passes make three restore points on the replica VM; an operator's snapshot sits among
them. What the commands did is read back through pyVmomi directly (power state, current snapshot,
the snapshot tree, the NICs' connect state), not through the code under test.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from target_agent.cli import main as target_main
from target_agent.storage.failover import read_state
from tests.support.agents import Keys
from tests.support.tools import qemu_compare
from tests.vsphere.conftest import Lab, Vcsim
from tests.vsphere.test_target_pass import (
    VSphereTarget,
    no_hotadds,
    replica_of,
    running_vtarget,
    source_pass,
)
from vsphere import vmomi
from vsphere.hardware import HardwareRecord
from vsphere.model import VmInfo
from vzcommon.errors import FailedOver

pytestmark = pytest.mark.vcsim


@pytest.fixture
async def vtarget(tmp_path: Path, session_keys: Keys, vcsim: Vcsim, lab: Lab) -> AsyncIterator[VSphereTarget]:
    async with running_vtarget(tmp_path, session_keys, vcsim, lab, restore_points=3) as t:
        yield t


class Cli:
    """``vzrep-target`` as a user runs it (in a thread: it runs its own event loop)."""

    def __init__(self, vcsim: Vcsim, data_dir: Path, vm: str, tmp_path: Path, capsys: Any) -> None:
        cred = tmp_path / "cred"
        cred.write_text(f"user = {vcsim.user}\npassword = {vcsim.password}\n")
        cred.chmod(0o600)
        self.conn = ["--vcenter", f"{vcsim.host}:{vcsim.port}", "--credentials", str(cred)]
        self.conn += ["--thumbprint", vcsim.thumbprint]
        self.base = ["--data-dir", str(data_dir), "--vm", vm]
        self.capsys = capsys

    async def run(self, cmd: str, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        rc = await asyncio.to_thread(target_main, [cmd, *self.base, *self.conn, *args])
        out = self.capsys.readouterr()
        return rc, out.out, out.err

    async def points(self) -> list[dict[str, Any]]:
        rc, out, err = await self.run("points", "--json")
        assert rc == 0, err
        rows: list[dict[str, Any]] = json.loads(out)["points"]
        return rows


class Seen:
    """The replica VM as vSphere itself reports it (pyVmomi, none of our client's code)."""

    def __init__(self, lab: Lab, moid: str) -> None:
        self.vm = vmomi.vim.VirtualMachine(moid, lab.client._si._stub)  # type: ignore[attr-defined]

    def _read(self) -> dict[str, Any]:
        tree: dict[str, tuple[str, str | None]] = {}

        def walk(nodes: Any, parent: str | None) -> None:
            for n in nodes or []:
                tree[n.snapshot._moId] = (n.name, parent)
                walk(n.childSnapshotList, n.snapshot._moId)

        snap = self.vm.snapshot
        if snap is not None:
            walk(snap.rootSnapshotList, None)
        cards = [d for d in self.vm.config.hardware.device if isinstance(d, vmomi.vim.vm.device.VirtualEthernetCard)]
        nics = [(d.connectable.startConnected, d.connectable.connected) for d in cards]
        networks = []
        for d in cards:
            if isinstance(d.backing, vmomi.vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo):
                networks.append(f"dvportgroup:{d.backing.port.portgroupKey}")
            else:
                networks.append(str(d.backing.deviceName))
        return {
            "power": str(self.vm.runtime.powerState),
            "current": snap.currentSnapshot._moId if snap is not None and snap.currentSnapshot else None,
            "tree": tree,
            "nics": nics,
            "networks": networks,
        }

    async def read(self) -> dict[str, Any]:
        return await asyncio.to_thread(self._read)


async def three_points(lab: Lab, t: VSphereTarget) -> tuple[HardwareRecord, VmInfo, str]:
    """Three passes, three restore points; an operator's snapshot after the first. Its moid is returned."""
    lab.write_blocks({0: 0x11, 3: 0x33})
    hw, _ = await source_pass(lab, t, None)
    replica = await replica_of(lab)
    foreign = await lab.client.create_snapshot(replica.moid, "admin-check", "taken by hand", False)
    lab.write_blocks({3: 0x34, 9: 0x99})
    hw, _ = await source_pass(lab, t, hw)
    lab.write_blocks({5: 0x55})
    hw, _ = await source_pass(lab, t, hw)
    await no_hotadds(lab)
    return hw, replica, foreign.moid


@pytest.fixture
def cli(
    vcsim: Vcsim, vtarget: VSphereTarget, lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Iterator[Cli]:
    yield Cli(vcsim, vtarget.data_dir, lab.vm.name, tmp_path, capsys)


async def test_points_lists_restore_points_and_foreign_snapshots(
    lab: Lab, vtarget: VSphereTarget, cli: Cli
) -> None:
    _, _, foreign = await three_points(lab, vtarget)
    rows = await cli.points()
    ours = [r for r in rows if r["kind"] == "restore-point"]
    assert len(ours) == 3 and all(r["ours"] and r["pass"] for r in ours)
    assert len({r["pass"] for r in ours}) == 3
    (f,) = [r for r in rows if not r["ours"]]
    assert (f["id"], f["name"], f["kind"]) == (foreign, "admin-check", "foreign")
    assert [r["id"] for r in rows if r["current"]] == [ours[0]["id"]]  # newest first, and current
    rc, out, err = await cli.run("points")
    assert rc == 0 and "FOREIGN" in out and out.count("restore-point") == 3, err
    rc, _, err = await cli.run("failover", "--point", foreign)
    assert rc == 3 and "not a vzrep restore point" in err and err.count("\n") == 1


async def test_failover_to_the_second_newest_point_then_undo(
    lab: Lab, vtarget: VSphereTarget, cli: Cli
) -> None:
    hw, replica, foreign = await three_points(lab, vtarget)
    seen = Seen(lab, replica.moid)
    before_all = await seen.read()
    ours = [r for r in await cli.points() if r["kind"] == "restore-point"]  # newest first
    newest, second = ours[0]["id"], ours[1]["id"]
    assert before_all["current"] == newest and before_all["power"] == "poweredOff"
    assert before_all["nics"] == [(False, False)]

    rc, out, err = await cli.run("failover", "--point", second)
    assert rc == 0, err
    after = await seen.read()
    assert after["power"] == "poweredOn"
    assert after["current"] == second
    (bf,) = [m for m, (name, _) in after["tree"].items() if name.startswith("vzrep-failover-before")]
    assert after["tree"][bf][1] == newest  # the replica's state as the last pass left it
    assert set(before_all["tree"]) == set(after["tree"]) - {bf}
    assert after["nics"] == [(True, True)]
    assert read_state(vtarget.data_dir / lab.vm.name)["state"] == "failed-over"  # type: ignore[index]
    rows = await cli.points()
    assert [r["kind"] for r in rows if r["id"] == bf] == ["failover"]
    assert [r["id"] for r in rows if r["current"]] == [second]

    with pytest.raises(FailedOver):  # passes are refused while failed over (exit 15)
        await source_pass(lab, vtarget, hw)
    rc, _, err = await cli.run("failover", "--point", newest)
    assert rc == 3 and "already failed-over" in err
    rc = await asyncio.to_thread(target_main, ["failover", *cli.base, "--undo"])  # no --vcenter
    assert rc == 3 and "run failover with --vcenter" in cli.capsys.readouterr().err

    rc, out, err = await cli.run("failover", "--undo")
    assert rc == 0 and "undone" in out, err
    undone = await seen.read()
    assert undone["power"] == "poweredOff"
    assert undone["current"] == newest
    assert undone["tree"] == before_all["tree"]  # all 3 points and the foreign snapshot, as they were
    assert undone["nics"] == [(False, False)]
    assert read_state(vtarget.data_dir / lab.vm.name) is None

    lab.write_blocks({7: 0x77})
    hw, _ = await source_pass(lab, vtarget, hw)  # replication resumes
    replica = await replica_of(lab)
    qemu_compare(lab.flat_file(lab.vm.disks[0].file_name), lab.flat_file(replica.disks[0].file_name))
    final = await seen.read()
    assert foreign in final["tree"] and len(final["tree"]) == 4  # retention 3 dropped the oldest point


async def test_failover_commit_keeps_the_vm_running_and_refuses_passes(
    lab: Lab, vtarget: VSphereTarget, cli: Cli
) -> None:
    hw, replica, foreign = await three_points(lab, vtarget)
    seen = Seen(lab, replica.moid)
    before_all = await seen.read()
    ours = [r for r in await cli.points() if r["kind"] == "restore-point"]
    if ours[1]["name"] not in (ours[0]["name"], ours[2]["name"]):  # names have the time to the second
        point = ours[1]["name"]  # a point's name works too
    else:
        rc, _, err = await cli.run("failover", "--point", ours[1]["name"])
        assert rc == 3 and "name one by its id" in err
        point = ours[1]["id"]
    rc, _, err = await cli.run("failover", "--point", point)
    assert rc == 0, err
    rc, out, err = await cli.run("failover", "--commit")
    assert rc == 0 and "committed" in out and "1 newer restore point(s) removed" in out, err
    after = await seen.read()
    assert after["power"] == "poweredOn" and after["current"] == ours[1]["id"]
    # The before-failover snapshot and the point newer than the one failed over to are gone; the
    # older points and the foreign snapshot stay as they were.
    assert after["tree"] == {m: v for m, v in before_all["tree"].items() if m != ours[0]["id"]}
    assert after["tree"][foreign][0] == "admin-check"
    assert [r["id"] for r in await cli.points() if r["kind"] == "restore-point"] == [ours[1]["id"], ours[2]["id"]]
    assert after["nics"] == [(True, True)]
    vdir = vtarget.data_dir / lab.vm.name
    assert read_state(vdir)["state"] == "committed"  # type: ignore[index]
    assert not list(vdir.glob("*.vzmap"))
    with pytest.raises(FailedOver):
        await source_pass(lab, vtarget, hw)
    rc, _, err = await cli.run("failover", "--undo")
    assert rc == 3 and "failback" in err


async def test_test_failover_runs_disconnected_and_undo_comes_back(
    lab: Lab, vtarget: VSphereTarget, cli: Cli
) -> None:
    hw, replica, foreign = await three_points(lab, vtarget)
    seen = Seen(lab, replica.moid)
    before_all = await seen.read()
    rc, out, err = await cli.run("failover", "--test")  # the newest point
    assert rc == 0 and "paused" in out, err
    after = await seen.read()
    assert after["power"] == "poweredOn" and after["nics"] == [(False, False)]
    (ts,) = [m for m, (name, _) in after["tree"].items() if name.startswith("vzrep-failover-test")]
    assert after["current"] == before_all["current"] and foreign in after["tree"]
    with pytest.raises(FailedOver):
        await source_pass(lab, vtarget, hw)
    rc, _, err = await cli.run("failover", "--commit")
    assert rc == 3 and "test failover ends with --undo" in err
    rc, _, err = await cli.run("failover", "--undo")
    assert rc == 0, err
    undone = await seen.read()
    assert (
        undone["power"] == "poweredOff" and undone["tree"] == before_all["tree"] and ts not in undone["tree"]
    )
    assert undone["current"] == before_all["current"]
    lab.write_blocks({8: 0x88})
    await source_pass(lab, vtarget, hw)


async def test_network_map_moves_the_nics_and_undo_puts_them_back(
    lab: Lab, vtarget: VSphereTarget, cli: Cli
) -> None:
    """--network-map puts the replica's NIC on the DR site's distributed port group; a name that is not
    there is refused before anything changes; --undo puts the NIC back where it was."""
    await three_points(lab, vtarget)
    replica = await replica_of(lab)
    seen = Seen(lab, replica.moid)
    before = await seen.read()
    assert before["networks"] == ["VM Network"]
    rc, _, err = await cli.run("failover", "--network-map", "VM Network=No Such Net")
    assert rc == 3 and "has no network 'No Such Net'" in err, err
    rc, _, err = await cli.run("failover", "--network-map", "Other Net=DC0_DVPG0")
    assert rc == 3 and "no NIC of replica VM" in err, err
    assert await seen.read() == before and read_state(vtarget.data_dir / lab.vm.name) is None
    rc, _, err = await cli.run("failover", "--test", "--network-map", "VM Network=DC0_DVPG0")
    assert rc == 3 and "test failover keeps the NICs disconnected" in err, err

    rc, out, err = await cli.run("failover", "--network-map", "VM Network=DC0_DVPG0")
    assert rc == 0 and "on DC0_DVPG0 (was VM Network)" in out, err
    after = await seen.read()
    (pg,) = [n for n in vmomi_networks(lab) if n.name == "DC0_DVPG0"]
    assert after["networks"] == [f"dvportgroup:{pg.key}"] and after["nics"] == [(True, True)]
    rc, _, err = await cli.run("failover", "--undo")
    assert rc == 0, err
    undone = await seen.read()
    assert undone["networks"] == ["VM Network"] and undone["nics"] == [(False, False)]


def vmomi_networks(lab: Lab) -> list[Any]:
    """Every network vSphere knows, read through pyVmomi's own view (not our client)."""
    content = lab.client._si.RetrieveContent()  # type: ignore[attr-defined]
    view = content.viewManager.CreateContainerView(content.rootFolder, [vmomi.vim.Network], True)
    try:
        return list(view.view)
    finally:
        view.Destroy()


async def test_planned_failover_of_a_vsphere_vm_through_the_source_cli(
    lab: Lab, vcsim: Vcsim, vtarget: VSphereTarget, tmp_path: Path
) -> None:
    """`vzrep-source pass --planned-failover --vcenter ...`: a pass while the VM runs, a guest shutdown
    through vSphere, a final CBT pass of what changed since, and the replica VM failed over to it."""
    from tests.vsphere.test_source_cli_pass import cli_pass

    lab.write_blocks({0: 0x11, 3: 0x33})
    res = await asyncio.to_thread(cli_pass, lab, vcsim, vtarget, tmp_path)  # type: ignore[arg-type]
    assert res.returncode == 0, res.stderr
    await lab.client.power_on(lab.vm.moid)
    source = vmomi.vim.VirtualMachine(lab.vm.moid, lab.client._si._stub)  # type: ignore[attr-defined]
    assert source.runtime.powerState == "poweredOn"
    lab.write_blocks({5: 0x55})  # written while the VM runs: the first pass of the failover takes it
    res = await asyncio.to_thread(cli_pass, lab, vcsim, vtarget, tmp_path, "--planned-failover")
    assert res.returncode == 0, res.stderr
    first, final = json.loads("[" + res.stdout.replace("}\n{", "},\n{") + "]")
    assert first["ok"] and final["ok"] and final["failed_over"]
    assert first["disks"][0]["mode"] == "cbt" and first["disks"][0]["blocks_changed"] == 1
    # The final pass, with the VM stopped, sends only what changed since the first: here nothing.
    assert final["disks"][0]["mode"] == "cbt" and final["disks"][0]["blocks_changed"] == 0
    assert any("stopped" in e for e in final.get("events", [])), final
    assert source.runtime.powerState == "poweredOff"  # read by pyVmomi, not by our client
    replica = await replica_of(lab)
    seen = await Seen(lab, replica.moid).read()
    assert seen["power"] == "poweredOn" and seen["nics"] == [(True, True)]
    assert read_state(vtarget.data_dir / lab.vm.name)["state"] == "failed-over"  # type: ignore[index]
    qemu_compare(lab.flat_file(lab.vm.disks[0].file_name), lab.flat_file(replica.disks[0].file_name))
    with pytest.raises(FailedOver):  # and the source's passes are refused from now on
        await source_pass(lab, vtarget, None)


async def test_round_trip_failover_commit_failback_release_and_forward_again(
    lab: Lab, vtarget: VSphereTarget, cli: Cli, session_keys: Keys, tmp_path: Path
) -> None:
    """The whole way with vSphere replicas: fail over to the second-newest point and commit; the DR VM
    writes; failback is a pass from the replica VM into the original VM (`serve --replica-vm`), which
    is hashed where it is, so only differences cross; then --release and a forward pass sends nothing."""
    from target_agent.vsphere.job import ReplicaSettings
    from tests.vsphere.test_target_pass import BLOCK, TARGET_APPLIANCE

    hw, replica, _ = await three_points(lab, vtarget)
    ours = [r for r in await cli.points() if r["kind"] == "restore-point"]
    rc, _, err = await cli.run("failover", "--point", ours[1]["id"])
    assert rc == 0, err
    rc, _, err = await cli.run("failover", "--commit")
    assert rc == 0, err
    # Production at DR writes two blocks into the replica VM's disk.
    dr_disk = lab.flat_file(replica.disks[0].file_name)
    with open(dr_disk, "r+b") as f:
        for idx, fill in ((2, 0xA2), (6, 0xA6)):
            f.seek(idx * BLOCK)
            f.write(bytes([fill]) * BLOCK)
    original = lab.flat_file(lab.vm.disks[0].file_name)
    differing = sum(
        a != b for a, b in zip(blocks_of(original), blocks_of(dr_disk), strict=True)
    )
    # The two DR writes, and on vSphere block 5 too (the newest point's write, which the revert to the
    # second point undid); vcsim keeps no delta disks, so its revert leaves the disk's bytes as they were.
    assert differing in (2, 3)

    # A target at the source site maps the original VM (powered off) as the failback's replica.
    settings = ReplicaSettings(
        connect=vtarget.settings.connect,
        appliance_vm=TARGET_APPLIANCE,
        replica_vm=lab.vm.name,
        restore_points=1,
        datastore_roots=lab.roots,
        locate_timeout=5.0,
    )
    back = await VSphereTarget(tmp_path / "failback", session_keys, settings).start()
    rc, _, err = await cli.run("failover", "--release")
    assert rc == 3 and "bring it home first" in err, err
    try:
        spec = back.spec()
        roots = [a for ds, root in lab.roots.items() for a in ("--datastore-root", f"{ds}={root}")]
        rc, out, err = await cli.run(
            "failback", "--to", f"127.0.0.1:{back.port}", "--identity", str(spec.identity),
            "--known-hosts", str(spec.known_hosts), "--appliance-uuid-file", str(lab.uuid_path),
            "--state-dir", str(tmp_path / "dr-state"), "--block-size", str(BLOCK), "--json", *roots,
        )  # fmt: skip
    finally:
        back.server.close()  # type: ignore[attr-defined]
        await back.server.wait_closed()  # type: ignore[attr-defined]
    assert rc == 0, err
    report = json.loads(out)
    qemu_compare(dr_disk, original)  # the original holds production's disk again
    assert read_state(vtarget.data_dir / lab.vm.name)["state"] == "failed-back"  # type: ignore[index]
    d = report["disks"][0]
    with cli.capsys.disabled():  # the figures for the closing note (pytest -s)
        print(f"\nfailback: {differing} blocks differed, {d['blocks_changed']} sent, {report['wire_bytes_sent']} B on the wire")
    assert d["blocks_changed"] == differing and report["wire_bytes_sent"] < (differing + 2) * BLOCK

    # The original runs again; the DR VM is powered off and released; the next forward pass finds
    # both sides equal by their hashes (the maps went at commit) and sends no block.
    rc, _, err = await cli.run("failover", "--release")
    assert rc == 3 and "still runs" in err, err  # the DR copy must be stopped first
    await lab.client.power_off(replica.moid)
    rc, out, err = await cli.run("failover", "--release")
    assert rc == 0 and "replicates again" in out, err
    assert read_state(vtarget.data_dir / lab.vm.name) is None
    assert (await Seen(lab, replica.moid).read())["nics"] == [(False, False)]
    _, fwd = await source_pass(lab, vtarget, hw)
    assert fwd.ok and fwd.disks[0].blocks_changed == 0  # type: ignore[attr-defined]
    qemu_compare(original, dr_disk)


def blocks_of(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while block := f.read(64 * 1024):
            yield block
