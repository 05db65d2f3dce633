"""Hostile or broken input reaches a real target over SSH: each gets a clear error, nothing is written."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest

from protocol import codec, framing
from protocol.messages import MsgType
from protocol.version import PROTOCOL_VERSION
from source_agent.tunnel import TargetSpec, Tunnel, open_tunnel
from tests.support.agents import Keys, Target, replicate, snapshot, wait_idle
from tests.support.openssh import Sshd
from tests.support.tools import BS, make_image
from vzcommon import tunnel_policy
from vzcommon.errors import AuthError, CipherError, ConnectionFailed, ExitCode, HostKeyError
from vzcommon.keys import generate, known_hosts_line
from vzcommon.ssh import asyncssh

MiB = 1 << 20
SIZE = 4 * MiB


def frame(msg_type: int, fields: list) -> bytes:
    return framing.encode_frame(msg_type, codec.pack(fields))


def hello_fields(vm: str = "victim", version: int = PROTOCOL_VERSION) -> list:
    return [version, "hostile", vm, ["blake3-256"], ["none"], BS]


async def read_frames(tunnel: Tunnel, until_error: bool = True) -> list[tuple[int, list]]:
    """Read frames from the target until it sends ERROR or closes."""
    buf = b""
    out: list[tuple[int, list]] = []
    while True:
        data = await asyncio.wait_for(tunnel.read(), 15)
        if not data:
            return out
        buf += data
        while len(buf) >= framing.HEADER_SIZE:
            mtype, length, _ = framing.parse_header(buf[: framing.HEADER_SIZE], framing.ABSOLUTE_MAX_BODY)
            if len(buf) < framing.HEADER_SIZE + length:
                break
            out.append((mtype, codec.unpack(buf[framing.HEADER_SIZE : framing.HEADER_SIZE + length])))
            buf = buf[framing.HEADER_SIZE + length :]
            if mtype == MsgType.ERROR and until_error:
                return out


async def opened(target: Target) -> Tunnel:
    """A session that shook hands and opened disk 'd' of the existing replica."""
    tunnel = await open_tunnel(target.spec())
    tunnel.write(frame(MsgType.HELLO, hello_fields()))
    tunnel.write(frame(MsgType.OPEN_DISK, [0, "d", SIZE, "", ""]))
    buf = b""
    while MsgType.MAP_END not in [t for t, _ in _parse_all(buf)]:
        data = await asyncio.wait_for(tunnel.read(), 15)
        assert data, f"target closed the session: {_parse_all(buf)}"
        buf += data
    return tunnel


def _parse_all(buf: bytes) -> list[tuple[int, list]]:
    out = []
    while len(buf) >= framing.HEADER_SIZE:
        mtype, length, _ = framing.parse_header(buf[: framing.HEADER_SIZE], framing.ABSOLUTE_MAX_BODY)
        if len(buf) < framing.HEADER_SIZE + length:
            break
        out.append((mtype, codec.unpack(buf[framing.HEADER_SIZE : framing.HEADER_SIZE + length])))
        buf = buf[framing.HEADER_SIZE + length :]
    return out


@pytest.fixture
async def victim(target: Target, tmp_path: Path) -> dict[str, str]:
    src = make_image(tmp_path / "d.img", SIZE, data_blocks=20)
    await replicate(target.spec(), "victim", [src], tmp_path / "state")
    return snapshot(target.vm("victim"))


def _valid_block(offset: int = 0) -> list:
    data = b"\x42" * BS
    from vzcommon.blockhash import hash_block

    return [0, offset, BS, hash_block(data), 0, data]


BAD_AFTER_OPEN = [
    (
        "malformed frame (bad CRC)",
        lambda: frame(MsgType.BLOCK, _valid_block())[:-1] + b"\x00",
        "CRC",
        ExitCode.PROTOCOL,
    ),
    (
        "oversized frame",
        lambda: framing.HEADER.pack(framing.MAGIC, 1, MsgType.BLOCK, 64 << 20, 0),
        "exceeds the limit",
        ExitCode.PROTOCOL,
    ),
    ("unknown message type", lambda: frame(99, [1, 2]), "unknown message type 99", ExitCode.PROTOCOL),
    (
        "unknown disk",
        lambda: frame(MsgType.BLOCK, [7, *_valid_block()[1:]]),
        "not the disk open",
        ExitCode.PROTOCOL,
    ),
    (
        "offset beyond the end",
        lambda: frame(MsgType.BLOCK, _valid_block(SIZE + BS)),
        "beyond the end",
        ExitCode.PROTOCOL,
    ),
    (
        "hash mismatch",
        lambda: frame(MsgType.BLOCK, [*_valid_block(3 * BS)[:3], b"\x00" * 31 + b"\x01", 0, b"\x42" * BS]),
        "does not match its hash",
        ExitCode.INTEGRITY,
    ),
    (
        "message out of order",
        lambda: frame(MsgType.HELLO, hello_fields()),
        "not allowed in state streaming",
        ExitCode.PROTOCOL,
    ),
]


@pytest.mark.parametrize("what, make, match, code", BAD_AFTER_OPEN, ids=[b[0] for b in BAD_AFTER_OPEN])
async def test_bad_frame_after_open(target: Target, victim: dict[str, str], what, make, match, code) -> None:
    tunnel = await opened(target)
    try:
        # A few valid blocks first, so that there is something to roll back.
        for i in range(3):
            tunnel.write(frame(MsgType.BLOCK, _valid_block(i * BS)))
        tunnel.write(make())
        replies = await read_frames(tunnel)
    finally:
        await tunnel.close()
    errors = [f for t, f in replies if t == MsgType.ERROR]
    assert errors, f"{what}: no ERROR from the target"
    assert match in errors[0][1] and errors[0][0] == code, errors
    await wait_idle(target.vm("victim"))
    assert snapshot(target.vm("victim")) == victim


async def test_wrong_protocol_version(target: Target, victim: dict[str, str]) -> None:
    tunnel = await open_tunnel(target.spec())
    try:
        tunnel.write(frame(MsgType.HELLO, hello_fields(version=PROTOCOL_VERSION + 1)))
        replies = await read_frames(tunnel)
    finally:
        await tunnel.close()
    (code, message) = next(f for t, f in replies if t == MsgType.ERROR)
    assert code == ExitCode.PROTOCOL
    assert f"protocol version {PROTOCOL_VERSION + 1}" in message and f"version {PROTOCOL_VERSION}" in message
    assert snapshot(target.vm("victim")) == victim


async def test_vm_name_with_dot_dot(target: Target, tmp_path: Path) -> None:
    tunnel = await open_tunnel(target.spec())
    try:
        tunnel.write(frame(MsgType.HELLO, hello_fields(vm="../escape")))
        replies = await read_frames(tunnel)
    finally:
        await tunnel.close()
    (code, message) = next(f for t, f in replies if t == MsgType.ERROR)
    assert "invalid VM name" in message and code == ExitCode.PROTOCOL
    assert not (target.data_dir.parent / "escape").exists()
    assert not target.data_dir.exists() or not any(target.data_dir.iterdir())


async def test_wrong_client_key(target: Target, victim: dict[str, str], tmp_path: Path) -> None:
    generate(tmp_path / "stranger")
    spec = target.spec()
    spec = TargetSpec(spec.host, spec.port, tmp_path / "stranger", spec.known_hosts)
    with pytest.raises(AuthError, match="refused our key"):
        await open_tunnel(spec)
    assert snapshot(target.vm("victim")) == victim


async def test_wrong_host_key(target: Target, victim: dict[str, str], tmp_path: Path) -> None:
    pub, _ = generate(tmp_path / "impostor")
    kh = tmp_path / "kh"
    kh.write_text(known_hosts_line("127.0.0.1", target.port, pub) + "\n")
    spec = target.spec()
    with pytest.raises(HostKeyError, match="not the one pinned"):
        await open_tunnel(TargetSpec(spec.host, spec.port, spec.identity, kh))
    assert snapshot(target.vm("victim")) == victim


async def connect_offering(target: Target, **algs: list[str]) -> None:
    """A client with our key that offers only ``algs``; the target must refuse it in key exchange."""
    spec = target.spec()
    await asyncssh.connect(
        "127.0.0.1",
        target.port,
        username="x",
        client_keys=[str(spec.identity)],
        known_hosts=str(spec.known_hosts),
        config=[],
        agent_path=None,
        **algs,
    )


async def test_client_offering_only_aes128_is_refused(target: Target, victim: dict[str, str]) -> None:
    with pytest.raises(asyncssh.KeyExchangeFailed):
        await connect_offering(target, encryption_algs=["aes128-ctr", "aes128-gcm@openssh.com"])
    assert snapshot(target.vm("victim")) == victim


async def test_target_offering_only_aes128_is_refused(tmp_path: Path, session_keys: Keys) -> None:
    """The source refuses a server (here OpenSSH's sshd) that offers no AES-256 cipher."""
    with Sshd(tmp_path / "sshd", ciphers="aes128-ctr").start(
        authorized_keys=session_keys.authorized_keys
    ) as sshd:
        kh = tmp_path / "kh"
        kh.write_text(
            known_hosts_line("127.0.0.1", sshd.port, sshd.host_key.with_suffix(".pub").read_text().strip())
            + "\n"
        )
        # sshd closes at once when negotiation fails; if the client's next bytes are still unread
        # then, the kernel resets the connection and the client may lose sshd's KEXINIT with it
        # ("Connection lost", exit 4). That race is sshd's; a few attempts see the negotiation.
        for _ in range(5):
            try:
                await open_tunnel(TargetSpec("127.0.0.1", sshd.port, session_keys.client_key, kh))
            except CipherError as exc:
                assert "no AES-256 cipher" in str(exc) and exc.exit_code == ExitCode.CIPHER
                break
            except ConnectionFailed as exc:
                assert "Connection lost" in str(exc)
        else:
            raise AssertionError("five connections to an AES-128-only sshd never reached the negotiation")


def test_policy_offers_only_aes256() -> None:
    assert all(alg.startswith("aes256-") for alg in tunnel_policy.ENCRYPTION_ALGS)
    assert all("etm" in mac and "sha2" in mac for mac in tunnel_policy.MAC_ALGS)


#: what the tunnel offers for key exchange with the locked cryptography (ssh-audit findings: no NIST
#: curves, no DH groups; the target offers no Curve25519 beside the post-quantum hybrid)
KEX_OFFER = ["mlkem768x25519-sha256", "curve25519-sha256", "curve25519-sha256@libssh.org"]
TARGET_KEX_OFFER = ["mlkem768x25519-sha256"]


async def read_kexinit(reader: asyncio.StreamReader) -> list[str]:
    """The peer's key exchange list from its (unencrypted) SSH_MSG_KEXINIT, as ssh-audit reads it;
    without the markers that name no algorithm (ext-info-*, kex-strict-*)."""
    while not (line := await asyncio.wait_for(reader.readline(), 15)).startswith(b"SSH-"):
        assert line, "the peer closed before its version line"
    (length,) = struct.unpack(">I", await reader.readexactly(4))
    packet = await reader.readexactly(length)
    payload = packet[1:]  # padding length, then the payload (the padding is at the end)
    assert payload[0] == 20, f"expected KEXINIT, got message {payload[0]}"
    (n,) = struct.unpack(">I", payload[17:21])  # after the type byte and the 16-byte cookie
    names = payload[21 : 21 + n].decode().split(",")
    return [a for a in names if not a.startswith(("ext-info-", "kex-strict-"))]


async def test_target_offers_only_the_post_quantum_key_exchange(target: Target) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
    try:
        writer.write(b"SSH-2.0-audit\r\n")
        assert await read_kexinit(reader) == TARGET_KEX_OFFER
    finally:
        writer.close()


async def test_source_offers_the_post_quantum_key_exchange_then_only_curve25519(session_keys: Keys) -> None:
    offered: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()

    async def audit(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-audit\r\n")
        try:
            offered.set_result(await read_kexinit(reader))
        except Exception as exc:  # reported by the assertion below
            offered.set_exception(exc)
        writer.close()

    server = await asyncio.start_server(audit, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        spec = TargetSpec(
            "127.0.0.1", port, session_keys.client_key, session_keys.known_hosts(port, "kh-audit")
        )
        with pytest.raises(ConnectionFailed):
            await open_tunnel(spec)
        assert await asyncio.wait_for(offered, 15) == KEX_OFFER
    finally:
        server.close()
        await server.wait_closed()


async def test_client_offering_only_nistp256_key_exchange_is_refused(
    target: Target, victim: dict[str, str]
) -> None:
    with pytest.raises(asyncssh.KeyExchangeFailed, match="key exchange"):
        await connect_offering(target, kex_algs=["ecdh-sha2-nistp256"])
    assert snapshot(target.vm("victim")) == victim
