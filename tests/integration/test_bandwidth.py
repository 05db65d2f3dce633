"""Passes under a bandwidth limit, over real SSH connections: they send no faster than the limit
(checked from below only -- a loaded machine can be slower, never faster) and the replicas are whole.
A pass's own limit in-process; the appliance's, shared by real pass processes, against a real
``vzrep-target serve``."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import time
import uuid
from pathlib import Path

from source_agent.bandwidth import Schedule
from source_agent.daemon.history import PassRecord
from source_agent.pipeline import CHUNK_BYTES
from source_agent.shared_bucket import BURST_SECONDS, MIN_BURST, store_rules
from tests.support.agents import Keys, Target, TargetProcess, replicate
from tests.support.daemon import DaemonProcess, wait_for, write_scheduled_job
from tests.support.tools import BS, make_image, qemu_compare

MiB = 1 << 20


async def test_a_limited_pass_keeps_to_its_rate(tmp_path: Path, session_keys: Keys) -> None:
    t = await Target(tmp_path / "data", session_keys).start()
    try:
        src = make_image(tmp_path / "d.img", 16 * MiB, data_blocks=96, seed=9)  # 6 MiB of random data
        t0 = time.monotonic()
        report = await replicate(
            t.spec(), "bw", {"d": src}, tmp_path / "state", limit=("2MB/s",), compress="none"
        )
        elapsed = time.monotonic() - t0
    finally:
        await t.stop()
    assert report.ok
    qemu_compare(src, t.vm("bw") / "d.vmdk")
    floor = (report.wire_bytes_sent - 256 * 1024) / 2e6  # the bucket may start with one burst
    assert elapsed >= floor > 2.5, (elapsed, report.wire_bytes_sent)
    assert report.seconds_limited > 1.5


def _bucket(path: Path, *rules: str) -> Path:
    """The appliance's bucket as ``vzrep-source run`` writes it (beside its history)."""
    asyncio.run(store_rules(path, [Schedule.parse(rules)], fresh=True))
    return path


def _pass(tp: TargetProcess, vm: str, disk: Path, state: Path, bucket: Path) -> subprocess.Popen[str]:
    cmd = tp.source_cmd(
        vm, f"d={disk}", state, "--compress", "none", "--json", "--no-progress", "--shared-limit", str(bucket)
    )
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_pass_processes_share_the_appliance_limit(tmp_path: Path, session_keys: Keys) -> None:
    """Two real ``vzrep-source pass`` processes at once, one bucket of 2 MB/s: together they send no
    faster than that (each alone would be allowed all of it), and both replicas are whole."""
    tp = TargetProcess(tmp_path / "data", session_keys, tmp_path / "target.log").start()
    try:
        bucket = _bucket(tmp_path / "daemon.sqlite.bandwidth", "2MB/s")
        disks = {
            vm: make_image(tmp_path / f"{vm}.img", 16 * MiB, data_blocks=48, seed=i)
            for i, vm in enumerate("ab")
        }
        t0 = time.monotonic()
        procs = {vm: _pass(tp, vm, disk, tmp_path / "state", bucket) for vm, disk in disks.items()}
        outs = {vm: p.communicate(timeout=300) for vm, p in procs.items()}
        elapsed = time.monotonic() - t0
    finally:
        assert tp.stop() == 0
    reports = {}
    for vm, (out, err) in outs.items():
        assert procs[vm].returncode == 0, err
        reports[vm] = json.loads(out)
        qemu_compare(disks[vm], tmp_path / "data" / vm / "d.vmdk")
        assert reports[vm]["seconds_limited"] > 0.3  # each was held back
    sent = sum(r["wire_bytes_sent"] for r in reports.values())
    burst = max(2e6 * BURST_SECONDS, MIN_BURST)  # what an idle bucket may hold (the daemon writes it empty)
    floor = (sent - burst) / 2e6
    print(f"\ntwo passes under one 2 MB/s appliance limit: {sent} B in {elapsed:.2f} s, {sent / elapsed / 1e6:.2f} MB/s"
          f" together; held back {reports['a']['seconds_limited']:.1f} s and {reports['b']['seconds_limited']:.1f} s")  # fmt: skip
    assert elapsed >= floor > 2.5, (elapsed, sent)  # one limited sender alone would need half that


def test_a_pass_killed_in_the_middle_does_not_hold_up_the_next(tmp_path: Path, session_keys: Keys) -> None:
    """SIGKILL a pass while it waits on the appliance's bucket: the next pass runs to its end at the
    rate (a kill leaves the lock free and at most one chunk owed)."""
    tp = TargetProcess(tmp_path / "data", session_keys, tmp_path / "target.log").start()
    try:
        bucket = _bucket(tmp_path / "daemon.sqlite.bandwidth", "1MB/s")
        first = make_image(tmp_path / "a.img", 16 * MiB, data_blocks=96, seed=3)  # 6 MiB: 6 s at 1 MB/s
        before = bucket.read_bytes()
        victim = _pass(tp, "a", first, tmp_path / "state", bucket)
        deadline = time.monotonic() + 120
        while bucket.read_bytes() == before:  # until it takes from the bucket (it sends)
            assert victim.poll() is None and time.monotonic() < deadline, victim.communicate()
            time.sleep(0.02)
        time.sleep(0.5)
        victim.send_signal(signal.SIGKILL)
        victim.communicate()
        assert victim.returncode == -signal.SIGKILL  # killed in the middle, not finished
        second = make_image(tmp_path / "b.img", 16 * MiB, data_blocks=32, seed=4)
        t0 = time.monotonic()
        nxt = _pass(tp, "b", second, tmp_path / "state", bucket)
        out, err = nxt.communicate(timeout=300)
        elapsed = time.monotonic() - t0
    finally:
        tp.stop()
    assert nxt.returncode == 0, err
    report = json.loads(out)
    qemu_compare(second, tmp_path / "data" / "b" / "d.vmdk")
    assert elapsed >= (report["wire_bytes_sent"] - max(1e6 * BURST_SECONDS, MIN_BURST)) / 1e6 > 1.5


def _one_ok_each(daemon: DaemonProcess, vms: set[str]) -> list[PassRecord] | None:
    ok = [p for p in daemon.passes() if p.status == "ok"]
    return ok if {p.vm for p in ok} == vms else None


def test_the_daemon_runs_two_vms_at_once_within_appliance_toml(tmp_path: Path, session_keys: Keys) -> None:
    """``vzrep-source run`` with ``DIR/appliance.toml``: the two VMs of a job pass at once (two pass
    processes it starts), together within the file's limit, judged from the history it keeps."""
    tp = TargetProcess(tmp_path / "data", session_keys, tmp_path / "target.log").start()
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "appliance.toml").write_text('limit = ["2MB/s"]   # the whole appliance\n')
    disks = {
        vm: make_image(tmp_path / f"{vm}.img", 16 * MiB, data_blocks=48, seed=5 + i)
        for i, vm in enumerate(("web", "db"))
    }
    write_scheduled_job(jobs / "pair.toml", tp.port, session_keys, disks, {"rpo": "1h"}, str(uuid.uuid4()))
    log = tmp_path / "daemon.log"
    daemon = DaemonProcess(jobs, tmp_path / "history.sqlite", tmp_path / "state", log).start()
    try:
        done = wait_for("a pass of each VM", lambda: _one_ok_each(daemon, set(disks)), 120, log)
    finally:
        assert daemon.stop() == 0
        assert tp.stop() == 0
    for vm, disk in disks.items():
        qemu_compare(disk, tmp_path / "data" / vm / "disk0.vmdk")
    assert max(p.started for p in done) < min(p.finished or 0.0 for p in done)  # at once
    assert all(p.report is not None and p.report["seconds_limited"] > 0.3 for p in done)
    sent = sum(p.wire_bytes for p in done)
    elapsed = max(p.finished or 0.0 for p in done) - min(p.started for p in done)
    assert elapsed >= (sent - max(2e6 * BURST_SECONDS, MIN_BURST)) / 2e6 > 2.5, (elapsed, sent)


def _barely_compressible(path: Path, size: int, blocks: list[int], seed: int) -> Path:
    """Random 64 KiB blocks with a tenth of zeros: zstd saves ~9 %, short of the probe's 15 %, so
    ``--compress auto`` compresses them only while the sender is behind."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for idx in blocks:
            b = bytearray(rng.randbytes(BS))
            for k in range(0, BS, 1024):
                b[k : k + 102] = bytes(102)
            f.seek(idx * BS)
            f.write(b)
    return path


async def test_adaptive_compression_still_sees_the_link_under_the_appliance_limit(
    tmp_path: Path, session_keys: Keys
) -> None:
    """Held back by the shared bucket, the sender is behind the scanner, which then compresses whole
    chunks (``auto``): blocks the probe alone would send as they are go compressed. (Over loopback
    the scanner of a sparse disk is ahead even unlimited: this shows the limit does not break it.)"""
    per_chunk = CHUNK_BYTES // BS
    src = _barely_compressible(  # 16 blocks at the start of chunks 0, 4 and 5 (96 MiB, mostly holes)
        tmp_path / "d.img", 6 * CHUNK_BYTES, [c * per_chunk + i for c in (0, 4, 5) for i in range(16)], seed=7
    )
    bucket = tmp_path / "daemon.sqlite.bandwidth"
    await store_rules(bucket, [Schedule.parse(["1MB/s"])], fresh=True)
    t = await Target(tmp_path / "data", session_keys).start()
    try:
        report = await replicate(t.spec(), "cz", {"d": src}, tmp_path / "state", shared_limit=bucket)
    finally:
        await t.stop()
    assert report.ok and report.seconds_limited > 0.5
    qemu_compare(src, t.vm("cz") / "d.vmdk")
    (disk,) = report.disks
    assert disk.blocks_compressed >= 16 and disk.payload_wire < disk.blocks_changed * BS  # a chunk's worth
