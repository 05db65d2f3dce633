"""A TCP proxy on 127.0.0.1 that can cut the connection after N bytes from the client."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


@dataclass
class CutProxy:
    upstream_port: int
    cut_after: int | None = None  # client->server bytes to forward before cutting both sides
    #: after this many client bytes, hold back the newest byte and cut once the client goes quiet:
    #: the cut lands inside the last packet the client sent before waiting for an answer
    cut_when_quiet_after: int | None = None
    quiet: float = 0.5
    port: int = 0
    c2s: int = 0
    s2c: int = 0
    #: client->server byte offset when each server->client chunk was forwarded
    s2c_marks: list[int] = field(default_factory=list)
    cut: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> CutProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def rearm(self) -> None:
        """After a cut: the connections that follow pass through untouched (a link that came back)."""
        self.cut_after = self.cut_when_quiet_after = None
        self.cut = asyncio.Event()

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*self._handlers, return_exceptions=True)  # each closes its sockets
        await self._server.wait_closed()

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        assert me is not None
        self._handlers.add(me)
        me.add_done_callback(self._handlers.discard)
        try:
            sr, sw = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            cw.close()
            return

        async def c2s_quiet(arm: int) -> None:
            held = b""
            while True:
                try:
                    data = await asyncio.wait_for(cr.read(65536), self.quiet if self.c2s >= arm else None)
                except TimeoutError:
                    self.cut.set()  # the held byte never reaches the server
                    return
                if not data:
                    return
                data = held + data
                if self.c2s + len(data) >= arm:
                    data, held = data[:-1], data[-1:]
                else:
                    held = b""
                sw.write(data)
                self.c2s += len(data)
                await sw.drain()

        async def c2s() -> None:
            if self.cut_when_quiet_after is not None:
                await c2s_quiet(self.cut_when_quiet_after)
                return
            while data := await cr.read(65536):
                if self.cut_after is not None and self.c2s + len(data) >= self.cut_after:
                    keep = self.cut_after - self.c2s
                    sw.write(data[:keep])
                    self.c2s += keep
                    with contextlib.suppress(ConnectionError):
                        await sw.drain()
                    self.cut.set()
                    break
                sw.write(data)
                self.c2s += len(data)
                await sw.drain()

        async def s2c() -> None:
            while data := await sr.read(65536):
                if self.cut.is_set():
                    break
                self.s2c_marks.append(self.c2s)
                cw.write(data)
                self.s2c += len(data)
                await cw.drain()

        tasks = [asyncio.ensure_future(c2s()), asyncio.ensure_future(s2c())]
        for t in tasks:
            self._tasks.add(t)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for w in (cw, sw):
                w.close()
            for w in (cw, sw):
                with contextlib.suppress(Exception):
                    await w.wait_closed()
            for t in tasks:
                self._tasks.discard(t)


@dataclass
class FaultProxy:
    """A TCP proxy on 127.0.0.1 for the fault soak (bench/soak): one link, re-armed before each pass.

    ``arm`` sets the faults of the next connection: a cut after N bytes in either direction (the
    held-back rest never arrives; both sides are closed, with a reset when ``reset``), and a slow
    link (``rate`` bytes/s and ``delay`` seconds per chunk, in user space: no netem here). Chunks are
    at most 16 KiB, so a cut lands within a chunk and the rate is smooth. ``upstream_port`` may be
    changed between connections (a restarted target)."""

    upstream_port: int
    port: int = 0
    cut_c2s: int | None = None
    cut_s2c: int | None = None
    reset: bool = False
    rate: float | None = None
    delay: float = 0.0
    c2s: int = 0
    s2c: int = 0
    cut: bool = False
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    CHUNK = 16 * 1024

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def arm(
        self,
        *,
        cut_c2s: int | None = None,
        cut_s2c: int | None = None,
        reset: bool = False,
        rate: float | None = None,
        delay: float = 0.0,
    ) -> None:
        self.cut_c2s, self.cut_s2c, self.reset, self.rate, self.delay = cut_c2s, cut_s2c, reset, rate, delay
        self.c2s = self.s2c = 0
        self.cut = False
        self.connected = asyncio.Event()
        self.closed = asyncio.Event()

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _pump(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, c2s: bool) -> None:
        while data := await r.read(self.CHUNK):
            done = self.c2s if c2s else self.s2c
            limit = self.cut_c2s if c2s else self.cut_s2c
            if limit is not None and done + len(data) >= limit:
                data = data[: max(0, limit - done)]
                self.cut = True
            if data:
                if self.delay:
                    await asyncio.sleep(self.delay)
                w.write(data)
                if c2s:
                    self.c2s += len(data)
                else:
                    self.s2c += len(data)
                with contextlib.suppress(ConnectionError):
                    await w.drain()
                if w.is_closing():
                    return  # the other side is gone
                if self.rate:
                    await asyncio.sleep(len(data) / self.rate)
            if self.cut:
                return

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        closed = self.closed
        self.connected.set()
        try:
            sr, sw = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            cw.close()
            closed.set()
            return
        tasks = [
            asyncio.ensure_future(self._pump(cr, sw, True)),
            asyncio.ensure_future(self._pump(sr, cw, False)),
        ]
        self._tasks.update(tasks)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for w in (cw, sw):
                if self.cut and self.reset:
                    w.transport.abort()
                else:
                    w.close()
            self._tasks.difference_update(tasks)
            closed.set()
