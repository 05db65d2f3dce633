"""Two appliances pair over 127.0.0.1 through the real CLI handlers and the asyncio server."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path

import pytest

from pairing import pins
from pairing.cli import standalone, status_dict
from pairing.net import PairingServer, pair_with_target
from pairing.protocol import CodeGate, CodeUnavailable, PairingBusy, WrongCode
from vzcommon import keys
from vzcommon.errors import ConnectionFailed, ExitCode
from vzcommon.ssh import asyncssh


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(role: str, *argv: str) -> int:
    """The role's pairing commands through their entry point (errors become one line and a code)."""
    return standalone(role, list(argv))


class TargetThread(threading.Thread):
    """``vzrep-target pair --code CODE`` running in a thread, as it would in its own process."""

    def __init__(self, keys_dir: Path, code: str, port: int, expires: float = 60.0) -> None:
        super().__init__(daemon=True)
        self.argv = ["pair", "--keys-dir", str(keys_dir), "--code", code, "--listen", f"127.0.0.1:{port}",
                     "--expires", str(expires), "--agent-port", "2222"]
        self.rc: int | None = None

    def run(self) -> None:
        self.rc = cli("target", *self.argv)


def wait_listening(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("the pairing port never opened")


def source_pair(keys_dir: Path, port: int, code: str) -> int:
    return cli("source", "pair", "--keys-dir", str(keys_dir), "--port", str(port), "127.0.0.1", code)


def test_pair_with_the_right_code_pins_both_keys_and_closes_the_port(tmp_path, capsys):
    tdir, sdir = tmp_path / "target", tmp_path / "source"
    port = free_port()
    target = TargetThread(tdir, "KX7P-22QM", port)
    target.start()
    # The target's status before it is paired (the port probe also counts as a failed session).
    assert status_dict(tdir, "target")["paired"] is False
    wait_listening(port)
    assert source_pair(sdir, port, "kx7p22qm") == 0
    target.join(10)
    assert target.rc == 0

    host_key = keys.public_line(tdir / "ssh_host_ed25519_key")
    client_key = keys.public_line(sdir / "id_ed25519")
    line = (sdir / "known_hosts").read_text().strip()
    assert line == keys.known_hosts_line("127.0.0.1", 2222, host_key)
    assert line.startswith("[127.0.0.1]:2222 ssh-ed25519 ")
    assert (tdir / "authorized_keys").read_text().split()[:2] == client_key.split()[:2]
    # The pinned files are what asyncssh (and so the agents) read.
    asyncssh.read_authorized_keys(str(tdir / "authorized_keys"))
    asyncssh.read_known_hosts(str(sdir / "known_hosts"))

    t_status, s_status = status_dict(tdir, "target"), status_dict(sdir, "source")
    assert t_status["peer"]["fingerprint"] == s_status["own_fingerprint"]
    assert s_status["peer"]["fingerprint"] == t_status["own_fingerprint"]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()

    capsys.readouterr()
    assert cli("source", "pair-status", "--keys-dir", str(sdir), "--json") == 0
    assert json.loads(capsys.readouterr().out)["paired"] is True
    assert cli("target", "unpair", "--keys-dir", str(tdir)) == 0
    assert (tdir / "authorized_keys").read_text() == ""
    assert status_dict(tdir, "target")["paired"] is False


def test_wrong_code_fails_and_pins_nothing(tmp_path):
    tdir, sdir = tmp_path / "target", tmp_path / "source"
    port = free_port()
    target = TargetThread(tdir, "KX7P-22QM", port, expires=3.0)
    target.start()
    wait_listening(port)
    assert source_pair(sdir, port, "KX7P-22QN") == ExitCode.PAIRING
    target.join(15)
    assert target.rc == ExitCode.PAIRING  # the code expired unused
    assert not (sdir / "known_hosts").exists() or (sdir / "known_hosts").read_text() == ""
    assert not (tdir / "authorized_keys").exists()
    assert pins.load(tdir / "peer.json") is None and pins.load(sdir / "peer.json") is None


def test_source_without_target_reports_connection_failure(tmp_path, capsys):
    assert source_pair(tmp_path, free_port(), "KX7P-22QM") == ExitCode.CONNECTION
    err = capsys.readouterr().err
    # the one error format of every entry point: PROG: MESSAGE, one line
    assert err.startswith("vzrep-source: cannot reach the pairing port 127.0.0.1:") and err.count("\n") == 1


HOST = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
CLIENT = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()


async def test_wrong_codes_are_rate_limited_then_the_code_is_burned():
    clock = [0.0]
    gate = CodeGate("KX7P-22QM", now=0.0, max_attempts=3)
    server = PairingServer(gate, HOST, 2222, "t", clock=lambda: clock[0])
    port = await server.start("127.0.0.1", 0)
    with pytest.raises(WrongCode):
        await pair_with_target("127.0.0.1", port, "AAAA-AAAA", CLIENT, "s")
    # Immediately again: refused without a guess, however right the code.
    with pytest.raises(Exception, match="try again"):
        await pair_with_target("127.0.0.1", port, "KX7P-22QM", CLIENT, "s")
    for _ in range(2):
        clock[0] += 60
        with pytest.raises(WrongCode):
            await pair_with_target("127.0.0.1", port, "BBBB-BBBB", CLIENT, "s")
    with pytest.raises(CodeUnavailable):
        await server.wait()
    with pytest.raises(ConnectionFailed):
        await pair_with_target("127.0.0.1", port, "KX7P-22QM", CLIENT, "s")


async def test_expired_code_is_refused():
    clock = [0.0]
    gate = CodeGate("KX7P-22QM", now=0.0, expiry=900)
    server = PairingServer(gate, HOST, 2222, "t", clock=lambda: clock[0])
    port = await server.start("127.0.0.1", 0)
    clock[0] = 901.0
    with pytest.raises(Exception, match="expired"):
        await pair_with_target("127.0.0.1", port, "KX7P-22QM", CLIENT, "s")
    with pytest.raises(CodeUnavailable):
        await server.wait()


async def test_code_is_single_use_and_a_silent_peer_times_out():
    gate = CodeGate("KX7P-22QM", now=time.monotonic())
    server = PairingServer(gate, HOST, 2222, "t", session_timeout=0.5)
    port = await server.start("127.0.0.1", 0)
    _, silent = await asyncio.open_connection("127.0.0.1", port)  # holds the session, sends nothing
    await asyncio.sleep(0.8)
    result = await pair_with_target("127.0.0.1", port, "KX7P-22QM", CLIENT, "s")
    assert result.host_key == HOST
    assert (await server.wait()).client_key == CLIENT
    silent.close()
    assert gate.used
    with pytest.raises(ConnectionFailed):
        await pair_with_target("127.0.0.1", port, "KX7P-22QM", CLIENT, "s")


async def test_a_silent_connection_does_not_hold_up_a_real_pair():
    """A peer that connects and says nothing (a port scan, a stuck client) used to hold the one
    session for 30 s: the real source was told "busy" and gave up."""
    gate = CodeGate("KX7P-22QM", now=time.monotonic())
    server = PairingServer(gate, HOST, 2222, "t", first_message_timeout=1.0)
    port = await server.start("127.0.0.1", 0)
    silent_reader, silent = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.sleep(0.1)  # accepted and waiting for its first message
    t0 = time.monotonic()
    result = await pair_with_target("127.0.0.1", port, "KX7P-22QM", CLIENT, "s", busy_wait=0)
    assert time.monotonic() - t0 < 2.0 and result.host_key == HOST
    assert (await server.wait()).client_key == CLIENT
    assert server.told_busy == 0 and gate.attempts_left == 4  # the silent peer used no attempt
    # and it was closed with the port, without a word
    assert await asyncio.wait_for(silent_reader.read(), 5) == b""
    silent.close()


async def test_silent_peers_are_closed_quickly_and_cost_no_attempt():
    gate = CodeGate("KX7P-22QM", now=time.monotonic())
    server = PairingServer(gate, HOST, 2222, "t", first_message_timeout=0.5)
    port = await server.start("127.0.0.1", 0)
    peers = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
    t0 = time.monotonic()
    for reader, _ in peers:
        assert await asyncio.wait_for(reader.read(), 5) == b""
    assert time.monotonic() - t0 < 2.0
    for _, writer in peers:
        writer.close()
    assert gate.attempts_left == 5 and not gate.exhausted(time.monotonic())
    assert server.failures == ["a peer connected and sent nothing"] * 5
    result = await pair_with_target("127.0.0.1", port, "KX7P-22QM", CLIENT, "s")
    assert result.host_key == HOST
    await server.wait()


async def stalled_attempt(port: int, code: str) -> asyncio.StreamWriter:
    """A peer that starts a real attempt (a hello with the right code) and then goes quiet."""
    from pairing.protocol import SourcePairing

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(SourcePairing(code, CLIENT, "stalled").start())
    await writer.drain()
    await asyncio.wait_for(reader.read(4), 5)  # the target answered: the attempt holds the session
    return writer


async def test_a_source_told_busy_retries_and_succeeds():
    gate = CodeGate("KX7P-22QM", now=time.monotonic())
    server = PairingServer(gate, HOST, 2222, "t", session_timeout=2.0)
    port = await server.start("127.0.0.1", 0)
    stalled = await stalled_attempt(port, "KX7P-22QM")
    t0 = time.monotonic()
    result = await pair_with_target("127.0.0.1", port, "KX7P-22QM", CLIENT, "real", busy_wait=20)
    assert result.host_key == HOST and (await server.wait()).name == "real"
    assert server.told_busy >= 1 and 1.0 < time.monotonic() - t0 < 10
    stalled.close()


async def test_a_source_gives_up_on_busy_only_after_busy_wait_with_exit_10():
    gate = CodeGate("KX7P-22QM", now=time.monotonic())
    server = PairingServer(gate, HOST, 2222, "t", session_timeout=30.0)
    port = await server.start("127.0.0.1", 0)
    stalled = await stalled_attempt(port, "KX7P-22QM")
    t0 = time.monotonic()
    with pytest.raises(PairingBusy, match="pairing another source") as err:
        await pair_with_target("127.0.0.1", port, "KX7P-22QM", CLIENT, "real", busy_wait=2.5)
    assert err.value.exit_code == ExitCode.BUSY == 10
    assert 2.0 <= time.monotonic() - t0 < 6 and server.told_busy >= 2
    stalled.close()
    await server.close()
