"""One pass per VM: the flock on DATA_DIR/<vm>/.lock, judged by util-linux's flock(1) and by real
processes (a second locker, a holder killed with SIGKILL)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from target_agent.storage.lock import VmLock
from tests.support.tools import run
from vzcommon.errors import BusyError, ExitCode

REPO = Path(__file__).resolve().parents[3]
# a process that takes the VM's lock, says so, and waits to be killed
HOLDER = """
import sys, time
from pathlib import Path
from target_agent.storage.lock import VmLock
VmLock(Path(sys.argv[1]), "vm").acquire()
print("locked", flush=True)
time.sleep(120)
"""


def held_by_someone(vm_dir: Path) -> bool:
    """flock(1) asks the kernel: can another open file description lock it now?"""
    res = run("flock", "--nonblock", "--conflict-exit-code", "75", vm_dir / ".lock", "true", check=False)
    assert res.returncode in (0, 75), res.stderr
    return res.returncode == 75


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def vm_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data" / "vm"
    d.mkdir(parents=True)
    return d


@pytest.fixture
def holder(vm_dir: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(vm_dir)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def test_a_pass_holds_the_lock_until_it_releases_it(vm_dir: Path) -> None:
    lock = VmLock(vm_dir, "vm").acquire()  # before flock(1) runs: it would create the file itself
    assert lock.path == vm_dir / ".lock"
    assert stat.S_IMODE(lock.path.stat().st_mode) == 0o600
    assert held_by_someone(vm_dir)
    lock.release()
    assert not held_by_someone(vm_dir)
    lock.release()  # twice is fine
    with VmLock(vm_dir, "vm"):  # and it can be taken again
        assert held_by_someone(vm_dir)
    assert not held_by_someone(vm_dir)


def test_a_second_locker_is_told_a_pass_is_running(vm_dir: Path) -> None:
    with VmLock(vm_dir, "web01"):
        before = open_fds()
        for _ in range(3):
            with pytest.raises(BusyError) as exc:
                VmLock(vm_dir, "web01").acquire()
            assert exc.value.exit_code == ExitCode.BUSY
            assert int(exc.value.exit_code) == 10  # documented in the README
            assert "'web01'" in str(exc.value) and "already running" in str(exc.value)
        assert open_fds() == before  # the refused attempts leave no descriptor behind
    with VmLock(vm_dir, "web01"):  # free again once the first one is released
        pass


def test_another_process_gets_exit_code_10(vm_dir: Path) -> None:
    """The second locker in its own process, through the target's CLI (rollback takes the lock)."""
    with VmLock(vm_dir, "vm"):
        res = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from target_agent.cli import main; sys.exit(main())",
                "rollback",
                "--data-dir",
                str(vm_dir.parent),
                "--vm",
                "vm",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert res.returncode == 10, res.stderr
    assert "already running" in res.stderr
    assert not held_by_someone(vm_dir)


def test_the_lock_is_released_when_its_holder_is_killed(vm_dir: Path, holder: subprocess.Popen[str]) -> None:
    assert held_by_someone(vm_dir)
    with pytest.raises(BusyError):
        VmLock(vm_dir, "vm").acquire()
    os.kill(holder.pid, signal.SIGKILL)  # no clean-up runs: only the kernel can drop the lock
    assert holder.wait(timeout=30) == -signal.SIGKILL
    assert not held_by_someone(vm_dir)
    with VmLock(vm_dir, "vm"):
        assert held_by_someone(vm_dir)


def test_a_child_process_does_not_inherit_the_lock(vm_dir: Path) -> None:
    """A process the agent starts while holding the lock must not keep the VM locked after the pass."""
    lock = VmLock(vm_dir, "vm").acquire()
    child = subprocess.Popen(["sleep", "60"], close_fds=False)  # every inheritable descriptor passes
    try:
        lock.release()
        assert not held_by_someone(vm_dir)
    finally:
        child.kill()
        child.wait(timeout=30)
