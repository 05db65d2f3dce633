"""Drives one replication session on the target: protocol events in, replica writes out.

The session reads bytes from the tunnel, feeds the sans-I/O :class:`TargetConnection`, and turns its
events into storage operations. Blocks are verified (decompressed, length and hash checked) and
written in batches in a worker thread, one batch in flight while the next is received, so receiving
and writing overlap and memory stays bounded. Any failure rolls the pass back (shielded from
cancellation) and is reported to the source as an ERROR with an exit code.

With a vSphere target (``replicas``), the pass writes the replica VM's disks HotAdded to this
appliance (``target_agent.vsphere.job``): they are attached at HELLO, written through the same core
writer (device-backed), rolled back through ``.vzundo`` while still attached, detached at the end, and
a restore point is taken after a commit -- before COMMITTED is sent.

A control session (HELLO mode "control", protocol 5) is no pass: WELCOME, one REQUEST carried out by
``control`` (restore points, failover state, a test failover and its end), one REPLICA_STATE; a
refusal is an ERROR, and counts as no failed pass.

A source that sends nothing, not even a KEEPALIVE (which a live source sends when it has had nothing
else to send for a while), for ``idle_timeout`` seconds (:data:`IDLE_TIMEOUT`) while the target waits
for it, has its pass rolled back: it no longer holds the VM's lock. A source whose host or link died
is dropped sooner or later by the SSH keep-alives too (``tunnel_policy``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zstandard

from protocol.connection import CLOSED, NEED_DATA, TargetConnection
from protocol.errors import LocalProtocolError, ProtocolError
from protocol.framing import MAP_CHUNK_ENTRIES
from protocol.messages import (
    CONTROL,
    Block,
    Codec,
    Commit,
    Committed,
    DiskEnd,
    DiskReady,
    Error,
    Hello,
    MapChunk,
    MapEnd,
    MapStatus,
    Message,
    OpenDisk,
    Request,
    Welcome,
    ZeroRange,
)
from protocol.state import State
from protocol.version import PROTOCOL_VERSION
from vzcommon.blockhash import HASH_LEN, HASH_NAME, hash_block
from vzcommon.errors import (
    ConnectionFailed,
    ExitCode,
    InputError,
    IntegrityError,
    NotSeeded,
    StorageError,
    VzrepError,
    from_peer,
)
from vzcommon.geometry import block_count
from vzcommon.log import get_logger

from .resume import Parked, Suspended
from .server import ByteStream
from .storage import failover as fo
from .storage.failover import refuse_passes
from .storage.mapping import holds_replica
from .storage.points import DEFAULT_RETENTION
from .storage.replica import DiskWriter
from .storage.transaction import VmPass
from .storage.verify import record_verify

if TYPE_CHECKING:  # the vSphere area (and its SOAP library) is imported only when a vCenter is configured
    from .vsphere.job import ReplicaPass, ReplicaSettings

log = get_logger("vzrep.target.session")

AGENT = "vzrep-target/0.1"
SUPPORTED_CODECS = ("zstd", "none")
BATCH_OPS = 64
BATCH_BYTES = 8 << 20
#: seconds the target waits for a byte from the source before it ends the pass (module docstring)
IDLE_TIMEOUT = 60.0


class SourceSilent(ConnectionFailed):
    """The source sent nothing, not even a KEEPALIVE, for the idle timeout; the pass is rolled back."""


Op = tuple[Block | ZeroRange, DiskWriter]


def _apply_batch(ops: list[Op]) -> None:
    """Worker thread: verify each block, then write it through its disk writer (undo first)."""
    dctx = zstandard.ZstdDecompressor()
    touched: list[DiskWriter] = []
    for msg, writer in ops:
        if isinstance(msg, ZeroRange):
            writer.write_zeros(msg.offset, msg.length)
        else:
            data = msg.payload
            if msg.codec == Codec.ZSTD:
                try:
                    data = dctx.decompress(data, max_output_size=msg.length)
                except zstandard.ZstdError as exc:
                    raise IntegrityError(f"block at offset {msg.offset} does not decompress: {exc}") from None
            if len(data) != msg.length or hash_block(data) != msg.hash:
                raise IntegrityError(
                    f"block at offset {msg.offset} of disk {writer.paths.disk!r} does not match its hash;"
                    " nothing was written from it and the pass is rolled back"
                )
            writer.write_block(msg.offset, data, msg.hash)
        if not touched or touched[-1] is not writer:
            touched.append(writer)
    for writer in touched:
        writer.flush()


class TargetSession:
    def __init__(
        self,
        data_dir: Path,
        peer: str,
        *,
        on_pass_end: Callable[[dict[str, Any]], None] | None = None,
        replicas: ReplicaSettings | None = None,
        restore_points: int = DEFAULT_RETENTION,
        mapped: dict[tuple[str, str], Path] | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
        suspended: Suspended | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.idle_timeout = idle_timeout
        self.restore_points = restore_points
        #: (vm, disk) -> an existing file the pass writes in place (``serve --map``): failback onto the
        #: original disks, or a copy made by another tool; hashed where it is, so only differences travel
        self.mapped = mapped or {}
        self.replicas = replicas
        #: where a pass whose connection is lost waits for its source (None: rolled back at once)
        self.suspended = suspended
        self.mode = ""  # HELLO's: "" a pass, "verify" (nothing written), "repair", or "control" (no pass)
        self.vm_name = ""  # HELLO's VM, for the pass-end event (metrics)
        #: verify/repair: per disk, blocks whose bytes differ from the map
        self._map_wrong: dict[int, int] = {}
        self.replica: ReplicaPass | None = None
        self.peer = peer
        self.conn = TargetConnection()
        self.vm_pass: VmPass | None = None
        self.writers: dict[int, DiskWriter] = {}
        self._batch: list[Op] = []
        self._batch_bytes = 0
        self._inflight: asyncio.Future[None] | None = None
        self._stream: ByteStream | None = None
        self._on_pass_end = on_pass_end
        self._t0 = time.monotonic()
        self.received_bytes = 0

    async def run(self, stream: ByteStream) -> None:
        self._stream = stream
        committed = False
        try:
            while not committed:
                data = await self._read(stream)
                self.received_bytes += len(data)
                self.conn.receive_data(data)
                while True:
                    event = self.conn.next_event()
                    if event is NEED_DATA:
                        break
                    if event is CLOSED:
                        raise ConnectionFailed("the source closed the connection before the pass committed")
                    assert isinstance(event, Message)
                    committed = await self._handle(event)
                    if committed:
                        break
        except (VzrepError, OSError, asyncio.CancelledError) as exc:
            await asyncio.shield(self._fail(exc))
            if isinstance(exc, asyncio.CancelledError):
                raise
        except Exception as exc:  # a bug: still roll back and tell the source
            log.exception("session_crashed")
            await asyncio.shield(self._fail(exc))
        finally:
            await stream.close()

    async def _read(self, stream: ByteStream) -> bytes:
        """Read from the tunnel while the writer works; keep the writer fed; fail fast if it fails.

        Adaptive group commit: whenever the writer is idle it gets whatever is queued, so batches
        grow only while the disk is the bottleneck. Nothing from the source for ``idle_timeout``
        seconds raises :class:`SourceSilent`.
        """
        reader: asyncio.Future[bytes] | None = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.idle_timeout
        try:
            while True:
                inflight = self._inflight
                if inflight is not None and inflight.done():
                    self._inflight = None
                    await inflight  # raises the writer's error, if it failed
                    inflight = None
                if inflight is None and self._batch:
                    await self._submit()
                    inflight = self._inflight
                if reader is None:
                    reader = asyncio.ensure_future(stream.read())
                left = deadline - loop.time()
                if left <= 0:
                    raise SourceSilent(
                        f"the source sent nothing for {self.idle_timeout:g} s (not even a keep-alive):"
                        " ending its pass"
                    )
                waiting: set[asyncio.Future[Any]] = {reader} if inflight is None else {reader, inflight}
                await asyncio.wait(waiting, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                if reader.done():
                    return reader.result()
        finally:
            if reader is not None and not reader.done():
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)

    async def _send(self, msg: Message) -> None:
        assert self._stream is not None
        await self._stream.write(self.conn.send(msg))

    async def _handle(self, msg: Message) -> bool:
        if isinstance(msg, Block | ZeroRange):
            if self.mode == "verify":
                raise ProtocolError(f"{msg.TYPE.name} in a verify: a verify writes nothing")
            await self._queue(msg)
        elif isinstance(msg, Hello):
            await self._hello(msg)
        elif isinstance(msg, Request):  # a control session: one request, one answer
            from .control import carry_out

            log.info("request", vm=self.vm_name, peer=self.peer, action=msg.action, point=msg.point)
            await self._send(await carry_out(self.data_dir, self.vm_name, msg, self.replicas))
            return True
        elif isinstance(msg, OpenDisk):
            await self._open_disk(msg)
        elif isinstance(msg, DiskEnd):
            await self._drain()
            self._check_disk_end(msg)
        elif isinstance(msg, Commit):
            if self.mode == "verify":
                await self._end_verify(msg.differing_blocks)
            else:
                await self._commit(msg.failover)
            return True
        elif isinstance(msg, Error):
            raise from_peer(msg.code, msg.message, "the source aborted the pass")
        # KEEPALIVE: its bytes were all it had to bring (``_read``'s idle timer)
        return False

    async def _hello(self, msg: Hello) -> None:
        if HASH_NAME not in msg.hash_algs:
            raise ProtocolError(
                f"the source offers hash algorithms {list(msg.hash_algs)}, this target needs {HASH_NAME}"
            )
        codecs = tuple(c for c in SUPPORTED_CODECS if c in msg.codecs and c != "none")
        self.mode = msg.mode
        self.vm_name = msg.vm
        if msg.mode == CONTROL:  # no pass: the source asks about its replica (``control``)
            await self._send(Welcome(PROTOCOL_VERSION, AGENT, HASH_NAME, codecs, msg.block_size))
            return
        if msg.require_replica:  # the job rule: before anything is created for the VM
            await asyncio.to_thread(self._require_replica, msg.vm)
        if msg.mode in ("verify", "repair") and not await asyncio.to_thread(self._has_replica, msg.vm):
            raise InputError(f"this target holds no replica of VM {msg.vm!r} to {msg.mode}")
        await asyncio.to_thread(refuse_passes, self.data_dir / msg.vm, msg.vm)
        if self.suspended is not None:
            parked = self.suspended.take(msg.vm, msg.resume) if msg.resume else None
            if parked is not None and parked.block_size == msg.block_size and parked.mode == msg.mode:
                await self._resume(parked, codecs)
                return
            if parked is not None:  # the same pass with other settings: it cannot go on
                self.suspended.park(parked)
            await self.suspended.discard(msg.vm)  # a fresh pass: a suspended one is rolled back first
        vm_pass = VmPass(
            self.data_dir,
            msg.vm,
            block_size=msg.block_size,
            peer=self.peer,
            restore_points=msg.restore_points or self.restore_points,
            job=msg.job,
        )
        recovered = await asyncio.to_thread(vm_pass.begin)
        self.vm_pass = vm_pass
        if recovered:
            log.warning("recovered_before_pass", vm=msg.vm, what=recovered)
        if self.replicas is not None:
            from .vsphere.job import ReplicaPass

            settings = self.replicas
            if msg.restore_points:  # the job's retention, for this replica VM's snapshots too
                settings = dataclasses.replace(settings, restore_points=msg.restore_points)
            self.replica = ReplicaPass(settings, msg.vm, vm_pass.vdir)
            await self.replica.start()
        log.info(
            "pass_started", vm=msg.vm, peer=self.peer, pass_id=vm_pass.pass_id, block_size=msg.block_size
        )
        await self._send(Welcome(PROTOCOL_VERSION, AGENT, HASH_NAME, codecs, msg.block_size, vm_pass.pass_id))

    async def _resume(self, parked: Parked, codecs: tuple[str, ...]) -> None:
        """Go on with a suspended pass: its VmPass and writers, and WELCOME saying what it has."""
        self.vm_pass, self.writers = parked.vm_pass, parked.writers
        self._map_wrong = dict(parked.extra.get("map_wrong", {}))
        log.info("pass_resumed", vm=parked.vm, peer=self.peer, pass_id=parked.pass_id)
        welcome = Welcome(
            PROTOCOL_VERSION,
            AGENT,
            HASH_NAME,
            codecs,
            parked.block_size,
            parked.pass_id,
            tuple(parked.resumable),
        )
        await self._send(welcome)

    def _may_park(self, exc: BaseException) -> bool:
        """A lost link in the middle of sending blocks, on a file replica: the pass may wait."""
        return (
            self.suspended is not None
            and isinstance(exc, ConnectionFailed)
            and not isinstance(exc, SourceSilent)
            and not exc.from_peer
            and self.vm_pass is not None
            and self.replica is None
            and self.mode != "verify"
            and self.conn.state in (State.STREAMING, State.IDLE)
        )

    async def _park(self) -> bool:
        """Write what was received, then hand the pass to the suspended set; False if it cannot."""
        assert self.suspended is not None and self.vm_pass is not None
        try:
            await self._drain()  # every block the connection parsed is applied behind its undo record
        except (VzrepError, OSError) as exc:
            log.warning("suspend_failed", error=str(exc))
            return False
        parked = Parked(
            vm=self.vm_pass.vm,
            vm_pass=self.vm_pass,
            writers=self.writers,
            resumable=self.conn.resumable(),
            block_size=self.conn.block_size,
            mode=self.mode,
            extra={"map_wrong": dict(self._map_wrong)},
        )
        self.vm_pass, self.writers = None, {}
        self.suspended.park(parked)
        return True

    def _has_replica(self, vm: str) -> bool:
        return holds_replica(self.data_dir / vm) or any(v == vm for v, _ in self.mapped)

    def _require_replica(self, vm: str) -> None:
        """The job rule (seeding or mapping on): a VM this target holds no replica of is refused."""
        if self._has_replica(vm):
            return
        raise NotSeeded(
            f"VM {vm!r} has no replica on this target and its job has seeding or mapping on: seed it"
            " (`vzrep-target seed`) or map it (`vzrep-target map`) first; nothing was created"
        )

    async def _open_disk(self, msg: OpenDisk) -> None:
        assert self.vm_pass is not None
        kw: dict[str, Any] = {}
        onto = self.mapped.get((self.vm_pass.vm, msg.name))
        if onto is not None:
            kw = {"device": onto, "device_info": {"mapped": True}}
        elif self.replica is not None:
            dev = self.replica.device(msg.name, msg.size)
            kw = {"device": dev.path, "device_info": dev.info, "fresh": dev.fresh}
        kw["rehash"] = self.mode in ("verify", "repair")  # the bytes on disk, not the map, are compared
        writer, result = await asyncio.to_thread(
            self.vm_pass.open_disk, msg.name, msg.size, msg.cached_generation, msg.change_id, **kw
        )
        self.writers[msg.disk_id] = writer
        self._map_wrong[msg.disk_id] = result.map_wrong_blocks
        for note in result.notes:
            log.warning("disk_note", disk=msg.name, note=note)
        await self._send(
            DiskReady(
                msg.disk_id,
                result.generation,
                result.map_status,
                result.stored_change_id,
                result.replica_size,
                tuple(result.notes),
                result.map_rebuilt,
                result.map_wrong_blocks,
            )
        )
        entries = 0
        if result.map_status == MapStatus.SENDING:
            total = block_count(result.replica_size, self.conn.block_size)
            for first in range(0, total, MAP_CHUNK_ENTRIES):
                count = min(MAP_CHUNK_ENTRIES, total - first)
                chunk = await asyncio.to_thread(writer.map_entries, first, count)
                await self._send(MapChunk(msg.disk_id, first, chunk))
                entries += len(chunk) // HASH_LEN
        await self._send(MapEnd(msg.disk_id, result.generation, entries))

    async def _queue(self, msg: Block | ZeroRange) -> None:
        self._batch.append((msg, self.writers[msg.disk_id]))
        self._batch_bytes += len(msg.payload) if isinstance(msg, Block) else 0
        if len(self._batch) >= BATCH_OPS or self._batch_bytes >= BATCH_BYTES:
            await self._submit()

    async def _submit(self) -> None:
        """Hand the batch to the worker thread; wait for the previous one first (one in flight)."""
        if self._inflight is not None:
            inflight, self._inflight = self._inflight, None
            await inflight
        if self._batch:
            ops, self._batch, self._batch_bytes = self._batch, [], 0
            self._inflight = asyncio.get_running_loop().run_in_executor(None, _apply_batch, ops)

    def _check_disk_end(self, msg: DiskEnd) -> None:
        """DISK_END's totals against what the writer applied (the connection checked the frames)."""
        st = self.writers[msg.disk_id].stats
        if (st.blocks_applied, st.zero_range_bytes) != (msg.blocks, msg.zero_bytes):
            raise IntegrityError(
                f"disk {self.writers[msg.disk_id].paths.disk!r}: the source sent {msg.blocks} blocks and"
                f" {msg.zero_bytes} zero bytes, the replica writer applied {st.blocks_applied} and"
                f" {st.zero_range_bytes}; the pass is rolled back"
            )

    async def _drain(self) -> None:
        await self._submit()
        await self._submit()

    async def _commit(self, failover: bool = False) -> None:
        assert self.vm_pass is not None
        await self._drain()
        summary = {
            "result": "ok",
            "bytes_received": self.received_bytes,
            "seconds": round(time.monotonic() - self._t0, 3),
        }
        summary["disks_written"] = {
            w.paths.disk: {
                "blocks_written": w.stats.blocks_written,
                "blocks_unchanged": w.stats.blocks_unchanged,
                "bytes_written": w.stats.bytes_written,
                "bytes_zeroed": w.stats.bytes_zeroed,
                "undo_bytes": w.stats.undo_bytes,
            }
            for w in self.writers.values()
        }
        vm = self.vm_pass.vm
        generation = await asyncio.shield(asyncio.to_thread(self.vm_pass.commit, summary))
        pass_id = self.vm_pass.pass_id
        await asyncio.to_thread(self.vm_pass.close)
        self.vm_pass = None
        if self.replica is not None:  # detach, then the restore point (the data is committed)
            replica, self.replica = self.replica, None
            notes = await replica.finish(pass_id)
            log.info("replica_pass_done", events=replica.events, notes=notes)
        log.info(
            "pass_committed",
            peer=self.peer,
            generation=generation,
            **{k: v for k, v in summary.items() if k != "disks_written"},
        )
        if self._on_pass_end:
            self._on_pass_end({"result": "committed", "generation": generation, "vm": vm})
        failed_over, note = (await self._failover(vm)) if failover else (False, "")
        await self._send(Committed(generation, failed_over, note))

    async def _failover(self, vm: str) -> tuple[bool, str]:
        """The end of a planned failover: fail the replica over to the point just committed."""
        try:
            if self.replicas is not None:
                await self._vsphere_failover(vm)
            else:
                await asyncio.to_thread(fo.start, self.data_dir, vm, None)
        except VzrepError as exc:
            log.error("planned_failover_failed", vm=vm, error=str(exc))
            return False, f"the pass committed but the failover did not: {exc}"
        log.warning("failed_over", vm=vm, planned=True)
        return True, ""

    async def _end_verify(self, differing: int) -> None:
        """A verify's COMMIT: nothing was written; the pass's set-up is undone (no restore point, no
        failure recorded) and the result is kept in the VM's status for ``status`` and the console."""
        assert self.vm_pass is not None
        vm_pass, self.vm_pass = self.vm_pass, None
        wrong = sum(self._map_wrong.values())
        try:
            await asyncio.shield(asyncio.to_thread(vm_pass.discard))
        finally:
            await asyncio.to_thread(vm_pass.close)
        if self.replica is not None:
            replica, self.replica = self.replica, None
            await replica.finish(None)  # detach; no restore point
        ok = differing == 0 and wrong == 0
        await asyncio.to_thread(record_verify, vm_pass.vdir, ok, "source", differing, [], wrong)
        log.info(
            "verify_done", vm=vm_pass.vm, peer=self.peer, differing_blocks=differing, map_wrong_blocks=wrong
        )
        await self._send(Committed("", False, "verified: nothing was written"))

    async def _vsphere_failover(self, vm: str) -> None:
        """The replica VM reverted to the point just taken, powered on, its NICs connected."""
        from vsphere.connection import connect

        from .vsphere import failover as vfo

        assert self.replicas is not None
        client = await connect(self.replicas.connect)
        async with client:
            await vfo.start(client, self.data_dir, vm, None)

    async def _fail(self, exc: BaseException) -> None:
        """Roll back, then tell the source why (best effort: the link may be gone). A pass whose link
        was lost while it sent blocks is suspended instead, for its source to resume (``resume``)."""
        if self._may_park(exc) and await self._park():
            log.warning("pass_interrupted", peer=self.peer, error=str(exc), suspended=True)
            return
        if self.mode == CONTROL:  # a refused request: it changed nothing, and it was no pass
            code, text = _code_and_text(exc)
            log.warning("request_refused", vm=self.vm_name, peer=self.peer, error=text)
            await self._tell(exc, code, text)
            return
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            try:
                await inflight
            except BaseException as late:  # the batch's own failure is part of the same story
                log.info("batch_failed_during_abort", error=str(late))
        rolled = "no pass was started"
        try:
            if self.vm_pass is not None:
                try:
                    rolled = await asyncio.to_thread(self.vm_pass.rollback)
                except VzrepError as late:  # e.g. no space to put the original bytes back
                    rolled = f"the rollback failed and stays pending until the next pass or a restart: {late}"
                    log.error("rollback_failed", error=str(late))
                finally:
                    try:  # close() tries the rollback once more, then releases the VM
                        await asyncio.to_thread(self.vm_pass.close)
                    except VzrepError as late:
                        log.info("rollback_failed_again", error=str(late))
                    self.vm_pass = None
        finally:
            if self.replica is not None:  # rolled back above while attached; now detach
                replica, self.replica = self.replica, None
                try:
                    await replica.finish(None)
                except VzrepError as late:
                    log.error("replica_detach_failed", error=str(late))
        code, text = _code_and_text(exc)
        log.warning("pass_failed", peer=self.peer, error=text, rollback=rolled)
        if self._on_pass_end:
            self._on_pass_end(
                {"result": "rolled-back", "error": text, "vm": self.vm_name, "exit_code": int(code)}
            )
        await self._tell(exc, code, f"{text} [target: {rolled}]")

    async def _tell(self, exc: BaseException, code: int, text: str) -> None:
        """The source's ERROR, best effort. A lost link has nobody to tell; a silent source may still
        be listening."""
        lost = isinstance(exc, ConnectionFailed) and not isinstance(exc, SourceSilent)
        told = lost or (isinstance(exc, VzrepError) and exc.from_peer)
        if self._stream is not None and not told:
            try:
                await asyncio.wait_for(self._send(Error(int(code), text)), 5)
            except (LocalProtocolError, VzrepError, OSError, TimeoutError):
                pass


def _code_and_text(exc: BaseException) -> tuple[int, str]:
    """The exit code and message an ERROR carries for a failure."""
    if isinstance(exc, VzrepError):
        return exc.exit_code, str(exc)
    if isinstance(exc, OSError):
        return StorageError.exit_code, f"target I/O error: {exc}"
    if isinstance(exc, asyncio.CancelledError):
        return ExitCode.CONNECTION, "the target agent is shutting down"
    return ExitCode.INTERNAL, f"internal error on the target: {type(exc).__name__}: {exc}"
