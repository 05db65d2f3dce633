"""A control session from the source (protocol 5): ask the target about a VM's replica -- its restore
points and failover state -- or start or end a TEST failover there.

It goes over the pass's own tunnel, host-key pin and client key (``tunnel``), so a source may ask only
what its key lets it replicate; nothing is replicated. One request a session: HELLO (mode "control"),
WELCOME, REQUEST, REPLICA_STATE. A refusal is the target's ERROR, rebuilt as the class of its code.
"""

from __future__ import annotations

from typing import Any

from protocol.connection import CLOSED, NEED_DATA, SourceConnection
from protocol.errors import LocalProtocolError, ProtocolError
from protocol.framing import MIN_BLOCK_SIZE
from protocol.messages import CONTROL, Error, Hello, Message, ReplicaState, Request, Welcome
from protocol.version import PROTOCOL_VERSION
from vzcommon.blockhash import HASH_NAME
from vzcommon.errors import ConnectionFailed, InputError, from_peer

from .tunnel import ByteTunnel, TargetSpec, open_tunnel

AGENT = "vzrep-source/0.1"


def request(action: str, point: str = "") -> Request:
    """The request, or an InputError a user can act on (a point id that cannot be one)."""
    try:
        return Request(action, point)
    except LocalProtocolError as exc:
        raise InputError(f"--point {point!r}: {exc}") from None


async def ask(spec: TargetSpec, vm: str, req: Request) -> ReplicaState:
    """Open a tunnel to the target, carry one request, close; the replica's state afterwards."""
    tunnel = await open_tunnel(spec)
    try:
        return await converse(tunnel, vm, req, spec.label)
    finally:
        await tunnel.close()


async def converse(tunnel: ByteTunnel, vm: str, req: Request, label: str) -> ReplicaState:
    conn = SourceConnection()
    hello = Hello(PROTOCOL_VERSION, AGENT, vm, (HASH_NAME,), ("none",), MIN_BLOCK_SIZE, mode=CONTROL)
    tunnel.write(conn.send(hello))
    await tunnel.drain()
    try:
        welcome = await _next(conn, tunnel)
    except ProtocolError as exc:
        if not exc.from_peer:
            raise
        raise type(exc)(
            f"target {label} does not take requests about replicas (an agent older than protocol"
            f" {PROTOCOL_VERSION}? upgrade vzrep-target): {exc}"
        ) from None
    assert isinstance(welcome, Welcome)
    tunnel.write(conn.send(req))
    await tunnel.drain()
    answer = await _next(conn, tunnel)
    assert isinstance(answer, ReplicaState)
    return answer


async def _next(conn: SourceConnection, tunnel: ByteTunnel) -> Message:
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            conn.receive_data(await tunnel.read())
            continue
        if event is CLOSED:
            raise ConnectionFailed("the target closed the connection before it answered")
        assert isinstance(event, Message)
        if isinstance(event, Error):
            raise from_peer(event.code, event.message, "target")
        return event


def as_json(vm: str, target: str, st: ReplicaState) -> dict[str, Any]:
    """The answer as ``points --json`` and ``test-failover --json`` print it."""
    keys = ("id", "time", "origin", "job", "live", "held_bytes")
    failover = None
    if st.failover_state:
        failover = {
            "state": st.failover_state,
            "point": st.failover_point,
            "since": st.failover_since,
            "detail": st.failover_detail,
        }
    return {
        "vm": vm,
        "target": target,
        "ok": True,
        "kind": st.kind,
        "points": [dict(zip(keys, row, strict=True)) for row in st.points],
        "older_points": st.older,
        "failover": failover,
        "pass_running": st.pass_running,
        "note": st.note,
    }


def as_text(vm: str, target: str, st: ReplicaState) -> str:
    lines = [st.note] if st.note else []
    kind = "a vSphere replica VM" if st.kind == "vsphere" else "a file replica"
    n = len(st.points) + st.older
    lines.append(f"VM {vm!r} on target {target} ({kind}): {n} restore point{'s' * (n != 1)}, newest first")
    for point_id, time, origin, job, live, held in st.points:
        tag = "live replica" if live else (f"{held / 2**20:.1f} MiB of increments" if held else "")
        job_part = f"  job {job}" if job else ""
        lines.append(f"  {point_id}  {time}  {origin}{job_part}{f'  [{tag}]' if tag else ''}")
    if st.older:
        lines.append(f"  ... and {st.older} older")
    if st.failover_state:
        lines.append(
            f"failover: {st.failover_state} to restore point {st.failover_point} since {st.failover_since}"
            + (f": {st.failover_detail}" if st.failover_detail else "")
        )
    else:
        lines.append("failover: none")
    if st.pass_running:
        lines.append("a pass of this VM is running on the target")
    return "\n".join(lines)
