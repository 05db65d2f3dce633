"""Restore points pruned several times in a row keep every file of the replica VM (issue 18).

Stock vcsim 0.24.2 deleted unrelated VM files on the second snapshot removal: RefreshStorageInfo
renumbered the VM's file layout while snapshots kept the old keys (tools/vcsim/patches/0004). The
first pruning went right, so a test that prunes once never saw it; these prune again and again.
govc (built from Debian's govmomi source by tools/vcsim/install-vcsim.sh) is the observer: it reads
the snapshot tree and the datastore through its own client, not through our pyVmomi code.
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import subprocess
from pathlib import Path

import pytest

from target_agent.vsphere.restore_points import list_restore_points
from tests.support.agents import Keys
from tests.support.tools import qemu_compare
from tests.vsphere.conftest import ROOT, Lab, Vcsim
from tests.vsphere.test_target_pass import no_hotadds, replica_of, running_vtarget, source_pass
from vsphere.model import split_datastore_path

pytestmark = pytest.mark.vcsim

GOVC = ROOT / ".vcsim" / "bin" / "govc"


class Govc:
    """govc against the session's vcsim, the server's certificate pinned by its SHA-1 thumbprint."""

    def __init__(self, vcsim: Vcsim, tmp: Path) -> None:
        if not os.access(GOVC, os.X_OK):
            pytest.fail(f"{GOVC} is missing: run `make vcsim` (make test builds it first)")
        der = ssl.get_server_certificate((vcsim.host, vcsim.port))
        sha1 = hashlib.sha1(ssl.PEM_cert_to_DER_cert(der)).hexdigest().upper()
        known = tmp / "govc_known_hosts"
        known.write_text(f"{vcsim.host}:{vcsim.port} {':'.join(sha1[i : i + 2] for i in range(0, 40, 2))}\n")
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp),
            "GOVC_URL": f"https://{vcsim.host}:{vcsim.port}/sdk",
            "GOVC_USERNAME": vcsim.user,
            "GOVC_PASSWORD": vcsim.password,
            "GOVC_TLS_KNOWN_HOSTS": str(known),
        }

    def __call__(self, *args: str) -> str:
        res = subprocess.run([str(GOVC), *args], env=self.env, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, f"govc {' '.join(args)}: {res.stderr}"
        return res.stdout

    def snapshot_names(self, vm: str) -> list[str]:
        out = self("snapshot.tree", "-vm", vm)
        return [line.strip() for line in out.splitlines() if line.strip() not in ("", ".")]

    def files(self, vm: str, datastore: str, directory: str) -> set[str]:
        """The files of the VM's directory on the datastore, and the file layout vcsim reports."""
        listed = set(self("datastore.ls", "-ds", datastore, directory).split())
        layout = json.loads(self("object.collect", "-json", f"vm/{vm}", "layoutEx.file"))
        names = {f["Name"] for prop in layout for f in prop["Val"]["VirtualMachineFileLayoutExFileInfo"]}
        return listed | {f"layout:{n}" for n in names}


def disk_files(lab: Lab, file_name: str) -> tuple[str, str, list[Path]]:
    """Datastore, directory, and the descriptor and flat file of a disk."""
    ds, rel = split_datastore_path(file_name)
    desc = lab.roots[ds] / rel
    return ds, os.path.dirname(rel), [desc, lab.flat_file(file_name)]


async def test_the_simulator_removes_only_the_snapshots_own_file(
    lab: Lab, vcsim: Vcsim, tmp_path: Path
) -> None:
    """govc alone, on a fresh VM: create three, then remove one and create one, four times over."""
    govc = Govc(vcsim, tmp_path)
    vm = lab.vm.name
    ds, vdir, paths = disk_files(lab, lab.vm.disks[0].file_name)
    names = [f"s{i}" for i in range(3)]
    for n in names:
        govc("snapshot.create", "-vm", vm, n)
    for i in range(3, 7):
        govc("snapshot.remove", "-vm", vm, names.pop(0))
        govc("snapshot.create", "-vm", vm, f"s{i}")
        names.append(f"s{i}")
        assert govc.snapshot_names(vm) == names
        for p in paths:
            assert p.exists(), f"vcsim deleted {p.name} when removing a snapshot (round {i - 2})"
        seen = govc.files(vm, ds, vdir)
        for p in paths:
            assert p.name in seen and f"layout:[{ds}] {vdir}/{p.name}" in seen, sorted(seen)
        listed = [n for n in seen if n.endswith(".vmsn") and not n.startswith("layout:")]
        in_layout = [n for n in seen if n.endswith(".vmsn") and n.startswith("layout:")]
        assert len(listed) == len(in_layout) == 3, (
            f"one .vmsn per snapshot, the removed ones' gone: {sorted(seen)}"
        )
        assert all(n.startswith(f"layout:[{ds}] {vdir}/") for n in seen if n.startswith("layout:")), sorted(
            seen
        )


async def test_several_prunings_in_a_row_keep_the_replica_whole(
    tmp_path: Path, session_keys: Keys, vcsim: Vcsim, lab: Lab
) -> None:
    """Six passes keeping two restore points: four prunings in a row, then a pass must still work."""
    govc = Govc(vcsim, tmp_path)
    src_flat = lab.flat_file(lab.vm.disks[0].file_name)
    async with running_vtarget(tmp_path, session_keys, vcsim, lab, restore_points=2) as t:
        hw = None
        replica_paths: list[Path] = []
        earlier: list[str] = []
        for n in range(6):
            lab.write_blocks({n: 0x10 + n, 20 + 3 * n: 0x80 + n})
            hw, _ = await source_pass(lab, t, hw)
            replica = await replica_of(lab)
            ds, vdir, replica_paths = disk_files(lab, replica.disks[0].file_name)
            for p in replica_paths:
                assert p.exists(), f"pass {n + 1}: the replica's {p.name} is gone from the datastore"
            qemu_compare(src_flat, replica_paths[1])
            points = await list_restore_points(lab.client, replica.moid)
            assert len(points) == min(n + 1, 2)
            assert not {p.moid for p in points} & set(earlier[:-2]), "a pruned point came back"
            earlier += [p.moid for p in points if p.moid not in earlier]
            tree = govc.snapshot_names(replica.name)
            assert tree == [p.name for p in points], tree  # govc sees the same two, oldest first
            seen = govc.files(replica.name, ds, vdir)
            for p in replica_paths:
                assert p.name in seen and f"layout:[{ds}] {vdir}/{p.name}" in seen, sorted(seen)
            await no_hotadds(lab)
        assert len(earlier) == 6  # six points made, four pruned
