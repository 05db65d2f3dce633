"""``vzrep-source run`` as a real subprocess, and its history read as ``vzrep-source history`` reads it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from source_agent.daemon.history import History, PassRecord
from tests.support.agents import Keys
from vzcommon.errors import VzrepError

T = TypeVar("T")


def write_scheduled_job(
    path: Path, port: int, keys: Keys, vms: dict[str, Path], schedule: dict[str, Any], job_id: str,
    resume_window: float = 120,
) -> Path:
    """A job of local VMs (one disk each, named disk0) against 127.0.0.1:PORT, with a [schedule]."""
    kh = keys.known_hosts(port, f"kh-{port}")
    lines = [
        f'id = "{job_id}"', f'name = "{path.stem}"', "", "[target]", 'host = "127.0.0.1"', f"port = {port}",
        f'identity = "{keys.client_key}"', f'known_hosts = "{kh}"', "", "[options]", "parallel = 2",
        f"resume_window = {resume_window:g}", "",
        "[schedule]", *(f"{k} = {v!r}".replace("'", '"') for k, v in schedule.items()),
    ]  # fmt: skip
    for vm, disk in vms.items():
        lines += ["", "[[vm]]", f'name = "{vm}"', f'disks = ["disk0={disk}"]']
    path.write_text("\n".join(lines) + "\n")
    return path


class DaemonProcess:
    def __init__(self, jobs: Path, db: Path, state_dir: Path, log: Path, *extra: str) -> None:
        self.jobs, self.db, self.state_dir, self.log_path, self.extra = jobs, db, state_dir, log, extra
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        cmd = [
            sys.executable, "-m", "source_agent.cli", "--log-level", "info", "run", "--jobs", str(self.jobs),
            "--db", str(self.db), "--state-dir", str(self.state_dir), "--poll", "0.5", *self.extra,
        ]  # fmt: skip
        self.log = open(self.log_path, "ab")
        env = {**os.environ, "VZREP_LOG_FORMAT": "json"}
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, env=env)
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM; its exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.log.close()

    def passes(self, vm: str | None = None) -> list[PassRecord]:
        try:
            h = History(self.db, readonly=True)
        except VzrepError:  # not made yet, or made but without its tables yet
            return []
        try:
            return h.passes(vm=vm)
        finally:
            h.close()


def wait_for(what: str, check: Callable[[], T | None], timeout: float, log: Path | None = None) -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            tail = log.read_text()[-4000:] if log is not None and log.exists() else ""
            raise AssertionError(f"timed out waiting for {what}\n{tail}")
        time.sleep(0.05)


def processes_with(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (to prove a pass died with its daemon)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if text.encode() in (d / "cmdline").read_bytes():
                    out.append(int(d.name))
            except OSError:
                continue
    return out
