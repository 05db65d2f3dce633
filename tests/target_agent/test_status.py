"""``vzrep-target status`` is read-only: it reports a running pass without creating or taking anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from target_agent.storage.lock import VmLock
from target_agent.storage.status import vm_status

HOLD = """
import sys, time
from pathlib import Path
from target_agent.storage.lock import VmLock
VmLock(Path(sys.argv[1]), "web01").acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_status_of_a_never_locked_vm_creates_no_lock_file(tmp_path: Path) -> None:
    vdir = tmp_path / "web01"
    vdir.mkdir()
    before = sorted(p.name for p in vdir.iterdir())
    st = vm_status(vdir)
    assert st["pass_running"] is False
    assert sorted(p.name for p in vdir.iterdir()) == before == []


def test_status_sees_a_lock_held_by_another_process(tmp_path: Path) -> None:
    vdir = tmp_path / "web01"
    vdir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(vdir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert VmLock.is_held(vdir)
        assert vm_status(vdir)["pass_running"] is True
        mtime = (vdir / ".lock").stat().st_mtime_ns
    finally:
        holder.kill()
        holder.communicate()
    # the kernel dropped the dead holder's flock; the probe took nothing and changed nothing
    assert not VmLock.is_held(vdir)
    assert vm_status(vdir)["pass_running"] is False
    assert (vdir / ".lock").stat().st_mtime_ns == mtime
    with VmLock(vdir, "web01"):
        assert VmLock.is_held(vdir)  # our own holder counts too (flock is per open file)


def test_a_status_probe_never_blocks_a_pass(tmp_path: Path) -> None:
    vdir = tmp_path / "web01"
    vdir.mkdir()
    VmLock(vdir, "web01").acquire().release()  # the file exists, unlocked
    assert not VmLock.is_held(vdir)
    with VmLock(vdir, "web01"):  # the probe left no lock behind
        pass
