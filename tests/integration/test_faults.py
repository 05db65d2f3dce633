"""Faults during a pass: every one leaves the replica byte-identical to the previous pass,
and the next pass succeeds and matches the source."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from target_agent.session import TargetSession
from tests.support.agents import Keys, Target, TargetProcess, replicate, snapshot, wait_idle
from tests.support.proxy import CutProxy
from tests.support.tools import change_blocks, make_image, qemu_compare
from vzcommon.errors import ExitCode, StorageError, VzrepError

MiB = 1 << 20


def start_pass_mid_write(cmd: list[str], undo: Path, min_bytes: int) -> subprocess.Popen[bytes]:
    """Start a source pass; return once the target has logged ``min_bytes`` of undo records, i.e.
    while it is overwriting the replica's blocks (the moment these faults strike)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (undo.exists() and undo.stat().st_size > min_bytes):
        assert time.monotonic() < deadline and proc.poll() is None, "the pass ended before the fault"
        time.sleep(0.01)
    return proc


async def _prepared(target: Target, tmp_path: Path, vm: str) -> tuple[Path, Path, dict[str, str]]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    src = make_image(tmp_path / "d.img", 24 * MiB, data_blocks=150)
    state = tmp_path / "state"
    await replicate(target.spec(), vm, [src], state)
    before = snapshot(target.vm(vm))
    change_blocks(src, 120, seed=31)
    return src, state, before


async def _measure(target: Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """Bytes the client sends in a whole pass, and how many had arrived when COMMIT was handled."""
    src, state, _ = await _prepared(target, tmp_path / "m", "measure")
    proxy = await CutProxy(target.port).start()
    at_commit: list[int] = []
    original = TargetSession._commit

    async def spy(self: TargetSession, failover: bool = False) -> None:
        at_commit.append(proxy.c2s)
        await original(self, failover)

    monkeypatch.setattr(TargetSession, "_commit", spy)
    try:
        await replicate(target.spec(proxy.port), "measure", [src], state)
    finally:
        await proxy.stop()
        monkeypatch.undo()
    return proxy.c2s, at_commit[0]


async def test_connection_cut_at_many_points(
    target: Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    total, commit_end = await _measure(target, tmp_path, monkeypatch)
    assert total - commit_end < 1000  # after COMMIT only the SSH close remains
    cuts: list[int | None] = [
        200,
        2000,
        5000,
        total // 10,
        total // 3,
        total // 2 + 7,
        (9 * total) // 10,
        None,
    ]
    for i, cut in enumerate(cuts):
        vm = f"cut{i}"
        src, state, before = await _prepared(target, tmp_path / vm, vm)
        # None: cut one byte short of the last packet before the source waits, i.e. inside COMMIT,
        # after every block arrived.
        proxy = await CutProxy(
            target.port, cut_after=cut, cut_when_quiet_after=None if cut else total // 2
        ).start()
        try:
            with pytest.raises(VzrepError) as exc:  # the link stays cut: no resume (its own tests)
                await replicate(target.spec(proxy.port), vm, [src], state, resume_window=0)
            assert exc.value.exit_code in (ExitCode.CONNECTION, ExitCode.PROTOCOL), str(exc.value)
        finally:
            await proxy.stop()
        await wait_idle(target.vm(vm))
        assert snapshot(target.vm(vm)) == before, f"replica changed after a cut at {cut} of {total} bytes"
        r = await replicate(target.spec(), vm, [src], state)
        assert r.ok
        qemu_compare(src, target.vm(vm) / "d.vmdk")


def test_sigkill_target_mid_pass_then_restart(tmp_path: Path, session_keys: Keys) -> None:
    data = tmp_path / "data"
    src = make_image(tmp_path / "d.img", 96 * MiB, data_blocks=600)
    tp = TargetProcess(data, session_keys, tmp_path / "target.log").start()
    state = tmp_path / "state"
    base = tp.source_cmd("k", src, state, "--compress", "none", "--resume-window", "0")
    subprocess.run(base, check=True, capture_output=True)
    before = snapshot(data / "k")
    change_blocks(src, 1200, seed=41)  # ~75 MiB of changes: the pass takes a while
    undo = data / "k" / "d-flat.vmdk.vzundo"
    src_proc = start_pass_mid_write(base, undo, 4 * MiB)
    tp.kill()  # SIGKILL in the middle of writing blocks
    _out, err = src_proc.communicate(timeout=60)
    assert src_proc.returncode == ExitCode.CONNECTION, err
    assert err.decode().count("\n") == 1  # one clear line
    # The replica is half written now; the restarted agent rolls it back before accepting work.
    assert undo.exists() and (data / "k" / "vzundo-script").exists()
    tp2 = TargetProcess(data, session_keys, tmp_path / "target2.log", port=tp.port).start()
    try:
        assert snapshot(data / "k") == before
        assert not undo.exists() and not (data / "k" / "vzundo-script").exists()
        assert "startup_recovery" in (tmp_path / "target2.log").read_text()
        res = subprocess.run(base, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        qemu_compare(src, data / "k" / "d.vmdk")
    finally:
        tp2.stop()


@pytest.mark.parametrize("read", ["auto", "pread"])
async def test_source_truncated_mid_pass_changes_nothing(
    tmp_path: Path, session_keys: Keys, monkeypatch: pytest.MonkeyPatch, read: str
) -> None:
    """A source image truncated while the pass reads it (it was not a snapshot). The source stops:
    with one clear line when the truncation is found at the end of the disk (always so with
    VZREP_READ=pread), or killed by SIGBUS when it lands inside a chunk being read through mmap.
    Either way the target rolls back: the replica is byte-identical to the previous pass, and once
    the image is whole again the next pass matches it."""
    monkeypatch.setenv("VZREP_READ", read)
    data = tmp_path / "data"
    src = make_image(tmp_path / "d.img", 96 * MiB, data_blocks=600)
    # --resume-window 0: the pass of a source that died is rolled back at once, not kept for it
    tp = TargetProcess(data, session_keys, tmp_path / "target.log", extra=("--resume-window", "0")).start()
    try:
        base = tp.source_cmd("t", src, tmp_path / "state", "--compress", "none")
        subprocess.run(base, check=True, capture_output=True)
        before = snapshot(data / "t")
        change_blocks(src, 1200, seed=43)
        whole = src.read_bytes()
        proc = start_pass_mid_write(base, data / "t" / "d-flat.vmdk.vzundo", 4 * MiB)
        os.truncate(src, 16 * MiB)
        _out, err = proc.communicate(timeout=60)
        expected = (ExitCode.INPUT, -signal.SIGBUS) if read == "auto" else (ExitCode.INPUT,)
        assert proc.returncode in expected, err
        if proc.returncode == ExitCode.INPUT:
            assert "shrank" in err.decode() and err.decode().count("\n") == 1, err
        else:
            assert "Bus error" in err.decode(), err  # faulthandler says what happened
        await wait_idle(data / "t")
        assert snapshot(data / "t") == before
        src.write_bytes(whole)
        res = subprocess.run(base, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        qemu_compare(src, data / "t" / "d.vmdk")
    finally:
        tp.stop()


def test_undo_script_rolls_back_by_hand(tmp_path: Path, session_keys: Keys) -> None:
    """A field engineer can run vzundo-script after a crash, instead of restarting the agent."""
    data = tmp_path / "data"
    src = make_image(tmp_path / "d.img", 64 * MiB, data_blocks=300)
    tp = TargetProcess(data, session_keys, tmp_path / "t.log").start()
    base = tp.source_cmd("s", src, tmp_path / "st", "--compress", "none", "--resume-window", "0")
    subprocess.run(base, check=True, capture_output=True)
    before = snapshot(data / "s")
    change_blocks(src, 900, seed=5)
    undo = data / "s" / "d-flat.vmdk.vzundo"
    proc = start_pass_mid_write(base, undo, 2 * MiB)
    tp.kill()
    proc.communicate(timeout=60)
    script = data / "s" / "vzundo-script"
    res = subprocess.run([str(script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "rolled back" in res.stdout
    assert snapshot(data / "s") == before and not script.exists()
    res = subprocess.run(
        [str(script)]
        if script.exists()
        else [".venv/bin/vzrep-target", "rollback", "--data-dir", str(data), "--vm", "s"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0 and "nothing to roll back" in res.stdout


@pytest.fixture
def small_fs(tmp_path: Path):
    """A 32 MiB tmpfs as the target's data dir, so the target runs out of space for real."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({res.stderr.strip()}); ENOSPC test needs root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def test_enospc_on_target_rolls_back(tmp_path: Path, session_keys: Keys, small_fs: Path) -> None:
    t = await Target(small_fs / "data", session_keys).start()
    try:
        src = make_image(tmp_path / "d.img", 64 * MiB, data_blocks=250)  # ~16 MiB of data
        state = tmp_path / "state"
        await replicate(t.spec(), "full", [src], state)
        before = snapshot(t.vm("full"))
        shutil.copy(src, tmp_path / "orig.img")
        change_blocks(src, 400, seed=8)  # new data + undo of old data: more than the filesystem holds
        with pytest.raises(VzrepError) as exc:
            await replicate(t.spec(), "full", [src], state)
        assert exc.value.exit_code == StorageError.exit_code
        assert "No space left" in str(exc.value) and "rolled back" in str(exc.value)
        await wait_idle(t.vm("full"))
        assert snapshot(t.vm("full")) == before
        assert not list(t.vm("full").glob("*.vzundo"))  # the undo log's space was given back
        # A pass whose changes fit succeeds afterwards.
        shutil.copy(tmp_path / "orig.img", src)
        change_blocks(src, 40, seed=9)
        r = await replicate(t.spec(), "full", [src], state)
        assert r.ok
        qemu_compare(src, t.vm("full") / "d.vmdk")
    finally:
        await t.stop()


async def test_corrupted_vzmap_is_rebuilt(target: Target, tmp_path: Path) -> None:
    src = make_image(tmp_path / "d.img", 16 * MiB, data_blocks=100)
    state = tmp_path / "state"
    await replicate(target.spec(), "cm", [src], state)
    vzmap = target.vm("cm") / "d-flat.vmdk.vzmap"
    with open(vzmap, "r+b") as f:
        f.seek(600)
        f.write(b"garbage!" * 8)
    change_blocks(src, 4, seed=3)
    r = await replicate(target.spec(), "cm", [src], state)
    assert any("not trusted" in n and "checksum" in n for n in r.disks[0].notes)
    assert r.disks[0].map_status == "sending" and r.disks[0].map_rebuilt
    assert r.disks[0].blocks_changed == 4  # rebuilt by hashing: still only the differences travel
    qemu_compare(src, target.vm("cm") / "d.vmdk")


async def test_replica_used_outside_replication_is_reverified(target: Target, tmp_path: Path) -> None:
    src = make_image(tmp_path / "d.img", 8 * MiB, data_blocks=40)
    state = tmp_path / "state"
    await replicate(target.spec(), "cid", [src], state)
    desc = target.vm("cid") / "d.vmdk"
    text = desc.read_text()
    desc.write_text(_bump_cid(text))
    # Someone wrote into the replica (as a powered-on VM would).
    with open(target.vm("cid") / "d-flat.vmdk", "r+b") as f:
        f.seek(3 * 65536)
        f.write(b"written by someone else")
    r = await replicate(target.spec(), "cid", [src], state)
    assert any("CID changed" in n for n in r.disks[0].notes)
    assert r.disks[0].blocks_changed == 1
    qemu_compare(src, desc)


def _bump_cid(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if line.startswith("CID="):
            line = f"CID={(int(line[4:], 16) + 1) & 0xFFFFFFFF:08x}"
        lines.append(line)
    return "\n".join(lines) + "\n"
