"""After pairing through the agents' own CLIs, a replication pass works with the pinned keys, and an
impostor target with another host key on the same address is refused (exit code HOST_KEY)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vzcommon import keys
from vzcommon.errors import ExitCode

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def agent(role: str, *argv: str, log: Path) -> subprocess.Popen[str]:
    """A long-running agent command whose output goes to ``log`` (read it when something fails)."""
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", f"{role}_agent.cli", *argv], cwd=REPO, text=True,
                                stdout=out, stderr=subprocess.STDOUT)


def run(role: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", f"{role}_agent.cli", *argv], cwd=REPO, text=True,
                          capture_output=True, timeout=120)


def serve(keys_dir: Path, data_dir: Path, port: int, ready: Path) -> subprocess.Popen[str]:
    proc = agent("target", "serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}",
                 "--host-key", str(keys_dir / "ssh_host_ed25519_key"),
                 "--authorized-keys", str(keys_dir / "authorized_keys"), "--ready-file", str(ready),
                 log=ready.with_suffix(".log"))
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert proc.poll() is None, ready.with_suffix(".log").read_text()
        assert time.monotonic() < deadline, "the target agent did not start"
        time.sleep(0.1)
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(20)


def test_pass_with_pinned_keys_and_impostor_refused(tmp_path):
    pytest.importorskip("source_agent.cli")
    pytest.importorskip("target_agent.cli")
    tkeys, skeys, data = tmp_path / "target-keys", tmp_path / "source-keys", tmp_path / "data"
    agent_port, pairing_port = free_port(), free_port()

    pairing = agent("target", "pair", "--keys-dir", str(tkeys), "--code", "KX7P-22QM",
                    "--listen", f"127.0.0.1:{pairing_port}", "--agent-port", str(agent_port), "--expires", "120",
                    log=tmp_path / "pair.log")
    try:
        deadline = time.monotonic() + 30
        while True:
            src = run("source", "pair", "--keys-dir", str(skeys), "--port", str(pairing_port), "127.0.0.1",
                      "KX7P-22QM")
            if src.returncode != ExitCode.CONNECTION or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert src.returncode == 0, src.stdout + src.stderr
        assert pairing.wait(30) == 0, (tmp_path / "pair.log").read_text()
    finally:
        if pairing.poll() is None:
            pairing.kill()
            pairing.wait()

    disk = tmp_path / "disk0.raw"
    with disk.open("wb") as f:
        f.truncate(8 << 20)
        f.seek(1 << 20)
        f.write(os.urandom(256 << 10))
    pass_args = ["pass", "--target", f"127.0.0.1:{agent_port}", "--identity", str(skeys / "id_ed25519"),
                 "--known-hosts", str(skeys / "known_hosts"), "--vm", "vm1", "--disk", f"disk0={disk}",
                 "--state-dir", str(tmp_path / "source-state"), "--json", "--no-progress"]

    real = serve(tkeys, data, agent_port, tmp_path / "ready1")
    try:
        result = run("source", *pass_args)
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        stop(real)
    status = json.loads(run("target", "status", "--data-dir", str(data), "--json").stdout)
    assert [vm["vm"] for vm in status["vms"]] == ["vm1"]
    assert status["vms"][0]["last_pass"] is not None

    # An impostor on the same address with its own host key (and even the source's key authorised).
    fake_keys = tmp_path / "impostor-keys"
    fake_keys.mkdir()
    (fake_keys / "authorized_keys").write_text((tkeys / "authorized_keys").read_text())
    keys.generate(fake_keys / "ssh_host_ed25519_key", "impostor")
    impostor = serve(fake_keys, tmp_path / "impostor-data", agent_port, tmp_path / "ready2")
    try:
        refused = run("source", *pass_args)
    finally:
        stop(impostor)
    assert refused.returncode == ExitCode.HOST_KEY, refused.stdout + refused.stderr
    assert not (tmp_path / "impostor-data" / "vm1").exists()
