"""Replicas are private to the agent, whoever made their directory: VM directory 0700, files 0600.

Real passes over loopback SSH (and ``vzrep-target serve`` as a subprocess for the data dir it makes),
under the usual umask 022, which would otherwise leave directories 0755 and files 0644.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from tests.support.agents import Keys, Target, TargetProcess, replicate
from tests.support.tools import change_blocks, make_image

MiB = 1 << 20


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def modes(vdir: Path) -> dict[str, int]:
    """Every directory and file under ``vdir`` (itself included) with its mode."""
    out = {".": mode(vdir)}
    for root, dirs, files in os.walk(vdir):
        for name in dirs + files:
            p = Path(root) / name
            out[str(p.relative_to(vdir))] = mode(p)
    return out


def assert_private(vdir: Path) -> None:
    found = modes(vdir)
    loose = {
        name: oct(m)
        for name, m in found.items()
        if m != (0o700 if stat.S_ISDIR(os.lstat(vdir / name).st_mode) else 0o600)
    }
    assert not loose, f"not private: {loose} (all: { {n: oct(m) for n, m in found.items()} })"
    assert any(n.endswith("-flat.vmdk") for n in found) and any(n.endswith(".vzmap") for n in found)


async def test_a_pass_creates_the_data_dir_and_the_replica_private(target: Target, tmp_path: Path) -> None:
    assert os.umask(0o022) == 0o022 and not target.data_dir.exists()
    disk = make_image(tmp_path / "d.img", 4 * MiB, data_blocks=20)
    await replicate(target.spec(), "vm1", [disk], tmp_path / "state")
    assert mode(target.data_dir) == 0o700
    change_blocks(disk, 5)
    await replicate(target.spec(), "vm1", [disk], tmp_path / "state")  # a restore point too
    assert (target.vm("vm1") / "points").is_dir()
    assert_private(target.vm("vm1"))


async def test_a_pass_into_a_seeded_0755_directory_makes_it_private(target: Target, tmp_path: Path) -> None:
    disk = make_image(tmp_path / "d.img", 4 * MiB, data_blocks=20)
    vdir = target.vm("seeded")
    vdir.mkdir(parents=True)
    vdir.chmod(0o755)
    shutil.copyfile(disk, vdir / "d-flat.vmdk")  # a copy already at the DR site, as restored: 0644
    (vdir / "d-flat.vmdk").chmod(0o644)
    change_blocks(disk, 3)
    report = await replicate(target.spec(), "seeded", [disk], tmp_path / "state")
    assert report.ok and report.disks[0].blocks_changed == 3
    assert_private(vdir)


def test_serve_creates_its_data_dir_private(tmp_path: Path, session_keys: Keys) -> None:
    data = tmp_path / "srv" / "data"
    agent = TargetProcess(data, session_keys, tmp_path / "target.log").start()
    try:
        assert mode(data) == 0o700
    finally:
        agent.stop()
