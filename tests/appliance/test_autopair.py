"""Two appliances deployed with the same pairing token pair by themselves (vzrep-pairing.service)."""

from __future__ import annotations

import socket
import threading
import time

from appliance import autopair
from appliance.layout import Layout
from pairing import pins
from vzcommon.errors import ExitCode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_same_token_pairs_and_the_token_is_used_up(tmp_path):
    port = free_port()
    target, source = Layout(tmp_path / "t"), Layout(tmp_path / "s")
    for layout in (target, source):
        layout.pairing_dir.mkdir(parents=True)
        layout.token_file.write_text("correct-horse-battery\n")
    rc: dict[str, int] = {}
    thread = threading.Thread(
        target=lambda: rc.setdefault("target", autopair.run({"role": "target", "pairing_host": "127.0.0.1", "pairing_port": port}, target))
    )
    thread.start()
    # The source starts first in real life too: it retries until the target's port is open.
    config = {"role": "source", "peer": {"host": "127.0.0.1", "port": port}}
    rc["source"] = autopair.run(config, source, retry=0.2, deadline=30)
    thread.join(30)
    assert rc == {"target": 0, "source": 0}
    assert not target.token_file.exists() and not source.token_file.exists()
    target_peer, source_peer = pins.load(target.peer_json), pins.load(source.peer_json)
    assert target_peer is not None and source_peer is not None
    assert source_peer.address == f"127.0.0.1:{2222}"
    # Run again: no token, nothing to do.
    assert autopair.run(config, source) == 0


def test_source_gives_up_when_the_target_never_answers(tmp_path):
    layout = Layout(tmp_path)
    layout.pairing_dir.mkdir(parents=True)
    layout.token_file.write_text("correct-horse-battery")
    config = {"role": "source", "peer": {"host": "127.0.0.1", "port": free_port()}}
    assert autopair.run(config, layout, retry=0.1, deadline=0.5) == ExitCode.CONNECTION
    assert not layout.token_file.exists()


def test_source_without_peer_is_an_input_error(tmp_path):
    layout = Layout(tmp_path)
    layout.pairing_dir.mkdir(parents=True)
    layout.token_file.write_text("correct-horse-battery")
    assert autopair.run({"role": "source"}, layout) == ExitCode.INPUT


def stall_the_target(port: int, token: str) -> socket.socket:
    """A peer that starts a real attempt with the right token and then goes quiet: the target is busy."""
    from pairing.protocol import SourcePairing

    deadline = time.monotonic() + 10
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            break
        except OSError:
            assert time.monotonic() < deadline, "the target's pairing port never opened"
            time.sleep(0.05)
    sock.sendall(SourcePairing(token, "ssh-ed25519 AAAA stalled", "stalled").start())
    assert len(sock.recv(4)) == 4  # the target answered: this attempt holds it now
    return sock


def test_a_busy_target_is_retried_and_the_token_kept_until_it_pairs(tmp_path):
    port = free_port()
    target, source = Layout(tmp_path / "t"), Layout(tmp_path / "s")
    for layout in (target, source):
        layout.pairing_dir.mkdir(parents=True)
        layout.token_file.write_text("correct-horse-battery\n")
    rc: dict[str, int] = {}
    thread = threading.Thread(
        target=lambda: rc.setdefault(
            "target", autopair.run({"role": "target", "pairing_host": "127.0.0.1", "pairing_port": port}, target)
        ),
        daemon=True,
    )
    thread.start()
    config = {"role": "source", "peer": {"host": "127.0.0.1", "port": port}}
    stalled = stall_the_target(port, "correct-horse-battery")
    try:
        # Busy for longer than the source's deadline: it gives up with BUSY and keeps its token,
        # so its unit (Restart=on-failure) starts it again.
        assert autopair.run(config, source, retry=0.1, deadline=2.5) == ExitCode.BUSY
        assert source.token_file.exists()
    finally:
        # The other attempt goes away a little later: the next start retries "busy" and pairs.
        threading.Timer(1.5, stalled.close).start()
    assert autopair.run(config, source, retry=0.1, deadline=30) == 0
    thread.join(30)
    assert rc == {"target": 0}
    assert not source.token_file.exists() and not target.token_file.exists()
    assert pins.load(source.peer_json) is not None
