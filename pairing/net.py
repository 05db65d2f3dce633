"""The asyncio loop around :mod:`pairing.protocol`: a one-shot pairing server and its client.

The server accepts several connections at once (up to :data:`MAX_CONNECTIONS`); each must send its
first message within :data:`FIRST_MESSAGE_TIMEOUT` seconds, so silent peers cost nothing and block
nobody. A first message starts an attempt through the :class:`~pairing.protocol.CodeGate`; one
attempt runs at a time (for :data:`SESSION_TIMEOUT` at most), and a source arriving meanwhile is told
"busy", which its client answers by trying again every :data:`BUSY_RETRY` seconds until the code's
life is over (:func:`pair_with_target`). The port closes as soon as a source has paired or the code
can no longer be used.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from pairing.protocol import (
    DEFAULT_EXPIRY,
    NEED_DATA,
    CodeGate,
    CodeUnavailable,
    FrameReader,
    PairingBusy,
    SourcePaired,
    SourcePairing,
    TargetPaired,
    TargetPairing,
    WrongCode,
    busy_message,
    error_message,
)
from vzcommon.errors import ConnectionFailed, PairingError

#: the whole exchange, from the source's first message
SESSION_TIMEOUT = 30.0
#: a connection that has sent nothing after this long is closed (it never used an attempt)
FIRST_MESSAGE_TIMEOUT = 5.0
#: connections open at once; more are told "busy" and closed
MAX_CONNECTIONS = 32
#: seconds between a source's tries while the target is busy
BUSY_RETRY = 1.0
Clock = Callable[[], float]


async def _read_message(reader: asyncio.StreamReader, frames: FrameReader) -> dict[str, object]:
    while True:
        msg = frames.next_message()
        if msg is not NEED_DATA:
            assert isinstance(msg, dict)
            return msg
        data = await reader.read(4096)
        if not data:
            raise PairingError("the peer closed the pairing connection")
        frames.receive_data(data)


class PairingServer:
    """Listens until one source pairs (``result``) or the code is used up or expires."""

    def __init__(
        self,
        gate: CodeGate,
        host_key: str,
        agent_port: int,
        name: str,
        clock: Clock = time.monotonic,
        session_timeout: float = SESSION_TIMEOUT,
        first_message_timeout: float = FIRST_MESSAGE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.gate, self.clock, self.session_timeout = gate, clock, session_timeout
        self.first_message_timeout, self.max_connections = first_message_timeout, max_connections
        self._offer = (host_key, agent_port, name)
        self._busy = asyncio.Lock()  # held by the one attempt in progress
        self._sessions: dict[asyncio.Task[None], asyncio.StreamWriter] = {}  # owned: ended by close()
        self._done: asyncio.Future[TargetPaired] = asyncio.get_running_loop().create_future()
        self._server: asyncio.Server | None = None
        self.failures: list[str] = []
        self.told_busy = 0  # sources told to try again
        self.peer_address: str | None = None

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._session, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def wait(self) -> TargetPaired:
        """The paired source; raises CodeUnavailable when the code expired or ran out of attempts."""
        assert self._server is not None
        try:
            remaining = self.gate.expires_at - self.clock()
            return await asyncio.wait_for(asyncio.shield(self._done), timeout=max(remaining, 0.0))
        except TimeoutError:
            raise CodeUnavailable("the pairing code expired before a source paired") from None
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop listening and end the sessions still open (say, a silent peer's): their connections are
        closed, so each ends as a lost connection does, and they are awaited."""
        if self._server is not None:
            self._server.close()
        sessions = dict(self._sessions)
        for writer in sessions.values():
            writer.close()
        if sessions:
            await asyncio.gather(*sessions, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions[task] = writer
        try:
            if self._done.done():  # paired, or the code ran out: the port is closing
                over = self._done.exception()
                writer.write(error_message(str(over) if over else "this pairing code was already used"))
                return
            if len(self._sessions) > self.max_connections:
                self.told_busy += 1
                writer.write(busy_message("too many connections to the pairing port, try again"))
                return
            frames = FrameReader()
            try:
                first = await asyncio.wait_for(_read_message(reader, frames), timeout=self.first_message_timeout)
            except TimeoutError:
                raise PairingError("a peer connected and sent nothing") from None
            if self._busy.locked():
                self.told_busy += 1
                writer.write(busy_message("pairing another source, try again"))
                return
            async with self._busy:
                await asyncio.wait_for(self._run(first, frames, reader, writer), timeout=self.session_timeout)
        except (TimeoutError, PairingError, OSError) as exc:
            self.failures.append(str(exc) or type(exc).__name__)
        finally:
            del self._sessions[task]
            with contextlib.suppress(OSError):
                await writer.drain()
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            if not self._done.done() and self.gate.exhausted(self.clock()):
                self._done.set_exception(CodeUnavailable("the pairing code has no attempts left"))

    async def _run(
        self,
        msg: dict[str, object],
        frames: FrameReader,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        side = TargetPairing(self.gate.password, *self._offer)
        # The attempt counts from the source's hello: that is when the target answers with something
        # a guess can be tested against. Probes and silent peers cost nothing.
        try:
            self.gate.admit(self.clock())
        except CodeUnavailable as exc:
            writer.write(error_message(str(exc)))
            raise
        while True:
            try:
                reply, result = side.handle(msg)
            except WrongCode:
                writer.write(error_message("wrong code"))
                raise
            if reply is not None:
                writer.write(reply)
                await writer.drain()
            if result is not None:
                self.gate.succeeded()
                peer = writer.get_extra_info("peername")
                self.peer_address = str(peer[0]) if isinstance(peer, tuple) else None
                self._done.set_result(result)
                return
            msg = await _read_message(reader, frames)


async def pair_with_target(
    host: str,
    port: int,
    code: str,
    client_key: str,
    name: str,
    session_timeout: float = SESSION_TIMEOUT,
    busy_wait: float = DEFAULT_EXPIRY,
) -> SourcePaired:
    """Run the source side against ``host:port``; raises PairingError or ConnectionFailed.

    While the target says it is busy (pairing another source), try again every :data:`BUSY_RETRY`
    seconds for up to ``busy_wait`` seconds (by default a code's whole life), then raise
    :class:`~pairing.protocol.PairingBusy`."""
    give_up = time.monotonic() + busy_wait
    while True:
        try:
            return await _pair_once(host, port, code, client_key, name, session_timeout)
        except PairingBusy as exc:
            if time.monotonic() + BUSY_RETRY > give_up:
                raise PairingBusy(f"{exc}; still busy after {busy_wait:g} s of trying") from None
        await asyncio.sleep(BUSY_RETRY)


async def _pair_once(
    host: str, port: int, code: str, client_key: str, name: str, session_timeout: float
) -> SourcePaired:
    side = SourcePairing(code, client_key, name)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=session_timeout)
    except (OSError, TimeoutError) as exc:
        raise ConnectionFailed(
            f"cannot reach the pairing port {host}:{port}: {exc or 'timed out'}; "
            "is the target showing a pairing code?"
        ) from None
    try:
        async with asyncio.timeout(session_timeout):
            writer.write(side.start())
            frames = FrameReader()
            while True:
                msg = await _read_message(reader, frames)
                reply, result = side.handle(msg)
                if reply is not None:
                    writer.write(reply)
                    await writer.drain()
                if result is not None:
                    assert isinstance(result, SourcePaired)
                    return result
    except TimeoutError:
        raise ConnectionFailed(f"the pairing with {host}:{port} timed out") from None
    except OSError as exc:
        raise ConnectionFailed(f"the pairing connection to {host}:{port} failed: {exc}") from None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
