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

from tests.support.tools import qemu_compare
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


def pair(tmp_path: Path) -> tuple[Path, Path, int]:
    """Pair a target and a source through their CLIs; their keys dirs and the agent port."""
    tkeys, skeys = tmp_path / "target-keys", tmp_path / "source-keys"
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
    return tkeys, skeys, agent_port


def test_pass_with_pinned_keys_and_impostor_refused(tmp_path):
    pytest.importorskip("source_agent.cli")
    pytest.importorskip("target_agent.cli")
    tkeys, skeys, agent_port = pair(tmp_path)
    data = tmp_path / "data"

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


def test_failback_with_the_pairing_keys_reversed(tmp_path):
    """After a failover is committed, the DR target sends the VM home with the keys pairing pinned, roles
    reversed: `vzrep-source receive-failback` (the source's key as host key, only the target's key let
    in) and `vzrep-target failback` (signing in with its host key, pinning the source's key). An agent
    with another key on the source's port is refused."""
    tkeys, skeys, agent_port = pair(tmp_path)
    data = tmp_path / "data"
    disk = tmp_path / "disk0.raw"
    with disk.open("wb") as f:
        f.truncate(8 << 20)
        f.seek(1 << 20)
        f.write(os.urandom(512 << 10))
    real = serve(tkeys, data, agent_port, tmp_path / "ready1")
    try:
        result = run("source", "pass", "--target", f"127.0.0.1:{agent_port}", "--identity",
                     str(skeys / "id_ed25519"), "--known-hosts", str(skeys / "known_hosts"), "--vm", "vm1",
                     "--disk", f"disk0={disk}", "--state-dir", str(tmp_path / "source-state"), "--no-progress")
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        stop(real)
    for step in (["--point", json.loads(run("target", "points", "--data-dir", str(data), "--vm", "vm1",
                                             "--json").stdout)["points"][0]["id"]], ["--commit"]):
        res = run("target", "failover", "--data-dir", str(data), "--vm", "vm1", *step)
        assert res.returncode == 0, res.stderr
    replica = data / "vm1" / "disk0-flat.vmdk"
    with replica.open("r+b") as f:  # production at the DR site writes
        f.seek(5 << 20)
        f.write(os.urandom(128 << 10))

    port = free_port()
    fb = ["failback", "--data-dir", str(data), "--vm", "vm1", "--keys-dir", str(tkeys), "--to",
          f"127.0.0.1:{port}", "--state-dir", str(tmp_path / "dr-state")]
    # Someone else's agent on the source's failback port: the pinned source key refuses it (exit 9).
    fake = tmp_path / "fake-keys"
    fake.mkdir()
    keys.generate(fake / "ssh_host_ed25519_key", "impostor")
    (fake / "authorized_keys").write_text((tkeys / "ssh_host_ed25519_key.pub").read_text())
    impostor = serve(fake, tmp_path / "impostor-data", port, tmp_path / "ready-imp")
    try:
        refused = run("target", *fb)
    finally:
        stop(impostor)
    assert refused.returncode == ExitCode.HOST_KEY, refused.stdout + refused.stderr

    ready = tmp_path / "ready-home"
    home = agent("source", "receive-failback", "--keys-dir", str(skeys), "--map", f"vm1/disk0={disk}",
                 "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "home"), "--ready-file",
                 str(ready), log=tmp_path / "home.log")
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert home.poll() is None, (tmp_path / "home.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        sent = run("target", *fb)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert home.wait(30) == 0, (tmp_path / "home.log").read_text()  # it ends after the pass commits
    finally:
        if home.poll() is None:
            home.kill()
            home.wait()
    qemu_compare(replica, disk)  # the original disk holds what production wrote at the DR site
    assert json.loads(run("target", "status", "--data-dir", str(data), "--vm", "vm1", "--json").stdout
                      )["vms"][0]["failover"]["state"] == "failed-back"
