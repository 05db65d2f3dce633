"""The asyncio loop around :mod:`pairing.protocol`: a one-shot pairing server and its client.

The server takes one session at a time (others are told it is busy), admits each through the
:class:`~pairing.protocol.CodeGate`, and closes its port as soon as a source has paired or the code
can no longer be used. Every session has a deadline, so a silent peer cannot hold the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from pairing.protocol import (
    NEED_DATA,
    CodeGate,
    CodeUnavailable,
    FrameReader,
    SourcePaired,
    SourcePairing,
    TargetPaired,
    TargetPairing,
    WrongCode,
    error_message,
)
from vzcommon.errors import ConnectionFailed, PairingError

SESSION_TIMEOUT = 30.0
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
    ) -> None:
        self.gate, self.clock, self.session_timeout = gate, clock, session_timeout
        self._offer = (host_key, agent_port, name)
        self._busy = asyncio.Lock()
        self._done: asyncio.Future[TargetPaired] = asyncio.get_running_loop().create_future()
        self._server: asyncio.Server | None = None
        self.failures: list[str] = []
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
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self._busy.locked() or self._done.done():
                writer.write(error_message("busy: another source is pairing"))
                return
            async with self._busy:
                await asyncio.wait_for(self._run(reader, writer), timeout=self.session_timeout)
        except (TimeoutError, PairingError, OSError) as exc:
            self.failures.append(str(exc) or type(exc).__name__)
        finally:
            with contextlib.suppress(OSError):
                await writer.drain()
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            if not self._done.done() and self.gate.exhausted(self.clock()):
                self._done.set_exception(CodeUnavailable("the pairing code has no attempts left"))

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frames = FrameReader()
        side = TargetPairing(self.gate.password, *self._offer)
        first = True
        while True:
            msg = await _read_message(reader, frames)
            if first:
                # The attempt counts from the source's hello: that is when the target answers with
                # something a guess can be tested against. Probes and silent peers cost nothing.
                first = False
                try:
                    self.gate.admit(self.clock())
                except CodeUnavailable as exc:
                    writer.write(error_message(str(exc)))
                    raise
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


async def pair_with_target(
    host: str, port: int, code: str, client_key: str, name: str, session_timeout: float = SESSION_TIMEOUT
) -> SourcePaired:
    """Run the source side against ``host:port``; raises PairingError or ConnectionFailed."""
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
