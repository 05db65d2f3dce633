"""A pair helper: a source and a target connection wired together in memory (as h11's tests do)."""

from __future__ import annotations

from protocol.connection import NEED_DATA, Connection, SourceConnection, TargetConnection
from protocol.messages import Hello, Message, Welcome
from protocol.version import PROTOCOL_VERSION

BS = 64 * 1024


def hello(block_size: int = BS, vm: str = "vm1") -> Hello:
    return Hello(PROTOCOL_VERSION, "test", vm, ("blake3-256",), ("zstd", "none"), block_size)


def welcome(block_size: int = BS) -> Welcome:
    return Welcome(PROTOCOL_VERSION, "test", "blake3-256", ("zstd",), block_size)


class Pair:
    def __init__(self) -> None:
        self.source = SourceConnection()
        self.target = TargetConnection()

    def deliver(self, sender: Connection, msg: Message) -> list[Message]:
        """Send ``msg`` from ``sender`` and return what the other side receives."""
        receiver = self.target if sender is self.source else self.source
        receiver.receive_data(sender.send(msg))
        out: list[Message] = []
        while (ev := receiver.next_event()) is not NEED_DATA:
            assert isinstance(ev, Message)
            out.append(ev)
        return out

    def handshake(self, block_size: int = BS) -> None:
        assert self.deliver(self.source, hello(block_size)) == [hello(block_size)]
        assert self.deliver(self.target, welcome(block_size)) == [welcome(block_size)]
