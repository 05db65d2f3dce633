"""The source's asyncssh client: the only source module that imports asyncssh.

It pins the target's host key (known_hosts), authenticates with one key only (no passwords, no
agent, no ~/.ssh/config), offers only AES-256 ciphers, and opens the ``vzrep`` subsystem. asyncssh's
exceptions become our errors here, each with one line that says what to do.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from vzcommon import tunnel_policy as policy
from vzcommon.errors import AuthError, CipherError, ConnectionFailed, HostKeyError, InputError, VzrepError
from vzcommon.ssh import asyncssh, kex_algs

from .mapcache import target_label


@dataclass(frozen=True)
class TargetSpec:
    host: str
    port: int
    identity: Path
    known_hosts: Path
    user: str = "vzrep"
    connect_timeout: float = 30.0

    @property
    def label(self) -> str:
        return target_label(self.host, self.port)


class ByteTunnel(Protocol):
    """What a source session needs of its transport: the SSH channel here, a memory pipe in tests."""

    sent: int

    async def read(self) -> bytes:
        """Bytes from the target; b"" at the end of the stream."""
        ...

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None:
        """Wait until the transport has taken what was written (flow control)."""
        ...

    async def close(self) -> None: ...


class Tunnel:
    """An open subsystem channel: bytes in, bytes out (a :class:`ByteTunnel`)."""

    def __init__(self, conn: Any, writer: Any, reader: Any) -> None:
        self._conn, self._writer, self._reader = conn, writer, reader
        self.sent = 0

    async def read(self) -> bytes:
        try:
            data: bytes = await self._reader.read(policy.read_size())
        except (asyncssh.Error, OSError) as exc:
            raise ConnectionFailed(f"lost the connection to the target: {exc}") from None
        return data

    def write(self, data: bytes) -> None:
        try:
            self._writer.write(data)
        except (asyncssh.Error, OSError, BrokenPipeError) as exc:
            raise ConnectionFailed(f"lost the connection to the target: {exc}") from None
        self.sent += len(data)

    async def drain(self) -> None:
        try:
            await self._writer.drain()
        except (asyncssh.Error, OSError) as exc:
            raise ConnectionFailed(f"lost the connection to the target: {exc}") from None

    async def close(self) -> None:
        try:
            self._writer.write_eof()
        except (asyncssh.Error, OSError):
            pass
        self._conn.close()
        try:
            await asyncio.wait_for(self._conn.wait_closed(), 5)
        except (TimeoutError, asyncssh.Error, OSError):
            pass


def _translate(exc: BaseException, spec: TargetSpec) -> VzrepError:
    text = str(exc)
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return HostKeyError(
            f"the host key of target {spec.label} is not the one pinned in {spec.known_hosts}:"
            " refusing to connect (re-pair the appliances if the target was really reinstalled)"
        )
    if isinstance(exc, asyncssh.PermissionDenied):
        return AuthError(
            f"target {spec.label} refused our key {spec.identity}: add its public key"
            f" ({spec.identity}.pub) to the target's authorized keys file"
        )
    if "key exchange" in text.lower():
        return CipherError(
            f"target {spec.label} offers no key exchange in common with ours ({', '.join(kex_algs())}):"
            f" {text}"
        )
    if isinstance(exc, asyncssh.KeyExchangeFailed) or "algorithm" in text.lower():
        return CipherError(
            f"target {spec.label} offers no AES-256 cipher (aes256-gcm@openssh.com or aes256-ctr with an"
            f" ETM SHA-2 MAC) or no common key exchange: {text}"
        )
    if isinstance(exc, asyncssh.ChannelOpenError):
        return ConnectionFailed(
            f"target {spec.label} refused the vzrep subsystem: is it a vzrep target agent? ({text})"
        )
    if isinstance(exc, TimeoutError):
        return ConnectionFailed(f"timed out connecting to target {spec.label}")
    if isinstance(exc, OSError):
        return ConnectionFailed(f"cannot connect to target {spec.label}: {exc.strerror or exc}")
    return ConnectionFailed(f"SSH connection to target {spec.label} failed: {text}")


async def check_target(spec: TargetSpec) -> None:
    """Connect, verify the pinned host key, authenticate, and close: no subsystem is opened, so the
    target starts nothing (``vzrep-source job check``)."""
    conn = await _connect(spec)
    conn.close()
    try:
        await asyncio.wait_for(conn.wait_closed(), 5)
    except (TimeoutError, asyncssh.Error, OSError):
        pass


async def open_tunnel(spec: TargetSpec) -> Tunnel:
    conn = await _connect(spec)
    try:
        writer, reader, _ = await conn.open_session(
            subsystem=policy.SUBSYSTEM, encoding=None, window=policy.WINDOW, max_pktsize=policy.MAX_PKTSIZE
        )
    except (asyncssh.Error, OSError) as exc:
        conn.close()
        raise _translate(exc, spec) from None
    return Tunnel(conn, writer, reader)


async def _connect(spec: TargetSpec) -> Any:
    try:
        client_key = asyncssh.read_private_key(str(spec.identity))
    except (OSError, asyncssh.KeyImportError) as exc:
        raise InputError(f"cannot read the identity key {spec.identity}: {exc}") from None
    if not spec.known_hosts.exists():
        raise HostKeyError(
            f"known hosts file {spec.known_hosts} does not exist: pin the target's host key first"
        )
    try:
        conn = await asyncio.wait_for(
            asyncssh.connect(
                spec.host,
                spec.port,
                username=spec.user,
                client_keys=[client_key],
                known_hosts=str(spec.known_hosts),
                agent_path=None,
                config=[],
                password_auth=False,
                kbdint_auth=False,
                preferred_auth=["publickey"],
                encryption_algs=list(policy.ENCRYPTION_ALGS),
                mac_algs=list(policy.MAC_ALGS),
                kex_algs=kex_algs(),
                compression_algs=list(policy.COMPRESSION_ALGS),
                keepalive_interval=policy.KEEPALIVE_INTERVAL,
                keepalive_count_max=policy.KEEPALIVE_COUNT_MAX,
            ),
            spec.connect_timeout,
        )
    except (asyncssh.Error, OSError, TimeoutError) as exc:
        raise _translate(exc, spec) from None
    return conn
