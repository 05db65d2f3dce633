"""Both agents over a real asyncssh connection on 127.0.0.1; replicas judged by qemu-img and sha256sum."""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import pytest

from source_agent import native
from tests.support.agents import Target, replicate
from tests.support.tools import (
    BS,
    change_blocks,
    e2fsck_clean,
    flat_vmdk,
    make_ext4,
    make_image,
    qemu_compare,
    run,
    sha256,
)

MiB = 1 << 20


def flat(target: Target, vm: str, disk: str) -> Path:
    return target.vm(vm) / f"{disk}-flat.vmdk"


async def test_full_then_incremental_passes(target: Target, tmp_path: Path) -> None:
    src = make_image(tmp_path / "disk0.img", 48 * MiB, data_blocks=300)
    state = tmp_path / "state"
    r1 = await replicate(target.spec(), "vm1", [src], state)
    assert r1.ok and r1.disks[0].blocks_changed == 300 and r1.disks[0].map_status == "empty"
    assert r1.disks[0].bytes_read == 300 * BS  # holes of the sparse source were never read
    qemu_compare(src, target.vm("vm1") / "disk0.vmdk")
    assert sha256(src) == sha256(flat(target, "vm1", "disk0"))
    # The replica is thin: only the data blocks are allocated.
    assert flat(target, "vm1", "disk0").stat().st_blocks * 512 < 30 * MiB

    for seed in range(3):
        changed = set(change_blocks(src, 25, seed=10 + seed))
        r = await replicate(target.spec(), "vm1", [src], state)
        d = r.disks[0]
        assert d.map_status == "cached"  # the source's cached map was current: no map on the wire
        assert d.map_bytes_received == 0
        assert d.blocks_changed == len(changed)
        assert d.payload_raw == len(changed) * BS
        qemu_compare(src, target.vm("vm1") / "disk0.vmdk")
    # No working files left behind.
    leftovers = [
        p.name
        for p in target.vm("vm1").iterdir()
        if p.suffix in (".vzundo", ".next") or p.name == "vzundo-script"
    ]
    assert leftovers == []


async def test_zero_regions_and_growth(target: Target, tmp_path: Path) -> None:
    src = make_image(tmp_path / "d.img", 16 * MiB, data_blocks=200, seed=5)
    state = tmp_path / "state"
    await replicate(target.spec(), "vm2", [src], state)
    # Zero out some data blocks: they travel as ZERO_RANGEs without payload and become holes.
    zeroed = change_blocks(src, 40, seed=6, zero=True)
    r = await replicate(target.spec(), "vm2", [src], state)
    d = r.disks[0]
    assert d.payload_raw == 0 and d.blocks_changed == 0
    assert d.zero_blocks_sent >= len([i for i in zeroed]) - 40  # some zeroed blocks were already zero
    qemu_compare(src, target.vm("vm2") / "d.vmdk")
    # The source disk grows: the replica grows with it.
    with open(src, "r+b") as f:
        f.truncate(24 * MiB)
        f.seek(20 * MiB)
        f.write(random.Random(1).randbytes(BS))
    r = await replicate(target.spec(), "vm2", [src], state)
    assert r.disks[0].blocks_changed == 1
    qemu_compare(src, target.vm("vm2") / "d.vmdk")
    assert flat(target, "vm2", "d").stat().st_size == 24 * MiB


async def test_shrunk_source_is_a_clear_error(target: Target, tmp_path: Path) -> None:
    src = make_image(tmp_path / "d.img", 8 * MiB, data_blocks=20)
    await replicate(target.spec(), "vm3", [src], tmp_path / "s")
    before = sha256(flat(target, "vm3", "d"))
    with open(src, "r+b") as f:
        f.truncate(4 * MiB)
    from vzcommon.errors import ExitCode, VzrepError

    with pytest.raises(VzrepError, match="shrank") as exc:
        await replicate(target.spec(), "vm3", [src], tmp_path / "s")
    assert exc.value.exit_code == ExitCode.INPUT
    assert sha256(flat(target, "vm3", "d")) == before


async def test_ext4_filesystem_images_and_flat_vmdk_source(target: Target, tmp_path: Path) -> None:
    fs = make_ext4(tmp_path / "fs.img", 64, tmp_path / "tree")
    vmdk = flat_vmdk(tmp_path / "sys.vmdk", 32)
    run(
        "dd",
        f"if={fs}",
        f"of={tmp_path / 'sys-flat.vmdk'}",
        "bs=1M",
        "count=32",
        "conv=notrunc",
        "status=none",
    )
    state = tmp_path / "state"
    r = await replicate(target.spec(), "vm4", {"data": fs, "sys": vmdk}, state, compress="zstd")
    assert r.ok and [d.name for d in r.disks] == ["data", "sys"]
    assert r.disks[0].compression_ratio > 1.0  # text files compress
    qemu_compare(fs, target.vm("vm4") / "data.vmdk")
    qemu_compare(vmdk, target.vm("vm4") / "sys.vmdk")
    e2fsck_clean(flat(target, "vm4", "data"))
    # Change the filesystem with debugfs (real tool), replicate, judge with e2fsck and qemu-img.
    (tmp_path / "new.bin").write_bytes(random.Random(9).randbytes(300 * 1024))
    run("debugfs", "-w", "-R", f"write {tmp_path / 'new.bin'} new.bin", fs)
    run("debugfs", "-w", "-R", "rm dir1/file1.bin", fs)
    r = await replicate(target.spec(), "vm4", {"data": fs, "sys": vmdk}, state)
    assert 0 < r.disks[0].blocks_changed < 20 and r.disks[1].blocks_changed == 0
    qemu_compare(fs, target.vm("vm4") / "data.vmdk")
    e2fsck_clean(flat(target, "vm4", "data"))
    dumped = tmp_path / "dumped.bin"
    run("debugfs", "-R", f"dump new.bin {dumped}", flat(target, "vm4", "data"))
    assert dumped.read_bytes() == (tmp_path / "new.bin").read_bytes()


async def test_lost_source_cache_gets_map_from_target(target: Target, tmp_path: Path) -> None:
    src = make_image(tmp_path / "d.img", 8 * MiB, data_blocks=50)
    await replicate(target.spec(), "vm5", [src], tmp_path / "s1")
    change_blocks(src, 3)
    r = await replicate(target.spec(), "vm5", [src], tmp_path / "other-state")  # empty cache
    assert r.disks[0].map_status == "sending" and r.disks[0].map_bytes_received == 128 * 32
    assert r.disks[0].blocks_changed == 3
    qemu_compare(src, target.vm("vm5") / "d.vmdk")


async def test_block_size_option(target: Target, tmp_path: Path) -> None:
    src = make_image(tmp_path / "d.img", 16 * MiB, data_blocks=40)
    r = await replicate(target.spec(), "vm6", [src], tmp_path / "s", block_size=1 << 20)
    assert r.ok
    qemu_compare(src, target.vm("vm6") / "d.vmdk")
    # Changing the block size later: the target re-hashes its replica, and only differences travel.
    change_blocks(src, 2)
    r = await replicate(target.spec(), "vm6", [src], tmp_path / "s")
    assert any("block size changed" in n for n in r.disks[0].notes)
    assert r.disks[0].blocks_changed == 2
    qemu_compare(src, target.vm("vm6") / "d.vmdk")


async def test_seeding_onto_an_existing_copy_sends_only_differences(target: Target, tmp_path: Path) -> None:
    """Replica mapping: a copy already at the DR site is hashed; the first pass sends the differences."""
    src = make_image(tmp_path / "d.img", 16 * MiB, data_blocks=120)
    vdir = target.vm("seeded")
    vdir.mkdir(parents=True)
    run("cp", "--sparse=always", src, vdir / "d-flat.vmdk")
    change_blocks(src, 5, seed=77)
    r = await replicate(target.spec(), "seeded", [src], tmp_path / "s")
    assert r.disks[0].blocks_changed == 5
    assert any("re-verifying" in n for n in r.disks[0].notes)
    qemu_compare(src, vdir / "d.vmdk")


def test_cli_subprocess_pass_json(tmp_path: Path, session_keys) -> None:
    from tests.support.agents import TargetProcess

    src = make_image(tmp_path / "disk.img", 8 * MiB, data_blocks=30)
    tp = TargetProcess(tmp_path / "data", session_keys, tmp_path / "target.log").start()
    try:
        cmd = tp.source_cmd("clivm", f"boot={src}", tmp_path / "st", "--json")
        res = run(*cmd, check=False)
        assert res.returncode == 0, res.stderr
        report = json.loads(res.stdout)
        assert (
            report["ok"] and report["disks"][0]["name"] == "boot" and report["total"]["blocks_changed"] == 30
        )
        assert report["scan_kernel"] == native.kernel_name()
        qemu_compare(src, tmp_path / "data" / "clivm" / "boot.vmdk")
        st = run(".venv/bin/vzrep-target", "status", "--data-dir", str(tmp_path / "data"), "--json")
        status = json.loads(st.stdout)
        assert status["vms"][0]["last_pass"]["generation"] == report["generation"]
        assert status["vms"][0]["pending_rollback"] is False
        # The same disk changed, scanned by the Python kernel (the operator's switch): the report
        # says so, and the replica matches the source again.
        change_blocks(src, 7, seed=5)
        env = {**os.environ, "VZREP_SCAN": "python"}
        res = subprocess.run([str(c) for c in cmd[:-1]], capture_output=True, text=True, env=env)
        assert res.returncode == 0, res.stderr
        assert "7 blocks changed" in res.stdout and "scanned with the Python kernel" in res.stdout
        qemu_compare(src, tmp_path / "data" / "clivm" / "boot.vmdk")
    finally:
        assert tp.stop() == 0


async def test_several_vms_at_once_and_a_second_pass_for_a_busy_vm(target: Target, tmp_path: Path) -> None:
    import asyncio

    from vzcommon.errors import BusyError, ExitCode, VzrepError

    a = make_image(tmp_path / "a.img", 32 * MiB, data_blocks=300, seed=1)
    b = make_image(tmp_path / "b.img", 32 * MiB, data_blocks=300, seed=2)
    ra, rb = await asyncio.gather(
        replicate(target.spec(), "vma", [a], tmp_path / "sa"),
        replicate(target.spec(), "vmb", [b], tmp_path / "sb"),
    )
    assert ra.ok and rb.ok
    qemu_compare(a, target.vm("vma") / "a.vmdk")
    qemu_compare(b, target.vm("vmb") / "b.vmdk")
    # A pass for a VM that already has one running is refused with a clear error over the wire.
    from target_agent.storage.transaction import VmPass

    running = VmPass(target.data_dir, "vma", block_size=BS)
    running.begin()
    try:
        with pytest.raises(VzrepError, match="already running") as exc:
            await replicate(target.spec(), "vma", [a], tmp_path / "sa")
        assert exc.value.exit_code == ExitCode.BUSY == BusyError.exit_code
    finally:
        running.close()
    change_blocks(a, 3)
    r = await replicate(target.spec(), "vma", [a], tmp_path / "sa")  # and works once the VM is free
    assert r.disks[0].blocks_changed == 3
    qemu_compare(a, target.vm("vma") / "a.vmdk")


async def test_blocks_partly_in_holes_read_correctly_with_reused_buffers(target: Target, tmp_path: Path) -> None:
    """Scan buffers are reused: the hole parts of a block that also holds data must read as zeros."""
    src = tmp_path / "p.img"
    rng = random.Random(3)
    with open(src, "wb") as f:
        f.write(rng.randbytes(32 * MiB))  # two chunks full of data leave both scan buffers dirty
        f.truncate(96 * MiB)
        for i in range(40):  # then 4 KiB islands inside otherwise sparse blocks
            f.seek(32 * MiB + i * 977 * 4096)
            f.write(rng.randbytes(4096))
    r = await replicate(target.spec(), "partial", [src], tmp_path / "st")
    assert r.ok
    qemu_compare(src, target.vm("partial") / "p.vmdk")
    assert r.disks[0].bytes_read < 33 * MiB  # the holes were not read


async def test_block_device_source(target: Target, tmp_path: Path) -> None:
    """A block device (a loop device over an image) replicates like a file; equality by qemu-img."""
    import subprocess

    src = make_image(tmp_path / "dev.img", 16 * MiB, data_blocks=60, seed=12)
    res = subprocess.run(["losetup", "-f", "--show", "-o", "0", str(src)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"no loop device here ({res.stderr.strip()}): the block-device reader is untested")
    dev = Path(res.stdout.strip())
    try:
        r = await replicate(target.spec(), "blk", {"data": dev}, tmp_path / "st")
        assert r.ok and r.disks[0].blocks_changed == 60 and r.disks[0].size == 16 * MiB
        qemu_compare(src, target.vm("blk") / "data.vmdk")
    finally:
        subprocess.run(["losetup", "-d", str(dev)], check=False)
