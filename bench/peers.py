"""The programs a benchmark runs and how they are measured: a throwaway sshd, dd | ssh, rsync, vzrep.

Every measured run is a subprocess. Peak RSS comes from the kernel: ``/usr/bin/time`` reports a
child's ``ru_maxrss`` (see :func:`timed`), and for processes we do not reap (the sshd session, ``cat``, rsync's server side,
the long-running target agent) a poller reads ``VmHWM`` (the process's own peak RSS) from
``/proc/PID/status`` of every descendant of a root process. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.openssh import Sshd, tool

MiB = 1 << 20
GiB = 1 << 30


def drop_writeback() -> None:
    """Flush dirty pages so one run's writeback does not land in the next run's timing."""
    os.sync()


def warm(path: Path) -> None:
    """Read a file once so every peer reads it from the (same, warm) page cache."""
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(8 * MiB)
        while f.readinto(buf):
            pass


# ---------------------------------------------------------------- RSS


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def vm_hwm(pid: int) -> tuple[str, int] | None:
    """(name, peak RSS in bytes) of a live process, or None."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    name = re.search(r"^Name:\s*(\S+)", text, re.M)
    hwm = re.search(r"^VmHWM:\s*(\d+) kB", text, re.M)
    if not name or not hwm:
        return None
    return name.group(1), int(hwm.group(1)) * 1024


class TreeRss:
    """Polls the peak RSS (VmHWM) of every descendant of ``root`` (not the root itself) while running."""

    def __init__(self, root: int, interval: float = 0.1) -> None:
        self.root, self.interval = root, interval
        self.peaks: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _poll(self) -> None:
        kids = _children_map()
        stack = list(kids.get(self.root, []))
        while stack:
            pid = stack.pop()
            stack.extend(kids.get(pid, []))
            got = vm_hwm(pid)
            if got:
                old = self.peaks.get(pid, ("", 0))
                self.peaks[pid] = (got[0], max(old[1], got[1]))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._poll()
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def by_name(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for name, peak in self.peaks.values():
            out[name] = max(out.get(name, 0), peak)
        return out


@dataclass
class Finished:
    returncode: int
    stdout: bytes
    stderr: bytes
    max_rss: int  # bytes
    seconds: float


def timed(cmd: list[str], rss_file: Path) -> list[str]:
    """``cmd`` under ``/usr/bin/time``, which writes its peak RSS (KiB) to ``rss_file``.

    Not ``wait4`` from here: Python spawns children with vfork, and Linux carries the parent's
    high-water RSS across exec into the child's ``ru_maxrss``; ``time`` is a small C parent.
    """
    return [tool("time"), "-f", "%M", "-o", str(rss_file), *cmd]


def read_rss(rss_file: Path) -> int:
    try:
        lines = [ln for ln in rss_file.read_text().split("\n") if ln.strip().isdigit()]
    finally:
        rss_file.unlink(missing_ok=True)
    return int(lines[-1]) * 1024 if lines else 0


def rss_path() -> Path:
    fd, name = tempfile.mkstemp(prefix="vzrep-bench-rss-")
    os.close(fd)
    return Path(name)


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> Finished:
    """Run a command to completion; its wall time and peak RSS (of it and its reaped children)."""
    rss = rss_path()
    t0 = time.perf_counter()
    proc = subprocess.run(timed(cmd, rss), capture_output=True, env=env)
    seconds = time.perf_counter() - t0
    return Finished(proc.returncode, proc.stdout, proc.stderr, read_rss(rss), seconds)


# ---------------------------------------------------------------- OpenSSH peer
# The throwaway sshd is the test suite's (tests/support/openssh.py): one helper makes what sshd needs.


_TRANSFERRED = re.compile(rb"Transferred: sent (\d+), received (\d+) bytes")


def ssh_transferred(stderr: bytes) -> tuple[int, int]:
    """SSH-layer bytes (packets incl. encryption overhead) from ``ssh -o LogLevel=VERBOSE``."""
    sent = recv = 0
    for m in _TRANSFERRED.finditer(stderr):
        sent, recv = sent + int(m.group(1)), recv + int(m.group(2))
    return sent, recv


def dd_ssh(sshd: Sshd, image: Path, dest: Path) -> dict[str, Any]:
    """``dd if=IMAGE bs=1M | ssh -c aes256-gcm@openssh.com 127.0.0.1 'cat > DEST'``."""
    assert sshd.proc is not None
    rss_dd, rss_ssh = rss_path(), rss_path()
    with TreeRss(sshd.proc.pid) as remote:
        t0 = time.perf_counter()
        dd = subprocess.Popen(
            timed([tool("dd"), f"if={image}", "bs=1M", "status=none"], rss_dd), stdout=subprocess.PIPE
        )
        ssh = subprocess.Popen(
            timed([*sshd.ssh_args(), "127.0.0.1", f"cat > {dest}"], rss_ssh),
            stdin=dd.stdout,
            stderr=subprocess.PIPE,
        )
        assert dd.stdout is not None
        dd.stdout.close()
        _, err = ssh.communicate()
        dd.wait()
        seconds = time.perf_counter() - t0
    if ssh.returncode or dd.returncode:
        raise RuntimeError(f"dd | ssh failed: {err.decode(errors='replace')[-800:]}")
    ru_ssh, ru_dd = read_rss(rss_ssh), read_rss(rss_dd)
    sent, recv = ssh_transferred(err)
    size = image.stat().st_size
    server = remote.by_name()
    return {
        "seconds": seconds,
        "disk_bytes": size,
        "app_bytes_sent": size,
        "app_bytes_received": 0,
        "ssh_bytes_sent": sent,
        "ssh_bytes_received": recv,
        "rss_source": max(ru_ssh, ru_dd),
        "rss_source_detail": {"ssh": ru_ssh, "dd": ru_dd},
        "rss_target": max(server.values(), default=0),
        "rss_target_detail": server,
    }


_RSYNC_SENT = re.compile(rb"Total bytes sent: ([\d,.]+)")
_RSYNC_RECV = re.compile(rb"Total bytes received: ([\d,.]+)")


def _num(m: re.Match[bytes] | None) -> int:
    return int(re.sub(rb"[,.]", b"", m.group(1))) if m else 0


def rsync(sshd: Sshd, image: Path, dest: Path, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """``rsync --inplace --no-whole-file -e 'ssh -c aes256-gcm@openssh.com'`` onto an older DEST
    (``extra``: more options, e.g. ``--checksum --dry-run`` to compare only)."""
    assert sshd.proc is not None
    rsh = " ".join(sshd.ssh_args())
    cmd = [tool("rsync"), "--inplace", "--no-whole-file", "--stats", *extra, "-e", rsh, str(image), f"127.0.0.1:{dest}"]
    with TreeRss(sshd.proc.pid) as remote:
        done = run_measured(cmd)
    if done.returncode:
        raise RuntimeError(f"rsync failed: {done.stderr.decode(errors='replace')[-800:]}")
    sent, recv = ssh_transferred(done.stderr)
    server = remote.by_name()
    return {
        "seconds": done.seconds,
        "disk_bytes": image.stat().st_size,
        "app_bytes_sent": _num(_RSYNC_SENT.search(done.stdout)),
        "app_bytes_received": _num(_RSYNC_RECV.search(done.stdout)),
        "ssh_bytes_sent": sent,
        "ssh_bytes_received": recv,
        # /usr/bin/time: the largest of the rsync client and its ssh child (reaped descendants count)
        "rss_source": done.max_rss,
        "rss_target": max(server.values(), default=0),
        "rss_target_detail": server,
    }


# ---------------------------------------------------------------- vzrep


@dataclass
class VzrepKeys:
    dir: Path
    host_key: Path = field(init=False)
    client_key: Path = field(init=False)
    authorized_keys: Path = field(init=False)

    def __post_init__(self) -> None:
        self.host_key = self.dir / "host_key"
        self.client_key = self.dir / "client_key"
        self.authorized_keys = self.dir / "authorized_keys"

    def make(self) -> VzrepKeys:
        self.dir.mkdir(parents=True, exist_ok=True)
        for key in (self.host_key, self.client_key):
            subprocess.run([sys.executable, "-m", "vzcommon.keycli", "keygen", str(key)], check=True,
                           capture_output=True)
        self.authorized_keys.write_text(Path(f"{self.client_key}.pub").read_text())
        return self

    def known_hosts(self, port: int) -> Path:
        pub = Path(f"{self.host_key}.pub").read_text().split()
        path = self.dir / f"known_hosts-{port}"
        path.write_text(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")
        return path


def knob_env(knobs: dict[str, Any] | None) -> dict[str, str]:
    """Environment for ``bench.agent`` (see there): tuning knobs set per run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VZBENCH_")}
    env["VZREP_LOG_FORMAT"] = "json"
    for key, value in (knobs or {}).items():
        if value is not None:
            env[f"VZBENCH_{key.upper()}"] = str(value)
    return env


class VzrepTarget:
    """``vzrep-target serve`` (through ``bench.agent``) as a subprocess; restartable on the same port."""

    def __init__(self, data_dir: Path, keys: VzrepKeys, log: Path, knobs: dict[str, Any] | None = None) -> None:
        self.data_dir, self.keys, self.log_path, self.knobs = data_dir, keys, log, knobs
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self.extra: list[str] = []  # more `serve` options (scenario (d): --map)

    def start(self, timeout: float = 30) -> VzrepTarget:
        ready = self.keys.dir / f"ready-{time.monotonic_ns()}"
        cmd = [
            sys.executable, "-m", "bench.agent", "target", "--log-level", "warning", "serve",
            "--data-dir", str(self.data_dir), "--listen", f"127.0.0.1:{self.port}",
            "--host-key", str(self.keys.host_key), "--authorized-keys", str(self.keys.authorized_keys),
            "--ready-file", str(ready), *self.extra,
        ]  # fmt: skip
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=self._log, env=knob_env(self.knobs))
        # stop() is safe from here on, even if we are interrupted while waiting for the port
        deadline = time.monotonic() + timeout
        while not ready.exists() or not ready.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vzrep target did not start: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.02)
        self.port = int(ready.read_text())
        ready.unlink()
        return self

    def peak_rss(self) -> int:
        assert self.proc is not None
        got = vm_hwm(self.proc.pid)
        return got[1] if got else 0

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log:
            self._log.close()


def vzrep_pass(
    target: VzrepTarget,
    vm: str,
    disk: Path,
    state_dir: Path,
    block_size: str = "64K",
    compress: str = "auto",
    knobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One ``vzrep-source pass --json`` against a running target; figures for the tables."""
    cmd = [
        sys.executable, "-m", "bench.agent", "source", "pass",
        "--target", f"127.0.0.1:{target.port}", "--identity", str(target.keys.client_key),
        "--known-hosts", str(target.keys.known_hosts(target.port)), "--vm", vm, "--disk", str(disk),
        "--json", "--no-progress", "--state-dir", str(state_dir),
        "--block-size", block_size, "--compress", compress,
    ]  # fmt: skip
    done = run_measured(cmd, env=knob_env(knobs))
    if done.returncode:
        raise RuntimeError(
            f"vzrep-source failed ({done.returncode}): {done.stderr.decode(errors='replace')[-1500:]}"
        )
    report = json.loads(done.stdout)
    total = report["total"]
    return {
        "seconds": done.seconds,
        "pass_seconds": report["seconds"],
        "disk_bytes": sum(d["size"] for d in report["disks"]),
        "app_bytes_sent": report["wire_bytes_sent"],
        "app_bytes_received": report["wire_bytes_received"],
        "rss_source": done.max_rss,
        "rss_target": target.peak_rss(),
        "blocks_changed": total["blocks_changed"],
        "bytes_read": total["bytes_read"],
        "compression_ratio": total["compression_ratio"],
        "payload_raw": total["payload_raw"],
        "payload_wire": total["payload_wire"],
    }
