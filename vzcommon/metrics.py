"""A Prometheus text endpoint: families rendered in the exposition format, served by a tiny HTTP server.

Both agents expose their figures this way when asked to (``--metrics-listen HOST:PORT``; off by
default, never on the replication port). The server answers ``GET /metrics`` and nothing else, reads
at most 8 KiB of request within 5 s, and closes the connection after each answer: a scraper needs no
more, and nothing else should be able to hold it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_REQUEST = 8192
REQUEST_TIMEOUT = 5.0


@dataclass
class Family:
    """One metric: its name, type (counter, gauge), help line, and samples (labels, value)."""

    name: str
    type: str
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> None:
        self.samples.append((labels, value))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def render(families: Iterable[Family]) -> str:
    out: list[str] = []
    for f in families:
        name = f.name + ("_total" if f.type == "counter" and not f.name.endswith("_total") else "")
        out.append(f"# HELP {name} {f.help}")
        out.append(f"# TYPE {name} {f.type}")
        for labels, value in f.samples:
            text = ",".join(f'{k}="{_label(str(v))}"' for k, v in sorted(labels.items()))
            out.append(f"{name}{{{text}}} {_number(value)}" if text else f"{name} {_number(value)}")
    return "\n".join(out) + "\n"


async def serve_metrics(host: str, port: int, collect: Callable[[], str]) -> tuple[asyncio.Server, int]:
    """Listen on ``host:port``; ``collect`` (run in a thread: it may read files) makes the page."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0]
            if method != "GET":
                status, body, ctype = "405 Method Not Allowed", "only GET\n", "text/plain"
            elif path.split("?", 1)[0] != "/metrics":
                status, body, ctype = "404 Not Found", "see /metrics\n", "text/plain"
            else:
                status, body, ctype = "200 OK", await asyncio.to_thread(collect), CONTENT_TYPE
            data = body.encode()
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + data
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, host, port, limit=MAX_REQUEST)
    return server, server.sockets[0].getsockname()[1]
