"""Failover of a file replica through the CLI: test, permanent to an older point, undo, commit.

The "running VM" at the DR site is qemu-io writing into the failover deltas; qemu-img compare and
sha256sum judge what the replica and the deltas hold against the source as saved after each pass.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.console.backend import vm_state
from target_agent.storage import failover as fo
from target_agent.storage import points as rp
from target_agent.storage import transaction as txn
from target_agent.storage.export import export_point
from tests.support.agents import Keys, Target, replicate
from tests.support.tools import change_blocks, make_image, need, qemu_compare, run
from vzcommon.errors import ExitCode, VzrepError

MiB = 1 << 20
VM = "fo"


def target_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "target_agent.cli", *args], capture_output=True, text=True)


def console_state(data_dir: Path) -> str:
    """The State column of the appliance console's Status page, from the agent's real status output."""
    res = target_cli("status", "--data-dir", str(data_dir), "--vm", VM, "--json")
    assert res.returncode == 0, res.stderr
    (vm,) = json.loads(res.stdout)["vms"]
    return vm_state(vm)


@pytest.fixture
async def passes(tmp_path: Path, session_keys: Keys):
    """Three committed passes; yields the target, the source image and its saved copies by point id."""
    t = await Target(tmp_path / "data", session_keys, restore_points=4).start()
    src = make_image(tmp_path / "d.img", 16 * MiB, data_blocks=80, seed=1)
    saved: dict[str, Path] = {}
    try:
        for n in range(3):
            if n:
                change_blocks(src, 30, seed=40 + n)
                change_blocks(src, 5, seed=50 + n, zero=True)
            report = await replicate(t.spec(), VM, {"d": src}, tmp_path / "state")
            saved[report.generation] = shutil.copy(src, tmp_path / f"saved-{n}.img")
        yield t, src, saved
    finally:
        await t.stop()


async def test_a_test_failover_leaves_replication_running(passes, tmp_path: Path) -> None:
    t, src, saved = passes
    ids = list(saved)
    res = target_cli("failover", "--data-dir", str(t.data_dir), "--vm", VM, "--point", ids[1], "--test")
    assert res.returncode == 0, res.stderr
    scratch = t.vm(VM) / "failover-test"
    qemu_compare(saved[ids[1]], scratch / "d.vmdk")
    change_blocks(src, 10, seed=7)
    assert (await replicate(t.spec(), VM, {"d": src}, tmp_path / "state")).ok  # replication goes on
    res = target_cli("failover", "--data-dir", str(t.data_dir), "--vm", VM, "--undo")
    assert res.returncode == 0, res.stderr
    assert not scratch.exists() and fo.read_state(t.vm(VM)) is None


async def test_permanent_failover_to_an_older_point_then_undo(passes, tmp_path: Path) -> None:
    t, src, saved = passes
    ids = list(saved)
    res = target_cli("failover", "--data-dir", str(t.data_dir), "--vm", VM, "--point", ids[1])
    assert res.returncode == 0, res.stderr
    vdir = t.vm(VM)
    qemu_compare(saved[ids[1]], vdir / "d.vmdk")  # the replica was rolled to the point
    delta = vdir / "d-failover.vmdk"
    qemu_compare(saved[ids[1]], delta)  # and the VM's delta reads the same, until the VM writes
    # Passes from the source are refused while failed over: exit 15, through the source's CLI.
    change_blocks(src, 10, seed=8)
    with pytest.raises(VzrepError, match="failed-over") as exc:
        await replicate(t.spec(), VM, {"d": src}, tmp_path / "state")
    assert exc.value.exit_code == ExitCode.FAILED_OVER
    # The VM runs at the DR site and writes: into its delta, never into the replica.
    run(need("qemu-io"), "-c", "write -P 0xab 1M 256k", delta)
    assert run(need("qemu-img"), "compare", saved[ids[1]], delta, check=False).returncode == 1
    qemu_compare(saved[ids[1]], vdir / "d.vmdk")
    # Every point, the newest included, still exports as it was.
    for pid in ids:
        [desc] = export_point(t.data_dir, VM, pid, tmp_path / f"x-{pid}")
        qemu_compare(saved[pid], desc)
    res = target_cli("failover", "--data-dir", str(t.data_dir), "--vm", VM, "--undo")
    assert res.returncode == 0, res.stderr
    assert not delta.exists() and fo.read_state(vdir) is None
    qemu_compare(saved[ids[2]], vdir / "d.vmdk")  # back at the newest point
    report = await replicate(t.spec(), VM, {"d": src}, tmp_path / "state")
    assert report.ok and report.disks[0].blocks_changed == 10  # incremental, not full
    qemu_compare(src, vdir / "d.vmdk")


async def test_commit_makes_the_failed_over_replica_production(passes, tmp_path: Path) -> None:
    t, src, _ = passes
    vdir = t.vm(VM)
    fo.start(t.data_dir, VM, None)  # the newest point: nothing to roll
    delta = vdir / "d-failover.vmdk"
    run(need("qemu-io"), "-c", "write -P 0xcd 2M 128k", delta)
    running = shutil.copy(delta, tmp_path / "running.vmdk")  # what the VM sees (parent: the replica)
    shutil.copy(vdir / "d.vmdk", tmp_path / "d.vmdk")
    shutil.copy(vdir / "d-flat.vmdk", tmp_path / "d-flat.vmdk")
    res = target_cli("failover", "--data-dir", str(t.data_dir), "--vm", VM, "--commit")
    assert res.returncode == 0, res.stderr
    qemu_compare(running, vdir / "d.vmdk")  # the VM's writes are in the replica now
    assert not delta.exists() and not (vdir / "d-flat.vmdk.vzmap").exists()
    assert rp.load(vdir) == []
    res = target_cli("failover", "--data-dir", str(t.data_dir), "--vm", VM, "--undo")
    assert res.returncode == ExitCode.INPUT and "only come home by failback" in res.stderr
    with pytest.raises(VzrepError) as exc:
        await replicate(t.spec(), VM, {"d": src}, tmp_path / "state")
    assert exc.value.exit_code == ExitCode.FAILED_OVER


async def test_a_crash_while_rolling_to_the_point_is_finished_by_running_it_again(
    passes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t, src, saved = passes
    ids = list(saved)

    class Crash(Exception):
        pass

    real = txn.VmPass.commit

    def crash(self: txn.VmPass, summary: dict) -> str:
        raise Crash

    monkeypatch.setattr(txn.VmPass, "commit", crash)
    with pytest.raises(Crash):
        fo.start(t.data_dir, VM, ids[0])
    monkeypatch.setattr(txn.VmPass, "commit", real)
    assert fo.read_state(t.vm(VM))["state"] == "failing-over"
    qemu_compare(saved[ids[2]], t.vm(VM) / "d.vmdk")  # the roll was rolled back, like any pass
    with pytest.raises(VzrepError) as exc:  # and the source is refused meanwhile
        await replicate(t.spec(), VM, {"d": src}, tmp_path / "state")
    assert exc.value.exit_code == ExitCode.FAILED_OVER
    st = fo.start(t.data_dir, VM, ids[0])
    assert st["state"] == "failed-over"
    qemu_compare(saved[ids[0]], t.vm(VM) / "d.vmdk")


def test_a_commit_killed_half_way_is_finished_by_running_it_again(passes, tmp_path: Path) -> None:
    """The agent is killed (SIGKILL) right after the first disk's delta was merged: undo is refused
    (the replica holds part of the VM's writes) and running --commit again finishes it."""
    t, _, _ = passes
    vdir = t.vm(VM)
    fo.start(t.data_dir, VM, None)
    delta = vdir / "d-failover.vmdk"
    run(need("qemu-io"), "-c", "write -P 0xcd 1M 192k", delta)
    running = shutil.copy(delta, tmp_path / "running.vmdk")
    shutil.copy(vdir / "d.vmdk", tmp_path / "d.vmdk")
    shutil.copy(vdir / "d-flat.vmdk", tmp_path / "d-flat.vmdk")
    # A qemu-img that does the merge, then kills the agent that called it: the crash comes after the
    # replica was written and before the delta is removed or the state says "committed".
    wrap = tmp_path / "bin"
    wrap.mkdir()
    (wrap / "qemu-img").write_text(f'#!/bin/sh\n{need("qemu-img")} "$@" && kill -9 $PPID\n')
    (wrap / "qemu-img").chmod(0o755)
    env = {**os.environ, "PATH": f"{wrap}:{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "target_agent.cli", "failover", "--data-dir", str(t.data_dir), "--vm", VM]
    res = subprocess.run([*cmd, "--commit"], capture_output=True, text=True, env=env)
    assert res.returncode == -9, res.stderr
    assert fo.read_state(vdir)["state"] == "committing"
    res = target_cli("failover", "--data-dir", str(t.data_dir), "--vm", VM, "--undo")
    assert res.returncode == ExitCode.INPUT and "--commit" in res.stderr, res.stderr
    res = target_cli("failover", "--data-dir", str(t.data_dir), "--vm", VM, "--commit")
    assert res.returncode == 0, res.stderr
    assert fo.read_state(vdir)["state"] == "committed" and not delta.exists()
    qemu_compare(running, vdir / "d.vmdk")


@pytest.mark.parametrize("when", ["rolling", "after-the-delta"])
def test_a_failover_killed_at_each_step_is_finished_by_running_it_again(passes, tmp_path: Path, when: str) -> None:
    """SIGKILL of `vzrep-target failover --point ID` while it rolls the replica to the point (a pass:
    its undo is being written), or right after qemu-img made the VM's delta (before the state says
    failed-over). Passes stay refused; running the same command again finishes the failover."""
    t, _, saved = passes
    ids = list(saved)
    vdir = t.vm(VM)
    cmd = [sys.executable, "-m", "target_agent.cli", "failover", "--data-dir", str(t.data_dir), "--vm", VM,
           "--point", ids[0]]  # fmt: skip
    env = dict(os.environ)
    if when == "after-the-delta":
        wrap = tmp_path / "bin"
        wrap.mkdir()
        (wrap / "qemu-img").write_text(f'#!/bin/sh\n{need("qemu-img")} "$@" && kill -9 $PPID\n')
        (wrap / "qemu-img").chmod(0o755)
        env["PATH"] = f"{wrap}:{env['PATH']}"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if when == "rolling":
        deadline = time.monotonic() + 60
        undo = vdir / "d-flat.vmdk.vzundo"
        while not (undo.exists() and undo.stat().st_size > 0) and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.002)
        proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -9
    assert fo.read_state(vdir)["state"] == "failing-over"  # passes are refused from here on
    res = target_cli("failover", "--data-dir", str(t.data_dir), "--vm", VM, "--point", ids[0])
    assert res.returncode == 0, res.stderr
    assert fo.read_state(vdir)["state"] == "failed-over"
    qemu_compare(saved[ids[0]], vdir / "d.vmdk")
    qemu_compare(saved[ids[0]], vdir / "d-failover.vmdk")


def blocks_differing(a: Path, b: Path, bs: int = 64 * 1024) -> int:
    """An independent count of the 64 KiB blocks in which two files differ (hashlib, block by block)."""
    import hashlib

    n = 0
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(bs), fb.read(bs)
            if not x and not y:
                return n
            n += hashlib.sha256(x).digest() != hashlib.sha256(y).digest()


async def test_round_trip_failover_commit_failback_and_forward_again(
    passes, tmp_path: Path, session_keys: Keys
) -> None:
    """Fail over to the second-newest point, the VM writes at the DR site, commit; fail back onto the
    original disk by differences; the original then equals the replica and the next forward pass is
    incremental."""
    t, src, saved = passes
    ids = list(saved)
    vdir = t.vm(VM)
    assert console_state(t.data_dir) == "idle"
    fo.start(t.data_dir, VM, ids[1])
    assert console_state(t.data_dir) == "failed over"
    delta = vdir / "d-failover.vmdk"
    for i in range(12):  # the VM at the DR site writes 12 blocks
        run(need("qemu-io"), "-c", f"write -P {0x40 + i} {(5 + 17 * i) * 64 * 1024} 64k", delta)
    fo.commit_failover(t.data_dir, VM)
    assert console_state(t.data_dir) == "failed over (final)"
    expected = blocks_differing(src, vdir / "d-flat.vmdk")  # what failback has to carry
    assert expected >= 12
    # Releasing production that never went home is refused: the next pass would overwrite it.
    res = target_cli("failover", "--data-dir", str(t.data_dir), "--vm", VM, "--release")
    assert res.returncode == ExitCode.INPUT and "bring it home first" in res.stderr, res.stderr
    # Failback: a target at the production site writes into the original disk where it is, and
    # `vzrep-target failback` at the DR site sends the replica to it.
    home = await Target(tmp_path / "home", session_keys, mapped={(VM, "d"): src}).start()
    try:
        spec = home.spec()
        # A failback that cannot reach the source site leaves "failing back"; running it again goes on.
        nowhere = target_cli(
            "failback", "--data-dir", str(t.data_dir), "--vm", VM, "--to", "127.0.0.1:1",
            "--identity", str(spec.identity), "--known-hosts", str(spec.known_hosts),
            "--state-dir", str(tmp_path / "state-dr"),
        )  # fmt: skip
        assert nowhere.returncode == ExitCode.CONNECTION, nowhere.stderr
        assert console_state(t.data_dir) == "failing back"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "target_agent.cli", "failback", "--data-dir", str(t.data_dir), "--vm", VM,
            "--to", f"127.0.0.1:{home.port}", "--identity", str(spec.identity),
            "--known-hosts", str(spec.known_hosts), "--state-dir", str(tmp_path / "state-dr"), "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
    finally:
        await home.stop()
    assert proc.returncode == 0, err.decode()
    report = json.loads(out)
    disk = report["disks"][0]
    assert disk["map_rebuilt"]  # the original was hashed where it is
    assert disk["blocks_changed"] + disk["zero_blocks_sent"] == expected
    wire = report["wire_bytes_sent"]
    print(f"failback: {expected} blocks differ (judged by hashlib), {disk['blocks_changed']} BLOCKs and"
          f" {disk['zero_blocks_sent']} zero blocks sent, {wire} bytes on the wire")  # fmt: skip
    assert wire < (expected + 8) * 64 * 1024 + (1 << 20), f"{wire} bytes for {expected} blocks"
    qemu_compare(vdir / "d.vmdk", src)
    assert fo.read_state(vdir)["state"] == "failed-back"
    assert console_state(t.data_dir) == "failed back: release once it runs at home"
    # Home again: the replica takes passes and the next one is incremental (nothing differs).
    res = target_cli("failover", "--data-dir", str(t.data_dir), "--vm", VM, "--release")
    assert res.returncode == 0, res.stderr
    assert console_state(t.data_dir) == "idle"
    again = await replicate(t.spec(), VM, {"d": src}, tmp_path / "state")
    assert again.ok and again.disks[0].blocks_changed == 0 and again.disks[0].zero_blocks_sent == 0
    change_blocks(src, 6, seed=77)
    assert (await replicate(t.spec(), VM, {"d": src}, tmp_path / "state")).disks[0].blocks_changed == 6
    qemu_compare(src, vdir / "d.vmdk")


async def test_planned_failover_through_the_source_cli(passes, tmp_path: Path) -> None:
    """A pass while the VM runs, the VM stopped by --stop-command (it writes one last block on its way
    down), a final pass that sends only that, and the target fails the replica over to it."""
    t, src, _ = passes
    change_blocks(src, 20, seed=60)  # the running VM changed these since the last scheduled pass
    stop = f"{sys.executable} -c \"f=open('{src}','r+b'); f.seek(7 << 20); f.write(b'shutdown' * 8192)\""
    cmd = [sys.executable, "-m", "source_agent.cli", "pass", *t.pass_args(src, tmp_path / "state"), "--json"]
    proc = await asyncio.create_subprocess_exec(
        *cmd, "--planned-failover", "--stop-command", stop,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    text, docs, dec = out.decode(), [], json.JSONDecoder()
    pos = 0
    while text[pos:].strip():
        doc, end = dec.raw_decode(text, pos + (len(text[pos:]) - len(text[pos:].lstrip())))
        docs.append(doc)
        pos = end
    first, final = docs
    assert first["total"]["blocks_changed"] == 20
    assert final["total"]["blocks_changed"] == 1 and final["failed_over"] is True  # the short final pass
    st = fo.read_state(t.vm(VM))
    assert st["state"] == "failed-over" and st["point"] == final["generation"]
    qemu_compare(src, t.vm(VM) / "d-failover.vmdk")  # the VM starts at DR exactly as it stopped


async def test_planned_failover_without_a_way_to_stop_the_vm_is_refused(passes, tmp_path: Path) -> None:
    t, src, _ = passes
    cmd = [sys.executable, "-m", "source_agent.cli", "pass", *t.pass_args(src, tmp_path / "state")]
    proc = await asyncio.create_subprocess_exec(
        *cmd, "--planned-failover", stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    assert proc.returncode == ExitCode.INPUT and b"needs --stop-command" in err
    assert fo.read_state(t.vm(VM)) is None  # nothing was failed over
