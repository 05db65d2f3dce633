"""Both agents for tests: keys, an in-process target on 127.0.0.1 port 0, the target as a subprocess."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from source_agent.cli import add_filters
from source_agent.disks import open_disk
from source_agent.planning import AbmSettings
from source_agent.session import DiskJob, PassOptions, PassReport, run_pass
from source_agent.tunnel import TargetSpec
from target_agent.resume import Suspended
from target_agent.server import Stream, start_server
from target_agent.session import IDLE_TIMEOUT, TargetSession
from target_agent.storage.status import vm_status
from tests.support.tools import sha256
from vzcommon.keys import generate, known_hosts_line


@dataclass
class Keys:
    dir: Path
    host_key: Path
    client_key: Path
    authorized_keys: Path
    host_pub: str

    @classmethod
    def make(cls, d: Path) -> Keys:
        d.mkdir(parents=True, exist_ok=True)
        host_pub, _ = generate(d / "host_key")
        client_pub, _ = generate(d / "client_key")
        (d / "authorized_keys").write_text(client_pub + "\n")
        return cls(d, d / "host_key", d / "client_key", d / "authorized_keys", host_pub)

    def known_hosts(self, port: int, name: str = "known_hosts") -> Path:
        p = self.dir / name
        p.write_text(known_hosts_line("127.0.0.1", port, self.host_pub) + "\n")
        return p


@dataclass
class Target:
    """An in-process target agent."""

    data_dir: Path
    keys: Keys
    port: int = 0
    server: Any = None
    sessions: list[asyncio.Task[None]] = field(default_factory=list)
    restore_points: int = 7
    mapped: dict[tuple[str, str], Path] = field(default_factory=dict)
    idle_timeout: float = IDLE_TIMEOUT
    #: > 0: a pass whose link is lost waits this long for its source to resume it (serve's default
    #: is 300 s; tests that cut links and expect the rollback at once keep 0)
    resume_window: float = 0.0
    suspended: Suspended | None = None

    async def start(self) -> Target:
        if self.resume_window > 0:
            self.suspended = Suspended(self.resume_window)

        async def handle(stream: Stream, peer: str) -> None:
            session = TargetSession(
                self.data_dir,
                peer,
                restore_points=self.restore_points,
                mapped=self.mapped,
                idle_timeout=self.idle_timeout,
                suspended=self.suspended,
            )
            await session.run(stream)

        self.server, self.port = await start_server(
            handle, "127.0.0.1", 0, self.keys.host_key, self.keys.authorized_keys
        )
        return self

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()
        if self.suspended is not None:
            await self.suspended.close()

    def pass_args(self, disk: Path, state_dir: Path, vm: str = "fo") -> list[str]:
        """``vzrep-source pass`` options against this target (its host key pinned for its port)."""
        kh = self.keys.known_hosts(self.port, f"kh-{self.port}")
        return [
            "--target", f"127.0.0.1:{self.port}", "--identity", str(self.keys.client_key),
            "--known-hosts", str(kh), "--vm", vm, "--disk", str(disk), "--state-dir", str(state_dir),
            "--no-progress",
        ]  # fmt: skip

    def spec(self, port: int | None = None) -> TargetSpec:
        p = port or self.port
        return TargetSpec("127.0.0.1", p, self.keys.client_key, self.keys.known_hosts(p, f"kh-{p}"))

    def vm(self, name: str = "vm1") -> Path:
        return self.data_dir / name


async def replicate(
    target_spec: TargetSpec,
    vm: str,
    disks: list[Path] | dict[str, Path],
    state_dir: Path,
    *,
    abm: AbmSettings | None = None,
    **opts: Any,
) -> PassReport:
    """One pass through the same code the CLI uses (planners and filters included)."""
    items = disks.items() if isinstance(disks, dict) else [(p.name.split(".")[0], p) for p in disks]
    readers = [open_disk(Path(p), name) for name, p in items]
    try:
        jobs = [DiskJob(reader=r) for r in readers]
        if abm is not None:
            add_filters(jobs, state_dir / "work" / vm, abm)
        return await run_pass(target_spec, vm, jobs, PassOptions(state_dir=state_dir, **opts))
    finally:
        for r in readers:
            r.close()


class TargetProcess:
    """``vzrep-target serve`` as a real subprocess (for SIGKILL and restart tests)."""

    def __init__(
        self,
        data_dir: Path,
        keys: Keys,
        log: Path,
        port: int = 0,
        *,
        nofile: int | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        """``nofile``: the agent's limit of open files (RLIMIT_NOFILE), as systemd's LimitNOFILE= sets it;
        ``extra``: more ``serve`` options."""
        self.data_dir, self.keys, self.log_path, self.port = data_dir, keys, log, port
        self.nofile = nofile
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20) -> TargetProcess:
        ready = self.keys.dir / f"ready-{os.getpid()}-{time.monotonic_ns()}"
        cmd = [
            sys.executable,
            "-m",
            "target_agent.cli",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--host-key",
            str(self.keys.host_key),
            "--authorized-keys",
            str(self.keys.authorized_keys),
            "--ready-file",
            str(ready),
            *self.extra,
        ]
        self.log = open(self.log_path, "ab")
        nofile = self.nofile
        self.proc = subprocess.Popen(
            cmd,
            stdout=self.log,
            stderr=self.log,
            env={**os.environ, "VZREP_LOG_FORMAT": "json"},
            preexec_fn=None
            if nofile is None
            else lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile)),
        )
        deadline = time.monotonic() + timeout
        while not ready.exists() or not ready.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"target did not start: {self.log_path.read_text()}")
            time.sleep(0.05)
        self.port = int(ready.read_text())
        return self

    def source_cmd(self, vm: str, disk: str | Path, state_dir: Path, *extra: str) -> list[str]:
        """The `vzrep-source pass` command line against this target (keys pinned for its port)."""
        kh = self.keys.known_hosts(self.port, f"kh-{self.port}")
        return [
            sys.executable,
            "-m",
            "source_agent.cli",
            "pass",
            "--target",
            f"127.0.0.1:{self.port}",
            "--identity",
            str(self.keys.client_key),
            "--known-hosts",
            str(kh),
            "--vm",
            vm,
            "--disk",
            str(disk),
            "--state-dir",
            str(state_dir),
            *extra,
        ]

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


async def wait_idle(vdir: Path, limit: float = 20) -> None:
    """Wait until the target has finished (or rolled back) whatever pass it had for this VM."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        st = vm_status(vdir)
        if not st["pass_running"] and not st["pending_rollback"]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"target still busy with {vdir.name}: {vm_status(vdir)}")


def snapshot(vdir: Path) -> dict[str, str]:
    """sha256 of the replica's flat extents, descriptors and maps."""
    return {p.name: sha256(p) for p in sorted(vdir.iterdir()) if p.name.endswith((".vmdk", ".vzmap"))}
