"""End to end in tmux: the real console against a running target agent, pairing a real source.

The console runs in a tmux pane (send-keys to type, capture-pane to read the screen), on an appliance
root made by first boot in a temporary directory, with the agent started from its CLI.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance import firstboot
from appliance.layout import Layout
from vzcommon import keys

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (`make sysdeps` installs it)"),
]
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Tmux:
    def __init__(self, name: str, socket_path: Path) -> None:
        self.name, self.base = name, ["tmux", "-S", str(socket_path)]

    def run(self, *args: str) -> str:
        return subprocess.run([*self.base, *args], capture_output=True, text=True, check=True).stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", self.name)

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", self.name, *keys)

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.screen())
            if match:
                return match
            time.sleep(0.3)
        raise AssertionError(f"{pattern!r} never appeared; screen:\n{self.screen()}")


@pytest.fixture
def target_root(tmp_path):
    pytest.importorskip("target_agent.cli")
    root = tmp_path / "root"
    env = tmp_path / "env.xml"
    env.write_text(
        '<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" '
        'xmlns:oe="http://schemas.dmtf.org/ovf/environment/1"><PropertySection>'
        '<Property oe:key="vzrep.role" oe:value="target"/><Property oe:key="vzrep.hostname" oe:value="tmux-target"/>'
        "</PropertySection></Environment>"
    )
    firstboot.main(["--root", str(root), "--ovf-env", str(env)])
    layout = Layout(root)
    port = free_port()
    # The console reads the agent port from appliance.json; point it at this test's agent.
    config = layout.appliance_json.read_text().replace('"agent_port": 2222', f'"agent_port": {port}')
    layout.appliance_json.write_text(config)
    agent = subprocess.Popen(
        [sys.executable, "-m", "target_agent.cli", "serve", "--data-dir", str(layout.data_dir), "--listen",
         f"127.0.0.1:{port}", "--host-key", str(layout.host_key), "--authorized-keys", str(layout.authorized_keys)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    yield layout, port
    agent.terminate()
    agent.wait(10)


def test_console_in_tmux_pairs_a_source_against_a_running_agent(target_root, tmp_path):
    layout, agent_port = target_root
    pairing_port = free_port()
    agent_cli = f"target={sys.executable} -m target_agent.cli"
    console = (f"{sys.executable} -m appliance.console --root {layout.root} --no-systemd "
               f"--agent-cli '{agent_cli}' --pairing-listen 127.0.0.1:{pairing_port}")
    tmux = Tmux("vzrep-console", tmp_path / "tmux.sock")
    env_prefix = f"cd {REPO} && TERM=xterm-256color "
    tmux.run("new-session", "-d", "-s", tmux.name, "-x", "150", "-y", "45", env_prefix + console)
    try:
        tmux.wait_for(r"Role: target", 60)
        tmux.wait_for(rf"answering on port {agent_port}")
        assert "Not paired" in tmux.screen()

        tmux.keys("p")
        tmux.wait_for(r"Show pairing code")
        tmux.keys("Enter")  # the first button has the focus
        code = tmux.wait_for(r"Pairing code:\s+([0-9A-Z]{4}-[0-9A-Z]{4})").group(1)

        sdir = tmp_path / "source-keys"
        deadline = time.monotonic() + 20
        while True:  # the pairing port opens a moment after the code is shown
            proc = subprocess.run(
                [sys.executable, "-m", "pairing.cli", "source", "pair", "--keys-dir", str(sdir),
                 "--port", str(pairing_port), "127.0.0.1", code],
                cwd=REPO, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            if proc.returncode != 4 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        tmux.wait_for(r"Paired\.", 15)

        tmux.keys("F1")
        tmux.wait_for(r"Role: target")
        fingerprint = keys.fingerprint(keys.public_line(sdir / "id_ed25519"))
        tmux.keys("u")
        tmux.wait_for(r"Paired with source", 20)
        assert fingerprint[:40] in tmux.screen()
        pinned = (sdir / "known_hosts").read_text()
        assert pinned.startswith(f"[127.0.0.1]:{agent_port} ssh-ed25519 ")
    finally:
        if os.environ.get("VZREP_KEEP_TMUX") is None:
            subprocess.run([*tmux.base, "kill-server"], capture_output=True, check=False)
