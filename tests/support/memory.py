"""An in-memory transport pair: both sessions driven together in one event loop, without SSH.

:func:`memory_pair` gives the source a :class:`~source_agent.tunnel.ByteTunnel` and the target a
:class:`~target_agent.server.ByteStream`, joined by two bounded pipes. A pipe holds at most ``limit``
bytes: a writer's ``drain`` waits until the reader has taken enough, as an SSH channel window makes
it wait, so flow control is exercised too. ``cut()`` breaks the link both ways, as a lost connection
does. The SSH tests stay; these are the fast ones.
"""

from __future__ import annotations

import asyncio
from collections import deque

from vzcommon.errors import ConnectionFailed

LIMIT = 4 << 20


class Pipe:
    """Bytes one way: chunks in order, at most ``limit`` bytes held, an end of stream."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self._chunks: deque[bytes] = deque()
        self._held = 0
        self._eof = False
        self._broken = False
        self._readable = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def write(self, data: bytes) -> None:
        if self._broken or self._eof:
            raise ConnectionFailed("lost the connection to the peer (memory pipe closed)")
        if data:
            self._chunks.append(bytes(data))
            self._held += len(data)
            self._readable.set()
            if self._held >= self.limit:
                self._room.clear()

    async def drain(self) -> None:
        await self._room.wait()
        if self._broken:
            raise ConnectionFailed("lost the connection to the peer (memory pipe cut)")

    async def read(self) -> bytes:
        while not self._chunks and not self._eof:
            self._readable.clear()
            await self._readable.wait()
        if not self._chunks:
            return b""
        data = self._chunks.popleft()
        self._held -= len(data)
        if self._held < self.limit:
            self._room.set()
        return data

    def close(self) -> None:
        """End of stream: the reader gets what was written, then b""."""
        self._eof = True
        self._readable.set()
        self._room.set()

    def cut(self) -> None:
        """A broken link, or a reader that is gone: what was not read yet is lost, writers fail."""
        self._broken = True
        self._chunks.clear()
        self._held = 0
        self.close()


class SourceEnd:
    """The source's side (a ByteTunnel)."""

    def __init__(self, outgoing: Pipe, incoming: Pipe) -> None:
        self._out, self._in = outgoing, incoming
        self.sent = 0

    async def read(self) -> bytes:
        return await self._in.read()

    def write(self, data: bytes) -> None:
        self._out.write(data)
        self.sent += len(data)

    async def drain(self) -> None:
        await self._out.drain()

    async def close(self) -> None:
        """End of our stream; we read no more (as an SSH channel closes both ways)."""
        self._out.close()
        self._in.cut()


class TargetEnd:
    """The target's side (a ByteStream)."""

    def __init__(self, outgoing: Pipe, incoming: Pipe) -> None:
        self._out, self._in = outgoing, incoming

    async def read(self) -> bytes:
        return await self._in.read()

    async def write(self, data: bytes) -> None:
        self._out.write(data)
        await self._out.drain()

    async def close(self) -> None:
        """The session is over: end of our stream, and a writer still sending to us fails."""
        self._out.close()
        self._in.cut()


class MemoryLink:
    def __init__(self, limit: int = LIMIT) -> None:
        self.to_target, self.to_source = Pipe(limit), Pipe(limit)
        self.source = SourceEnd(self.to_target, self.to_source)
        self.target = TargetEnd(self.to_source, self.to_target)

    def cut(self) -> None:
        self.to_target.cut()
        self.to_source.cut()


def memory_pair(limit: int = LIMIT) -> MemoryLink:
    return MemoryLink(limit)
