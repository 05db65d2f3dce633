"""Seeding end to end: a backup in any format restored on the target, the source changed by 2 %, and
the first pass sends only those changes; then 2 restore points. And sources in those formats.

Real parts throughout: seeds made by qemu-img/qemu-io/tar, both agents over loopback SSH, qemu-img
compare as the judge of the replica.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from target_agent.storage import points as rp
from target_agent.storage.seed import seed_vm
from tests.support.agents import Target, replicate
from tests.support.seeds import make_seed
from tests.support.tools import BS, change_blocks, make_image, need, qemu_compare, run

MiB = 1 << 20
SIZE = 32 * MiB
CHANGED = SIZE // BS * 2 // 100  # 2 % of the blocks: 10


@pytest.mark.parametrize(
    "kind", ["streamOptimized", "qcow2", "qcow2-backing", "vmdk-chain", "twoGbMaxExtentSparse", "vhdx", "ova"]
)
async def test_first_pass_after_seeding_sends_only_the_changes(
    target: Target, tmp_path: Path, kind: str
) -> None:
    src = make_image(tmp_path / "web.img", SIZE, data_blocks=300, seed=1)  # the VM at backup time
    seed = make_seed(kind, src, tmp_path / "backup")
    seeded = seed_vm(target.data_dir, "web", {"web": seed})
    change_blocks(src, CHANGED, seed=2)  # the VM has run on since the backup
    report = await replicate(target.spec(), "web", {"web": src}, tmp_path / "state")
    assert report.ok, report.error
    (disk,) = report.disks
    changed_bytes = CHANGED * BS
    print(
        f"\n{kind}: {disk.blocks_changed} blocks changed = {changed_bytes} bytes; sent {report.wire_bytes_sent}, received {report.wire_bytes_received} (the map)"
    )
    assert disk.map_status != "empty" and not disk.map_rebuilt  # the seed's map was trusted
    assert disk.blocks_changed == CHANGED and disk.payload_raw == changed_bytes
    # random blocks do not compress: the wire carries them, the map's request and framing (~2 %)
    assert changed_bytes <= report.wire_bytes_sent < changed_bytes * 1.1 + 64 * 1024
    qemu_compare(src, target.data_dir / "web" / "web.vmdk")
    pts = rp.load(target.data_dir / "web")
    assert [p.origin for p in pts] == ["seed", "pass"] and pts[0].id == seeded.point
    assert pts[1].id == report.generation and pts[1].increments["web"].bytes > 512  # the way back to the seed


async def test_points_cli_shows_the_seed_and_the_latest(target: Target, tmp_path: Path) -> None:
    src = make_image(tmp_path / "web.img", 8 * MiB, data_blocks=40, seed=3)
    seed_vm(target.data_dir, "web", {"web": make_seed("streamOptimized", src, tmp_path / "backup")})
    change_blocks(src, 3, seed=4)
    report = await replicate(target.spec(), "web", {"web": src}, tmp_path / "state")
    out = run(
        sys.executable,
        "-m",
        "target_agent.cli",
        "points",
        "--data-dir",
        target.data_dir,
        "--vm",
        "web",
        "--json",
    )
    rows = json.loads(out.stdout)["points"]
    assert [(r["origin"], r["live"]) for r in rows] == [("pass", True), ("seed", False)]
    assert rows[0]["id"] == report.generation


@pytest.mark.parametrize(
    "kind", ["monolithicSparse", "streamOptimized", "vmdk-chain", "qcow2", "qcow2-backing"]
)
async def test_a_source_in_any_format_replicates_byte_for_byte(
    target: Target, tmp_path: Path, kind: str
) -> None:
    raw = make_image(tmp_path / "web.img", 16 * MiB, data_blocks=60, seed=5)
    image = make_seed(kind, raw, tmp_path / "src")
    report = await replicate(target.spec(), "web", {"web": image}, tmp_path / "state")
    assert report.ok, report.error
    run(need("qemu-img"), "convert", "-O", "raw", image, tmp_path / "judge.raw")
    qemu_compare(tmp_path / "judge.raw", target.data_dir / "web" / "web.vmdk")
    assert report.disks[0].bytes_read <= 70 * BS  # holes were not read
    report = await replicate(target.spec(), "web", {"web": image}, tmp_path / "state")  # nothing changed
    assert report.ok and report.disks[0].blocks_changed == 0
