"""Hash-ahead through the CLI (``vzrep-source pass`` as a subprocess, the target as one too).

The CLI starts hashing the first disk before it imports asyncssh when the source has the disk's map
cached, and the session uses it only for an incremental pass of a disk read in full. Each case judges
the replica with ``qemu-img compare`` and ``sha256sum`` against the source, whichever path ran.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from source_agent.cli import early_ahead
from source_agent.disks.raw import RawReader
from source_agent.native import ahead
from tests.support.agents import Keys, TargetProcess
from tests.support.tools import change_blocks, make_image, qemu_compare, sha256

MiB = 1 << 20

needs_ahead = pytest.mark.skipif(not ahead.available(), reason="hash-ahead is not built or turned off here")


def pass_json(cmd: list[str], **env: str) -> dict[str, Any]:
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, timeout=120)
    assert res.returncode == 0, res.stderr
    report: dict[str, Any] = json.loads(res.stdout)
    return report


def same(src: Path, data: Path, vm: str, disk: str) -> None:
    qemu_compare(src, data / vm / f"{disk}.vmdk")
    assert sha256(src) == sha256(data / vm / f"{disk}-flat.vmdk")


@needs_ahead
def test_incremental_passes_hash_ahead_and_the_switch_turns_it_off(tmp_path: Path, session_keys: Keys) -> None:
    src = make_image(tmp_path / "disk.img", 48 * MiB, data_blocks=300)
    data = tmp_path / "data"
    tp = TargetProcess(data, session_keys, tmp_path / "target.log").start()
    try:
        cmd = tp.source_cmd("ha", f"d={src}", tmp_path / "st", "--json")
        first = pass_json(cmd)
        assert first["disks"][0]["hashed_ahead"] is False  # a first pass sends every block: no point
        same(src, data, "ha", "d")

        changed = change_blocks(src, 9, seed=11)
        zeroed = change_blocks(src, 4, seed=12, zero=True)
        second = pass_json(cmd)
        d = second["disks"][0]
        assert d["hashed_ahead"] is True and d["map_status"] == "cached"
        # blocks that were zero before and stay zero are not sent; the rest are
        expected = len(set(changed) | set(zeroed))
        assert d["blocks_changed"] + d["zero_blocks_sent"] <= expected
        assert d["blocks_changed"] >= len(set(changed) - set(zeroed))
        same(src, data, "ha", "d")

        change_blocks(src, 5, seed=13)
        third = pass_json(cmd, VZREP_HASH_AHEAD="0")
        assert third["disks"][0]["hashed_ahead"] is False
        assert third["disks"][0]["blocks_changed"] == 5
        same(src, data, "ha", "d")
    finally:
        assert tp.stop() == 0


@needs_ahead
def test_early_hashing_is_dropped_when_the_target_lost_the_replica(tmp_path: Path, session_keys: Keys) -> None:
    """The source has the map cached (so the CLI starts hashing early), the target has no replica:
    a full pass, read once, and the threads are stopped cleanly."""
    src = make_image(tmp_path / "disk.img", 32 * MiB, data_blocks=200, seed=3)
    data = tmp_path / "data"
    tp = TargetProcess(data, session_keys, tmp_path / "target.log").start()
    try:
        cmd = tp.source_cmd("lost", f"d={src}", tmp_path / "st", "--json")
        pass_json(cmd)
        shutil.rmtree(data / "lost")
        report = pass_json(cmd)
        d = report["disks"][0]
        assert d["map_status"] == "empty" and d["hashed_ahead"] is False
        assert d["blocks_changed"] == 200
        same(src, data, "lost", "d")
    finally:
        assert tp.stop() == 0


@needs_ahead
def test_a_refused_connection_with_hashing_under_way_exits_at_once(tmp_path: Path, session_keys: Keys) -> None:
    """The threads stop with the pass: one clear line and the connection exit code, no hang."""
    src = make_image(tmp_path / "disk.img", 256 * MiB, data_blocks=2000, seed=4)
    data = tmp_path / "data"
    tp = TargetProcess(data, session_keys, tmp_path / "target.log").start()
    try:
        cmd = tp.source_cmd("gone", f"d={src}", tmp_path / "st", "--json")
        pass_json(cmd)
    finally:
        assert tp.stop() == 0  # nobody listens on its port now; the source's map is cached
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 4, res.stderr  # ExitCode.CONNECTION (README, "Exit codes")
    assert len(res.stderr.strip().splitlines()) == 1 and "127.0.0.1" in res.stderr
    assert time.monotonic() - t0 < 30


def test_early_hashing_only_for_a_cached_map_and_never_with_abm(tmp_path: Path) -> None:
    src = make_image(tmp_path / "disk.img", 4 * MiB, data_blocks=10)
    args = argparse.Namespace(
        abm=False, state_dir=tmp_path / "st", target=("127.0.0.1", 2222), vm="vm", block_size=64 << 10
    )
    reader = RawReader(src, "d")
    try:
        assert early_ahead(reader, args) is None  # nothing cached: probably a first pass
        cached = tmp_path / "st" / "maps" / "127.0.0.1_2222" / "vm" / "d.vzmap"
        cached.parent.mkdir(parents=True)
        cached.write_bytes(b"")  # only its existence is the hint; the session verifies the map
        started = early_ahead(reader, args)
        assert (started is not None) == ahead.available()
        if started is not None:
            started.close()
        args.abm = True
        assert early_ahead(reader, args) is None  # ABM reads a subset: hashing everything would waste it
    finally:
        reader.close()
