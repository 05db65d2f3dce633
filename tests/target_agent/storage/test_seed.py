"""Seeding a replica from a backup (``storage.seed``): every format restored thin with its map, and
every bad seed refused with the file named, the VM directory left exactly as it was."""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from target_agent.storage import points as rp
from target_agent.storage.paths import ReplicaPaths
from target_agent.storage.replica import hash_replica
from target_agent.storage.seed import seed_vm, spans
from target_agent.storage.transaction import recover_all
from tests.support.seeds import KINDS, break_grain_table, make_seed
from tests.support.tools import make_image, qemu_compare, run, sha256_py
from vzcommon import fsio
from vzcommon.errors import BusyError, ExitCode, ImageError, InputError
from vzcommon.vmdk import read_descriptor
from vzcommon.vzmap import MapBuilder, MapFile

MiB = 1 << 20
BS = 64 * 1024


def tree(d: Path) -> dict[str, str]:
    """Every entry under ``d`` with its mode and, for files, its SHA-256: the judge of 'unchanged'."""
    if not d.exists():
        return {}
    out = {}
    for p in sorted(d.rglob("*")):
        mode = oct(p.stat().st_mode)
        out[str(p.relative_to(d))] = f"{mode} {sha256_py(p) if p.is_file() else 'dir'}"
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_every_format_restores_thin_with_the_map_a_pass_would_build(tmp_path: Path, kind: str) -> None:
    raw = make_image(tmp_path / "src.img", 8 * MiB, data_blocks=24, seed=1)
    seed = make_seed(kind, raw, tmp_path / "seed")
    data = tmp_path / "data"
    report = seed_vm(data, "web", {"sys": seed})
    vdir = data / "web"
    paths = ReplicaPaths(vdir, "sys")
    qemu_compare(raw, paths.descriptor)
    flat = paths.flat.stat()
    assert flat.st_blocks * 512 <= 24 * BS + 64 * 1024  # zeros stayed holes
    assert (flat.st_mode & 0o777, vdir.stat().st_mode & 0o777) == (0o600, 0o700)
    assert all(p.stat().st_mode & 0o777 in (0o600, 0o700) for p in vdir.rglob("*"))
    d = report.disks[0]
    assert d.size == 8 * MiB and d.bytes_written == 24 * BS and d.zero_blocks * BS == d.bytes_read - 24 * BS
    with MapFile.open(paths.map) as m:  # verified checksum; the CID the descriptor has
        assert m.header.block_size == BS and m.header.cid == read_descriptor(paths.descriptor).cid
        assert m.header.generation == report.point
        ours = m.read_entries(0, m.header.entries)
    builder = MapBuilder(tmp_path / "check.vzmap", BS, 8 * MiB, None)  # what a pass hashes from the replica
    with open(paths.flat, "rb") as f:
        hash_replica(f.fileno(), 8 * MiB, BS, builder)
    assert builder.read_entries(0, 128) == ours
    builder.abort()
    (point,) = rp.load(vdir)
    assert point.id == report.point and point.origin == "seed" and point.disks == {"sys": 8 * MiB}
    assert sorted(p.name for p in data.iterdir()) == [".seed-web.lock", "web"]  # no stage left


def test_several_disks_block_size_and_job(tmp_path: Path) -> None:
    a = make_image(tmp_path / "a.img", 4 * MiB, data_blocks=5, seed=2)
    b = make_image(tmp_path / "b.img", 3 * MiB + 512, data_blocks=5, seed=3)  # a short last block
    qa, qb = make_seed("qcow2", a, tmp_path / "qa"), make_seed("streamOptimized", b, tmp_path / "qb")
    report = seed_vm(tmp_path / "data", "db", {"a": qa, "b": qb}, block_size=1 << 20, job="nightly")
    vdir = tmp_path / "data" / "db"
    qemu_compare(a, vdir / "a.vmdk")
    qemu_compare(b, vdir / "b.vmdk")
    with MapFile.open(vdir / "b-flat.vmdk.vzmap") as m:
        assert (m.header.block_size, m.header.entries) == (1 << 20, 4)
    (point,) = rp.load(vdir)
    assert point.job == "nightly" and set(point.disks) == {"a", "b"} and report.block_size == 1 << 20


def corrupt(kind: str, raw: Path, d: Path) -> Path:
    if kind == "truncated-streamOptimized":
        p = make_seed("streamOptimized", raw, d)
        os.truncate(p, p.stat().st_size // 2)
    elif kind == "truncated-qcow2":
        p = make_seed("qcow2", raw, d)
        os.truncate(p, p.stat().st_size // 2)
    elif kind == "bad-grain-table":
        p = make_seed("monolithicSparse", raw, d)
        break_grain_table(p)
    elif kind == "wrong-magic-vmdk":
        p = make_seed("monolithicSparse", raw, d)
        with open(p, "r+b") as f:
            f.write(b"XXXX")
    elif kind == "wrong-magic-qcow2":
        p = make_seed("qcow2", raw, d)
        with open(p, "r+b") as f:
            f.write(b"QFI\x00")
    elif kind == "missing-parent":
        p = make_seed("vmdk-chain", raw, d)
        (d / "parent.vmdk").unlink()
    elif kind == "missing-extent":
        p = make_seed("twoGbMaxExtentSparse", raw, d)
        (d / "disk-s001.vmdk").unlink()
    elif kind == "ova-without-disk":
        p = make_seed("ova", raw, d) / "nothere.vmdk"
    else:
        raise ValueError(kind)
    return p


BAD = {
    "truncated-streamOptimized": r"disk\.vmdk could not be checked \(damaged or truncated\?\): .*points after EOF",
    "truncated-qcow2": r"disk\.qcow2 is corrupt: .*exceeding the end of the file",
    "bad-grain-table": r"disk\.vmdk could not be checked \(damaged or truncated\?\): .*points after EOF",
    "wrong-magic-vmdk": r"disk\.vmdk: the name says vmdk but the file has no valid vmdk header",
    "wrong-magic-qcow2": r"disk\.qcow2: the name says qcow2 but the file has no valid qcow2 header",
    "missing-parent": r"child\.vmdk: a file of its snapshot chain is missing or unreadable \(.*parent\.vmdk",
    "missing-extent": r"disk\.vmdk: .*disk-s001\.vmdk",
    "ova-without-disk": r"web\.ova has no disk member 'nothere\.vmdk'",
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_bad_seed_is_a_clear_error_and_changes_nothing(tmp_path: Path, kind: str) -> None:
    raw = make_image(tmp_path / "src.img", 4 * MiB, data_blocks=12, seed=4)
    data = tmp_path / "data"
    seed_vm(data, "web", {"sys": make_seed("qcow2", raw, tmp_path / "good")})
    before = tree(data)
    bad = corrupt(kind, raw, tmp_path / "bad")
    with pytest.raises(ImageError, match=BAD[kind]) as err:  # over an existing replica, told to replace it
        seed_vm(data, "web", {"sys": bad}, replace=True)
    assert err.value.exit_code == ExitCode.INPUT
    with pytest.raises(ImageError, match=BAD[kind]):  # a new VM: not created
        seed_vm(data, "new", {"sys": bad})
    assert tree(data) == before


def test_a_read_error_midway_leaves_nothing(tmp_path: Path) -> None:
    """Unchecked (``check=False``), a truncated seed fails while qemu reads it: the stage goes, the VM stays."""
    raw = make_image(tmp_path / "src.img", 4 * MiB, data_blocks=40, seed=5)
    data = tmp_path / "data"
    seed_vm(data, "web", {"sys": make_seed("raw", raw, tmp_path / "good")})
    before = tree(data)
    bad = corrupt("truncated-streamOptimized", raw, tmp_path / "bad")
    with pytest.raises(
        ImageError, match=r"disk\.vmdk: qemu could not read it all \(error while reading at byte \d+"
    ):
        seed_vm(data, "web", {"sys": bad}, replace=True, check=False)
    assert tree(data) == before


def test_an_existing_replica_is_replaced_only_when_told(tmp_path: Path) -> None:
    a = make_image(tmp_path / "a.img", 4 * MiB, data_blocks=10, seed=6)
    b = make_image(tmp_path / "b.img", 4 * MiB, data_blocks=10, seed=7)
    data = tmp_path / "data"
    seed_vm(data, "web", {"sys": a})
    before = tree(data)
    with pytest.raises(InputError, match="VM 'web' already has a replica in .*give --replace"):
        seed_vm(data, "web", {"sys": b})
    assert tree(data) == before
    first = rp.load(data / "web")[0].id
    report = seed_vm(data, "web", {"sys": make_seed("qcow2", b, tmp_path / "qb")}, replace=True)
    assert report.replaced and [p.id for p in rp.load(data / "web")] == [report.point] != [first]
    qemu_compare(b, data / "web" / "sys.vmdk")
    assert sorted(p.name for p in data.iterdir()) == [".seed-web.lock", "web"]


def qemu_using(image: Path) -> list[int]:
    """Pids of qemu tools (qemu-img, qemu-nbd) given ``image``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith((b"qemu-img", b"qemu-nbd")) for a in argv) and str(image).encode() in argv:
            pids.append(int(proc.name))
    return pids


def test_a_crashed_seed_leaves_the_vm_absent_and_no_qemu_running(tmp_path: Path) -> None:
    """SIGKILL while the seed is being restored: the stage is all there is, the qemu-img writing it
    dies with us (its parent-death signal), and the next seed removes the stage."""
    raw = make_image(tmp_path / "src.img", 256 * MiB, data_blocks=3000, seed=8)
    seed = make_seed("qcow2", raw, tmp_path / "seed")
    data = tmp_path / "data"
    cmd = [sys.executable, "-m", "target_agent.cli", "seed", "--data-dir", str(data), "--vm", "web",
           "--disk", f"sys={seed}"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None and not (any(data.glob(".seed-web-*/sys-flat.vmdk")) and qemu_using(seed)):
            time.sleep(0.002)
        proc.kill()
    finally:
        proc.wait()
    if proc.returncode == 0:
        pytest.skip("the seed finished before it could be killed")
    assert not (data / "web").exists() and list(data.glob(".seed-web-*"))
    deadline = time.monotonic() + 10
    while qemu_using(seed) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not qemu_using(seed)
    small = make_image(tmp_path / "small.img", 4 * MiB, data_blocks=4, seed=9)
    seed_vm(data, "web", {"sys": small})
    assert sorted(p.name for p in data.iterdir()) == [".seed-web.lock", "web"]
    qemu_compare(small, data / "web" / "sys.vmdk")


def test_cli_reports_and_refuses(tmp_path: Path) -> None:
    raw = make_image(tmp_path / "src.img", 4 * MiB, data_blocks=8, seed=10)
    seed = make_seed("streamOptimized", raw, tmp_path / "s")
    base = [
        sys.executable,
        "-m",
        "target_agent.cli",
        "seed",
        "--data-dir",
        str(tmp_path / "data"),
        "--vm",
        "web",
    ]
    ok = run(*base, "--disk", f"{seed}", "--json")
    assert '"origin"' not in ok.stdout and '"bytes_written": 524288' in ok.stdout
    assert (tmp_path / "data" / "web" / "disk.vmdk").exists()  # the name from the file: disk
    again = run(*base, "--disk", f"disk={seed}", check=False)
    assert again.returncode == 3 and "already has a replica" in again.stderr
    missing = run(*base, "--disk", f"x={tmp_path / 'nope.vmdk'}", "--replace", check=False)
    assert missing.returncode == 3 and "nope.vmdk: no such file" in missing.stderr


def test_spans_cover_the_data_disjoint_and_aligned() -> None:
    rng = random.Random(11)
    size = 64 * MiB + 512
    for _ in range(200):
        extents, pos = [], rng.randrange(0, 4 * BS)
        while pos < size:
            n = min(rng.randrange(512, 3 * MiB, 512), size - pos)
            extents.append((pos, n))
            pos += n + rng.randrange(512, 5 * MiB, 512)
        most = rng.choice([BS, MiB, 4 * MiB])
        out = spans(extents, size, BS, most)
        for (a, n), (b, _) in itertools.pairwise(out):
            assert a + n <= b  # disjoint, in order
        for a, n in out:
            assert a % BS == 0 and ((a + n) % BS == 0 or a + n == size)
            data = sum(max(0, min(o + m, a + n) - max(o, a)) for o, m in extents)
            assert 0 < data <= most + 2 * BS  # a block of the neighbours may come along at each end
        for o, m in extents:  # every data byte is in a span
            assert sum(max(0, min(o + m, a + n) - max(o, a)) for a, n in out) == m


def test_one_seed_of_a_vm_at_a_time(tmp_path: Path) -> None:
    raw = make_image(tmp_path / "a.img", 4 * MiB, data_blocks=4, seed=12)
    data = tmp_path / "data"
    data.mkdir()
    fd = os.open(data / ".seed-web.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another seed of web is running
        with pytest.raises(BusyError, match="VM 'web' is being seeded already"):
            seed_vm(data, "web", {"sys": raw})
        seed_vm(data, "db", {"sys": raw})  # another VM is not held up
    finally:
        os.close(fd)
    assert not (data / "web").exists() and (data / "db" / "sys.vmdk").exists()


def _crash_at(data: Path, crashed: Path, when: Callable[[Path, Path], bool]) -> Callable[[], None]:
    """Seeds with no ``RENAME_EXCHANGE`` (as on some filesystems), and the process 'dies' at the first
    rename ``when`` picks: DATA_DIR as it is then is copied to ``crashed`` (what a crash leaves)."""
    rename = fsio.replace

    def no_exchange(a: Path, b: Path) -> None:
        raise OSError(errno.EINVAL, "not supported")

    def replace(a: Path, b: Path) -> None:
        if when(Path(a), Path(b)):
            shutil.copytree(data, crashed, symlinks=True)
            raise RuntimeError("crashed")
        rename(a, b)

    return fsio.install({"exchange": no_exchange, "replace": replace})


def _no_locks(t: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in t.items() if not k.endswith(".lock")}


@pytest.mark.parametrize("moment", ["between the renames", "after both renames"])
def test_start_up_recovery_finishes_a_replace_the_two_rename_way(tmp_path: Path, moment: str) -> None:
    """A crash between the fallback's renames left no VM directory (the old replica aside, under a
    stage's name) until a next seed removed it; start-up recovery moves it back. After both renames
    the seed had committed: the new replica stays and the old one goes."""
    a = make_image(tmp_path / "a.img", 2 * MiB, data_blocks=6, seed=13)
    b = make_image(tmp_path / "b.img", 2 * MiB, data_blocks=6, seed=14)
    data, crashed = tmp_path / "data", tmp_path / "crashed"
    seed_vm(data, "web", {"sys": a})
    old = tree(data / "web")
    if moment == "between the renames":
        when: Callable[[Path, Path], bool] = lambda src, dst: dst.name == "web"  # noqa: E731
    else:
        when = lambda src, dst: src.name.endswith("-old")  # noqa: E731 (moving the old one to be removed)
    uninstall = _crash_at(data, crashed, when)
    try:
        with pytest.raises(RuntimeError, match="crashed"):
            seed_vm(data, "web", {"sys": b}, replace=True)
    finally:
        uninstall()
    assert any(p.name.startswith(".seed-web-") for p in crashed.iterdir() if p.is_dir())
    assert (crashed / "web").exists() == (moment == "after both renames")  # between: no replica at all
    done = recover_all(crashed)
    assert "interrupted seed" in done["web"]
    assert sorted(p.name for p in crashed.iterdir()) == [".seed-web.lock", "web"]  # no stage left
    if moment == "between the renames":
        assert _no_locks(tree(crashed / "web")) == _no_locks(old)
        qemu_compare(a, crashed / "web" / "sys.vmdk")
    else:
        qemu_compare(b, crashed / "web" / "sys.vmdk")
    assert recover_all(crashed) == {}  # nothing left to do


def test_start_up_recovery_removes_an_unfinished_stage_but_not_a_running_seeds(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for name in (".seed-web-0123abcd", ".seed-web-db-89abcdef"):  # VMs 'web' and 'web-db'
        (data / name).mkdir(parents=True)
        (data / name / "sys-flat.vmdk").write_bytes(b"x" * 512)
    fd = os.open(data / ".seed-web-db.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a seed of 'web-db' is running: its stage is not a leftover
        assert recover_all(data) == {"web": "put right an interrupted seed: .seed-web-0123abcd"}
        assert (data / ".seed-web-db-89abcdef" / "sys-flat.vmdk").exists()
    finally:
        os.close(fd)
    assert "interrupted seed" in recover_all(data)["web-db"]
    assert not [p for p in data.iterdir() if p.is_dir()]
