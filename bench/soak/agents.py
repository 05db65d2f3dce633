"""The agents as the soak runs them: ``vzrep-target serve`` and ``vzrep-source pass`` subprocesses.

asyncio subprocesses (not :class:`tests.support.agents.TargetProcess`, which blocks while it waits)
so that several workers share one event loop with their proxies. Logs go to the work directory,
never to the small data filesystem, so a full filesystem is the replica's problem alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.agents import Keys


class TargetAgent:
    """``vzrep-target serve`` on 127.0.0.1; restarted on the same port after a SIGKILL."""

    def __init__(self, data: Path, keys: Keys, log: Path, restore_points: int) -> None:
        self.data, self.keys, self.log_path, self.restore_points = data, keys, log, restore_points
        self.port = 0
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def start(self, within: float = 30) -> None:
        self.starts += 1
        ready = self.log_path.with_name(f"{self.log_path.stem}.ready{self.starts}")
        with open(self.log_path, "ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "target_agent.cli", "--log-level", "info", "serve",
                "--data-dir", str(self.data), "--listen", f"127.0.0.1:{self.port}",
                "--host-key", str(self.keys.host_key), "--authorized-keys", str(self.keys.authorized_keys),
                "--restore-points", str(self.restore_points), "--ready-file", str(ready),
                # the soak judges the rollback of every fault: a lost link's pass is not kept for
                # its source (resume has its own tests, tests/integration/test_resume.py)
                "--resume-window", "0",
                stdout=log, stderr=log, env={**os.environ, "VZREP_LOG_FORMAT": "json"},
            )  # fmt: skip
        deadline = time.monotonic() + within
        while not ready.exists() or not ready.read_text().strip():
            if self.proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the target did not start; see {self.log_path}")
            await asyncio.sleep(0.02)
        self.port = int(ready.read_text())
        ready.unlink()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def kill(self) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                await self.kill()
        return self.proc.returncode


@dataclass
class PassResult:
    rc: int
    report: dict[str, Any] | None
    stderr: str
    seconds: float
    #: seconds from the start of the process to the proxy's accepting its connection (None: it never connected)
    to_connect: float | None
    #: the kill (of the source, or ``on_kill``) happened before the source ended
    killed: bool = False


class Zygote:
    """:mod:`bench.soak.zygote`: source agents forked from one that has imported everything."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.proc: asyncio.subprocess.Process | None = None
        self.n = 0

    async def start(self) -> Zygote:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.soak.zygote",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        await self._read()
        return self

    async def _read(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the soak's fork server (bench.soak.zygote) died")
        return dict(json.loads(line))

    async def spawn(self, argv: list[str]) -> tuple[int, Path, Path]:
        assert self.proc is not None and self.proc.stdin is not None
        self.n += 1
        out, err = self.work / f"source-{self.n % 4}.out", self.work / f"source-{self.n % 4}.err"
        self.proc.stdin.write((json.dumps({"argv": argv, "out": str(out), "err": str(err)}) + "\n").encode())
        await self.proc.stdin.drain()
        return int((await self._read())["pid"]), out, err

    async def wait(self) -> int:
        return int((await self._read())["rc"])

    async def stop(self) -> None:
        if self.proc is not None and self.proc.stdin is not None:
            self.proc.stdin.close()
            await self.proc.wait()


async def source_pass(
    keys: Keys,
    port: int,
    vm: str,
    disks: dict[str, Path],
    state: Path,
    connected: asyncio.Event,
    *,
    kill: tuple[str, float] | None = None,
    on_kill: Any = None,
    zygote: Zygote | None = None,
) -> PassResult:
    """One ``vzrep-source pass --json`` (a new process, or forked by ``zygote``). ``kill``:
    ("spawn"|"connect", seconds): SIGKILL this long after the start or after the proxy saw the
    connection; ``on_kill`` (an async callable) instead of killing the source (to kill the target)."""
    kh = keys.known_hosts(port, f"kh-{port}")
    argv = [
        "pass", "--target", f"127.0.0.1:{port}",
        "--identity", str(keys.client_key), "--known-hosts", str(kh), "--vm", vm,
        "--state-dir", str(state), "--json", "--no-progress", "--resume-window", "0",
        *[a for name, p in disks.items() for a in ("--disk", f"{name}={p}")],
    ]  # fmt: skip
    t0 = time.monotonic()
    proc: asyncio.subprocess.Process | None = None
    ended: asyncio.Future[Any]
    if zygote is not None:
        pid, out_path, err_path = await zygote.spawn(argv)
        ended = asyncio.ensure_future(zygote.wait())
    else:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "source_agent.cli", *argv,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        pid = proc.pid
        ended = asyncio.ensure_future(proc.communicate())
    to_connect: list[float] = []
    killed: list[bool] = []

    async def watch_connect() -> None:
        await connected.wait()
        to_connect.append(time.monotonic() - t0)

    async def killer() -> None:
        assert kill is not None
        mode, delay = kill
        if mode == "connect":
            await connected.wait()
        await asyncio.sleep(delay)
        if not ended.done():
            killed.append(True)
            if on_kill is not None:
                await on_kill()
            else:
                os.kill(pid, signal.SIGKILL)

    watcher = asyncio.ensure_future(watch_connect())
    killing = asyncio.ensure_future(killer()) if kill else None
    note = b""
    try:
        try:
            await asyncio.wait_for(asyncio.shield(ended), 120)
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            note = b"\nsoak: the source did not end within 120 s; killed"
            await ended
    finally:
        for t in (watcher, killing):
            if t is not None:
                t.cancel()
                await asyncio.gather(t, return_exceptions=True)
    seconds = time.monotonic() - t0
    if proc is not None:
        out, err = ended.result()
        assert proc.returncode is not None
        rc = proc.returncode
    else:
        rc = ended.result()
        out, err = out_path.read_bytes(), err_path.read_bytes()
    err += note
    try:
        report = json.loads(out) if out.strip() else None
    except ValueError:
        report = None
    return PassResult(
        rc, report, err.decode(errors="replace"), seconds, to_connect[0] if to_connect else None, bool(killed)
    )
