"""The target's asyncssh server: the only module on the target that imports asyncssh.

Replication runs in the ``vzrep`` SSH subsystem; shells, commands, PTYs, X11, agent and port
forwarding are all refused. Only keys listed in the authorized keys file get in; password and
keyboard-interactive authentication are off. Only AES-256 ciphers are offered (``tunnel_policy``).
Unauthenticated connections are capped per address and in total (``admission``) and must log in
within :data:`LOGIN_TIMEOUT` seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from vzcommon import tunnel_policy as policy
from vzcommon.errors import InputError
from vzcommon.log import get_logger
from vzcommon.ssh import asyncssh, server_kex_algs

from .admission import Admission

log = get_logger("vzrep.target.server")

#: seconds a connection has to authenticate (asyncssh's login_timeout)
LOGIN_TIMEOUT = 30

Handler = Callable[["Stream", str], Awaitable[None]]


class ByteStream(Protocol):
    """What a target session needs of its transport: the SSH channel here, a memory pipe in tests."""

    async def read(self) -> bytes:
        """Bytes from the source; b"" at the end of the stream (or when the connection broke)."""
        ...

    async def write(self, data: bytes) -> None:
        """Send and wait until the transport took it (flow control)."""
        ...

    async def close(self) -> None: ...


class Stream:
    """The subsystem channel as plain byte reads and writes (a :class:`ByteStream`; the session never
    sees asyncssh)."""

    def __init__(self, reader: Any, writer: Any) -> None:
        self._reader, self._writer = reader, writer

    async def read(self) -> bytes:
        try:
            data: bytes = await self._reader.read(policy.read_size())
        except (asyncssh.Error, OSError, asyncio.IncompleteReadError):
            return b""
        return data

    async def write(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def close(self) -> None:
        try:
            self._writer.write_eof()
        except (asyncssh.Error, OSError):
            pass


class _SubsystemOnly(asyncssh.stream.SSHServerStreamSession):  # type: ignore[type-arg]
    def shell_requested(self) -> bool:
        return False

    def exec_requested(self, command: str) -> bool:
        return False

    def subsystem_requested(self, subsystem: str) -> bool:
        return subsystem == policy.SUBSYSTEM

    def pty_requested(self, *args: Any) -> bool:
        return False


def load_authorized_keys(path: Path) -> Any:
    """The authorized keys as they are now; an empty or missing file lets nobody in (unpaired target)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InputError(f"cannot read the authorized keys file {path}: {exc.strerror}") from None
    if not any(line.strip() and not line.lstrip().startswith("#") for line in text.splitlines()):
        return None
    try:
        return asyncssh.import_authorized_keys(text)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise InputError(f"the authorized keys file {path} is not valid: {exc}") from None


class _Server(asyncssh.SSHServer):
    def __init__(self, handler: Handler, authorized_keys: Path, admission: Admission) -> None:
        self._handler = handler
        self._authorized_keys = authorized_keys
        self._admission = admission
        self._peer = "?"
        self._conn: asyncssh.SSHServerConnection | None = None
        self._closed_by_us = False

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        peer = conn.get_extra_info("peername") or ("?", 0)
        self._peer = f"{peer[0]}:{peer[1]}"
        verdict = self._admission.admit(self, str(peer[0]))
        if not verdict.admitted:
            self._refuse(str(peer[0]), "ssh_connection_refused", verdict.reason)
            return
        if verdict.evict is not None:
            assert isinstance(verdict.evict, _Server)
            verdict.evict._refuse(None, "ssh_connection_dropped", verdict.reason)
        log.info("ssh_connection", peer=self._peer)

    def _refuse(self, address: str | None, event: str, reason: str) -> None:
        """Close this unauthenticated connection at once; log it (rate-limited per address)."""
        address = address or self._admission.address_of(self) or self._peer.rpartition(":")[0]
        self._admission.done(self)
        self._closed_by_us = True
        count = self._admission.refused(address, asyncio.get_running_loop().time())
        if count:
            log.warning(event, address=address, reason=reason, connections=count)
        assert self._conn is not None
        self._conn.abort()

    def begin_auth(self, username: str) -> bool:
        """Re-read the authorized keys for every connection, so pairing takes effect without a restart."""
        assert self._conn is not None
        try:
            keys = load_authorized_keys(self._authorized_keys)
        except InputError as exc:
            log.error("authorized_keys_unreadable", error=str(exc))
            keys = None
        self._conn.set_authorized_keys(keys)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._admission.done(self)
        if exc is not None and not self._closed_by_us:
            log.info("ssh_connection_lost", peer=self._peer, reason=str(exc))

    def auth_completed(self) -> None:
        self._admission.done(self)  # no longer counts against the caps
        log.info("ssh_authenticated", peer=self._peer)

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def session_requested(self) -> _SubsystemOnly:
        peer = self._peer

        async def run(stdin: Any, stdout: Any, stderr: Any) -> None:
            try:
                await self._handler(Stream(stdin, stdout), peer)
            finally:
                stdout.channel.exit(0)

        return _SubsystemOnly(run)


async def start_server(
    handler: Handler,
    host: str,
    port: int,
    host_key: Path,
    authorized_keys: Path,
    *,
    admission: Admission | None = None,
) -> tuple[Any, int]:
    """Listen on ``host:port``; returns the server and the port actually bound.

    ``admission``: the caps on unauthenticated connections (default: ``admission``'s constants)."""
    try:
        keys = [asyncssh.read_private_key(str(host_key))]
    except (OSError, asyncssh.KeyImportError, ValueError) as exc:
        raise InputError(f"cannot load the host key {host_key}: {exc}") from None
    if load_authorized_keys(authorized_keys) is None:
        log.warning(
            "no_authorized_keys", path=str(authorized_keys), hint="pair a source, or add its public key"
        )
    gate = admission or Admission()
    server = await asyncssh.create_server(
        lambda: _Server(handler, authorized_keys, gate),
        host,
        port,
        server_host_keys=keys,
        encryption_algs=list(policy.ENCRYPTION_ALGS),
        mac_algs=list(policy.MAC_ALGS),
        kex_algs=server_kex_algs(),
        compression_algs=list(policy.COMPRESSION_ALGS),
        password_auth=False,
        kbdint_auth=False,
        allow_pty=False,
        x11_forwarding=False,
        agent_forwarding=False,
        encoding=None,
        window=policy.WINDOW,
        max_pktsize=policy.MAX_PKTSIZE,
        login_timeout=LOGIN_TIMEOUT,
        keepalive_interval=policy.KEEPALIVE_INTERVAL,
        keepalive_count_max=policy.KEEPALIVE_COUNT_MAX,
    )
    sockets = server.sockets
    bound = sockets[0].getsockname()[1] if sockets else port
    return server, bound
