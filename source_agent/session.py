"""Drives one replication pass from the source: handshake, per disk map then blocks, commit.

The session owns the tunnel and the sans-I/O :class:`SourceConnection`. For each disk it asks the
target for the disk's map (or confirms its cached copy), lets the disk's planner pick what to read
(differential, CBT, ABM), then streams the scanner's chunks, one chunk scanned while the previous
is sent. In ``auto`` compression mode, compression is on while the link is the bottleneck (the
scanner had to wait for the sender) and off while the scanner is (compression would only slow it).

While it is the source's turn to speak and nothing was sent for a while (a long run of unchanged
blocks, a slow CBT query, the next disk being prepared), it sends KEEPALIVE: the target ends a pass
whose source stays silent (``target_agent.session.IDLE_TIMEOUT``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.connection import CLOSED, NEED_DATA, SourceConnection
from protocol.errors import ProtocolError
from protocol.messages import (
    Block,
    Codec,
    Commit,
    Committed,
    DiskEnd,
    DiskReady,
    Error,
    Hello,
    KeepAlive,
    MapChunk,
    MapEnd,
    MapStatus,
    Message,
    MsgType,
    OpenDisk,
    Welcome,
    ZeroRange,
)
from protocol.version import PROTOCOL_VERSION
from source_agent.disks.base import DiskReader
from vzcommon.blockhash import HASH_NAME
from vzcommon.errors import BusyError, ConnectionFailed, ExitCode, VzrepError, from_peer
from vzcommon.log import get_logger
from vzcommon.vzmap import MapBuilder

from .bandwidth import Limiter, Limiters, Schedule
from .compression import chunk_mode, pass_mode
from .mapcache import MapCache
from .native import kernel_name
from .native.ahead import HashAhead
from .pipeline import DEFAULT_BLOCK_SIZE, Chunk, DiskScanner, DiskStats, start_ahead
from .planning import Plan, Planner
from .shared_bucket import SharedBucket
from .shared_bucket import check as check_bucket
from .tunnel import ByteTunnel, TargetSpec, open_tunnel

log = get_logger("vzrep.source.session")

AGENT = "vzrep-source/0.1"
#: chunks scanned at once (BLAKE3, zstd and reads release the GIL, so two threads use two cores)
SCAN_THREADS = int(os.environ.get("VZREP_SCAN_THREADS", "2"))
#: wait for the SSH channel to take what was written after about this many bytes
DRAIN_BYTES = 1 << 20
#: a KEEPALIVE goes out after at most two of these without a byte sent (the target waits 60 s)
KEEPALIVE_INTERVAL = 10.0


@dataclass
class DiskJob:
    reader: DiskReader
    #: token stored with the target's map at commit (vSphere changeId), returned next pass
    change_id: str = ""
    #: decides the plan once the target said what it has; None: differential
    planner: Planner | None = None
    #: removes the disk's working files (filters) when the disk is done, whatever happened
    cleanup: Callable[[], None] | None = None
    #: hashing already running for this disk (``start_ahead``); used if the disk is read in full
    ahead: HashAhead | None = None


@dataclass
class PassOptions:
    block_size: int = DEFAULT_BLOCK_SIZE
    compress: str = "auto"  # auto | zstd | none
    #: the final pass of a planned failover: the target fails the replica over once it committed
    failover: bool = False
    state_dir: Path = Path.home() / ".local" / "state" / "vzrep"
    #: the job's id: the target tags the restore point with it ("" for a pass without a job)
    job: str = ""
    #: the job rule (seeding or mapping on): the target refuses a VM it holds no replica of (NotSeeded)
    require_replica: bool = False
    #: restore points the target keeps for this replica; 0: the target's own setting
    restore_points: int = 0
    #: "" a pass; "verify" compares every block with the replica's bytes and writes nothing;
    #: "repair" is a pass against the replica's bytes (not its map). Both read every block.
    mode: str = ""
    #: bandwidth rules of this pass, ``RATE[@DAYS/HH:MM-HH:MM]`` (:mod:`source_agent.bandwidth`), and
    #: the appliance's bucket shared with every other pass process (:mod:`source_agent.shared_bucket`)
    limit: tuple[str, ...] = ()
    shared_limit: Path | None = None
    #: how long to keep trying to reconnect and resume a pass whose link was lost (0: give up at once)
    resume_window: float = 120.0


@dataclass
class PassReport:
    vm: str
    target: str
    generation: str = ""
    ok: bool = False
    error: str = ""
    exit_code: int = 0
    disks: list[DiskStats] = field(default_factory=list)
    seconds: float = 0.0
    wire_bytes_sent: int = 0
    wire_bytes_received: int = 0
    failed_over: bool = False  # the final pass of a planned failover: the replica is failed over
    failover_note: str = ""  # why the failover asked for did not happen
    mode: str = ""  # PassOptions.mode: "", "verify" or "repair"
    resumed: int = 0  # times the link was lost and the pass went on where it stopped
    restarted: int = 0  # times the link was lost and the target had rolled the pass back: begun again
    seconds_limited: float = 0.0  # time the bandwidth limit held the sender back
    scan_kernel: str = field(default_factory=kernel_name)  # native | python (source_agent.native)


Progress = Callable[[str, int, int], None]


class SourceSession:
    def __init__(
        self,
        tunnel: ByteTunnel,
        vm: str,
        options: PassOptions,
        cache: MapCache,
        progress: Progress | None = None,
        reconnect: Callable[[], Awaitable[ByteTunnel]] | None = None,
    ) -> None:
        self.tunnel = tunnel
        self.vm = vm
        self.opts = options
        self.cache = cache
        self.conn = SourceConnection()
        self.progress = progress
        self.received = 0
        self._builders: dict[str, MapBuilder] = {}
        self.reconnect = reconnect
        self.pass_id = ""
        self.sent_before = self.received_before = 0  # bytes of the tunnels a resume left behind
        self._frontier = 0  # end of the last chunk handed to the scanner (its entries are in the map)
        own = Limiter(Schedule.parse(options.limit)) if options.limit else None
        appliance = SharedBucket(options.shared_limit) if options.shared_limit is not None else None
        self.limiter = Limiters(own, appliance)

    async def _send(self, msg: Message) -> int:
        frame = self.conn.send(msg)
        self.tunnel.write(frame)
        return len(frame)

    async def _next(self) -> Message:
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA:
                data = await self.tunnel.read()
                self.received += len(data)
                self.conn.receive_data(data)
                continue
            if event is CLOSED:
                raise ConnectionFailed("the target closed the connection during the pass")
            assert isinstance(event, Message)
            if isinstance(event, Error):
                raise from_peer(event.code, event.message, "target")
            return event

    async def handshake(self, resume: str = "") -> Welcome:
        codecs = ("zstd", "none") if self.opts.compress != "none" else ("none",)
        o = self.opts
        hello = Hello(
            PROTOCOL_VERSION, AGENT, self.vm, (HASH_NAME,), codecs, o.block_size, o.job, o.require_replica,
            o.restore_points, o.mode, resume,
        )  # fmt: skip
        await self._send(hello)
        await self.tunnel.drain()
        welcome = await self._next()
        assert isinstance(welcome, Welcome)
        return welcome

    async def replicate_disk(self, disk_id: int, job: DiskJob) -> DiskStats:
        """Open the disk on the target, then send what differs; the disk's stats."""
        ctx = await self._open_disk(disk_id, job)
        await self._send_disk(ctx)
        return ctx.st

    async def _open_disk(self, disk_id: int, job: DiskJob) -> _DiskCtx:
        """OPEN_DISK, DISK_READY and the map: what the target has of the disk, and the plan."""
        reader, bs = job.reader, self.opts.block_size
        st = DiskStats(name=reader.name, size=reader.size)
        ctx = _DiskCtx(disk_id, job, st, time.monotonic())
        cached = self.cache.cached(reader.name, bs, reader.size)
        await self._send(
            OpenDisk(
                disk_id, reader.name, reader.size, cached.header.generation if cached else "", job.change_id
            )
        )
        await self.tunnel.drain()
        ready = await self._next()
        assert isinstance(ready, DiskReady)
        st.notes.extend(ready.notes)
        st.map_status = MapStatus(ready.map_status).name.lower()
        st.map_rebuilt = ready.map_rebuilt
        st.map_wrong_blocks = ready.map_wrong_blocks
        base = cached if ready.map_status == MapStatus.CACHED else None
        builder = await asyncio.to_thread(self.cache.builder, reader.name, bs, reader.size, base)
        if cached:
            cached.close()
        self._builders[reader.name] = builder  # aborted by run() unless the pass commits
        while True:
            msg = await self._next()
            if isinstance(msg, MapChunk):
                await asyncio.to_thread(builder.set_range, msg.first_block, msg.hashes)
                st.map_bytes_received += len(msg.hashes)
            elif isinstance(msg, MapEnd):
                break
        if self.opts.mode:  # verify and repair distrust CBT and ABM too: every block is compared
            plan = Plan(mode="differential", reason=f"{self.opts.mode}: every block is compared")
        else:
            plan = await job.planner(ready) if job.planner else Plan()
        st.mode, st.reason = plan.mode, plan.reason
        ctx.builder, ctx.plan, ctx.ready = builder, plan, ready
        return ctx

    async def _send_disk(self, ctx: _DiskCtx, from_offset: int = 0) -> None:
        """The disk's blocks (from ``from_offset``: a resumed disk) and DISK_END."""
        job, st, bs = ctx.job, ctx.st, self.opts.block_size
        reader = job.reader
        assert ctx.builder is not None and ctx.plan is not None and ctx.ready is not None
        try:
            # Hash-ahead (native.ahead) for an incremental pass of a disk read in full: a filtered
            # read skips blocks, and a first pass sends every block (it would read them twice).
            if from_offset == 0 and ctx.plan.filter is None and ctx.ready.map_status != MapStatus.EMPTY:
                job.ahead = job.ahead or start_ahead(reader, bs)
            elif job.ahead is not None:
                await asyncio.to_thread(job.ahead.close)
                job.ahead = None
            if job.ahead is not None:
                job.ahead.set_active(job.ahead.threads)
            scanner = DiskScanner(disk_id := ctx.disk_id, reader, bs, ctx.builder, st, ctx.plan.filter, job.ahead)
            st.hashed_ahead = scanner.ahead is not None
            await self._stream(scanner, st, from_offset)
            # a disk truncated under us must not reach the replica as zeros
            await asyncio.to_thread(reader.check_size)
            # The scanner's own totals: the connection checks them against the frames it framed
            # (a chunk lost between scanner and tunnel fails here), the target against what it got.
            sent = (0, 0) if self.opts.mode == "verify" else (st.blocks_changed, st.zero_bytes_sent)
            frame_len = await self._send(DiskEnd(disk_id, *sent))
            st.wire_bytes += frame_len
            await self.tunnel.drain()
        finally:
            if job.ahead is not None:
                await asyncio.to_thread(job.ahead.close)
                log.debug("hash_ahead_done", disk=reader.name, waited_s=round(job.ahead.waited, 3))
                job.ahead = None
        st.seconds = time.monotonic() - ctx.t0
        ctx.ended = True
        if job.cleanup:
            await asyncio.to_thread(job.cleanup)

    async def _stream(self, scanner: DiskScanner, st: DiskStats, from_offset: int = 0) -> None:
        """Scan in worker threads and send on the loop, keeping chunks in order.

        ``SCAN_THREADS`` chunks are scanned at once (each into its own reused buffer) while earlier
        chunks are sent, one frame per write. Compression per chunk: ``zstd`` always, ``none`` never, ``auto`` when a probe block
        of the chunk compresses well or when the sender is behind (the link is the bottleneck).
        """
        queue: asyncio.Queue[Chunk | None] = asyncio.Queue(maxsize=2)
        # a verify sends no block: compressing them would only cost time
        base = pass_mode("none" if self.opts.mode == "verify" else self.opts.compress, self.conn.codecs)
        loop = asyncio.get_running_loop()

        async def produce() -> None:
            buffers = [scanner.new_buffer() for _ in range(SCAN_THREADS)]
            inflight: deque[tuple[asyncio.Future[Chunk], bytearray]] = deque()
            try:
                for first in scanner.chunks():
                    if (first + scanner.chunk_blocks) * scanner.bs <= from_offset:
                        continue  # a resumed disk: the target has every block of this chunk
                    self._frontier = max(self._frontier, (first + scanner.chunk_blocks) * scanner.bs)
                    mode = chunk_mode(base, sender_behind=queue.full())
                    buf = buffers.pop()
                    inflight.append((loop.run_in_executor(None, scanner.scan, first, mode, buf), buf))
                    if len(inflight) >= SCAN_THREADS:
                        fut, done_buf = inflight.popleft()
                        chunk = await fut
                        buffers.append(done_buf)
                        await queue.put(chunk)
                while inflight:
                    fut, _ = inflight.popleft()
                    await queue.put(await fut)
                await queue.put(None)
            finally:
                if inflight:  # threads cannot be cancelled: let them finish before buffers go away
                    await asyncio.gather(*(f for f, _ in inflight), return_exceptions=True)

        verify = self.opts.mode == "verify"

        async def consume() -> None:
            unflushed = 0
            while (chunk := await queue.get()) is not None:
                if from_offset and chunk.messages and chunk.messages[0].offset < from_offset:
                    _drop_before(chunk, from_offset)  # the resumed chunk: the target has its start
                st.add(chunk.stats)
                if verify:  # what a pass would send is what differs: noted, not sent
                    _note_ranges(st.differing, chunk.messages)
                    if self.progress:
                        self.progress(scanner.reader.name, chunk.end, scanner.size)
                    continue
                for msg in chunk.messages:
                    frame = self.conn.send(msg)
                    if self.limiter:  # held back here, before the bytes reach the SSH channel
                        await self.limiter.take(len(frame))
                    self.tunnel.write(frame)  # one frame per write measured faster than coalesced runs
                    st.wire_bytes += len(frame)
                    unflushed += len(frame)
                    if unflushed >= DRAIN_BYTES:
                        await self.tunnel.drain()
                        unflushed = 0
                if self.progress:
                    self.progress(scanner.reader.name, chunk.end, scanner.size)
            await self.tunnel.drain()

        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(produce())
                tg.create_task(consume())
        except BaseExceptionGroup as group:
            raise _first_error(group) from None

    async def _keep_alive(self) -> None:
        """Send KEEPALIVE when a whole interval went by without a byte sent while it is our turn."""
        sent = self.tunnel.sent
        while True:
            await asyncio.sleep(KEEPALIVE_INTERVAL)
            if self.tunnel.sent == sent and self.conn.can_send(MsgType.KEEPALIVE):
                try:
                    self.tunnel.write(self.conn.send(KeepAlive()))
                except (VzrepError, ProtocolError):  # the pass is failing: its own path reports why
                    return
            sent = self.tunnel.sent

    async def run(self, jobs: list[DiskJob], report: PassReport) -> None:
        keepalive = asyncio.ensure_future(self._keep_alive())  # owned: cancelled and reaped below
        try:
            welcome = await self.handshake()
            self.pass_id = welcome.pass_id
            ctxs: dict[int, _DiskCtx] = {}
            resume_from: dict[int, int] = {}  # disk id -> offset the target has everything before
            while True:
                try:
                    for disk_id, job in enumerate(jobs):
                        ctx = ctxs.get(disk_id)
                        if ctx is not None and ctx.ended:
                            continue
                        if ctx is None:
                            ctx = ctxs[disk_id] = await self._open_disk(disk_id, job)
                        self._frontier = resume_from.get(disk_id, 0)
                        await self._send_disk(ctx, resume_from.pop(disk_id, 0))
                    report.disks = [ctxs[i].st for i in range(len(jobs))]
                    differing = sum(d.blocks_changed + d.zero_blocks_sent for d in report.disks)
                    commit = Commit(len(jobs), self.opts.failover, differing if self.opts.mode == "verify" else 0)
                    await self._send(commit)
                    await self.tunnel.drain()
                    # A link lost while waiting for COMMITTED: the target holds the pass suspended (it
                    # did not get all of it: resumed), or it committed or rolled back (a fresh pass:
                    # sent again, at worst one pass more).
                    done = await self._next()
                    break
                except ConnectionFailed as exc:
                    resume_from = await self._resume(exc, ctxs, report)
            assert isinstance(done, Committed)
            report.generation = done.generation
            report.failed_over, report.failover_note = done.failed_over, done.note
            for name, builder in self._builders.items():
                if self.opts.mode == "verify":  # nothing changed on the target: the cached map stays
                    builder.abort()
                else:
                    await asyncio.to_thread(self.cache.commit, name, builder, done.generation)
            self._builders.clear()
            report.seconds_limited = round(self.limiter.waited, 3)
        finally:
            keepalive.cancel()
            await asyncio.gather(keepalive, return_exceptions=True)
            for builder in self._builders.values():
                builder.abort()

    async def _resume(
        self, exc: ConnectionFailed, ctxs: dict[int, _DiskCtx], report: PassReport
    ) -> dict[int, int]:
        """The link was lost while sending: reconnect and go on with the same pass, from where the
        target says it is (WELCOME ``resumed``); re-raise when that cannot be."""
        if exc.from_peer or self.reconnect is None or not self.pass_id or self.opts.resume_window <= 0:
            raise exc
        reason = await self.peer_reason()
        if reason is not None:  # the target said why and rolled back: nothing to resume
            raise reason from None
        deadline = time.monotonic() + self.opts.resume_window
        delay = 1.0
        while True:
            log.warning("pass_resuming", vm=self.vm, pass_id=self.pass_id, error=str(exc))
            try:
                await self.tunnel.close()
                self.sent_before += self.tunnel.sent
                self.received_before += self.received
                self.received = 0
                self.tunnel = await self.reconnect()
                self.conn = SourceConnection()
                welcome = await self.handshake(resume=self.pass_id)
                break
            except (ConnectionFailed, BusyError) as again:
                # Busy: the target has not noticed the old link is gone yet, so it still holds the pass
                if (again.from_peer and not isinstance(again, BusyError)) or time.monotonic() + delay > deadline:
                    raise exc from again
                await asyncio.sleep(delay)
                delay = min(delay * 2, 15.0)
        if welcome.pass_id != self.pass_id:
            # The target no longer holds the pass (it restarted, or its window ended): it rolled it
            # back, and this connection is a new pass; every disk is opened and sent again.
            log.warning("pass_restarted", vm=self.vm, old=self.pass_id, new=welcome.pass_id, error=str(exc))
            self.pass_id = welcome.pass_id
            for builder in self._builders.values():
                builder.abort()
            self._builders.clear()
            ctxs.clear()
            report.restarted += 1
            return {}
        report.resumed += 1
        resume_from: dict[int, int] = {}
        known = {d[0] for d in welcome.resumed}
        for disk_id, _name, _size, blocks, zero_bytes, next_offset, ended in welcome.resumed:
            ctx = ctxs.get(disk_id)
            if ctx is None:
                raise ConnectionFailed(f"the target resumed disk {disk_id}, which this pass never opened")
            if ended:
                ctx.ended = True
                continue
            ctx.ended = False
            # What the target applied is the disk's total so far; the rest is sent again from there.
            ctx.st.blocks_changed, ctx.st.zero_bytes_sent = blocks, zero_bytes
            assert ctx.builder is not None
            bs = self.opts.block_size
            first, last = next_offset // bs, -(-self._frontier // bs)
            if last > first:  # scanned (so entered in the source's map) but perhaps never received
                await asyncio.to_thread(ctx.builder.fill, first, last - first, _UNSENT)
            resume_from[disk_id] = next_offset
        for disk_id in [d for d in ctxs if d not in known]:
            del ctxs[disk_id]  # opened here but never on the target: opened again
        return resume_from

    async def peer_reason(self, wait: float = 2.0) -> VzrepError | None:
        """After the connection broke under us: the target's ERROR, if it sent one before closing.

        A target that fails a pass sends ERROR and closes; a source still writing blocks then sees
        the broken channel first. The reason is in the bytes already received (or about to be).
        """
        deadline = time.monotonic() + wait
        try:
            while True:
                event = self.conn.next_event()
                if isinstance(event, Error):
                    return from_peer(event.code, event.message, "target")
                if event is CLOSED:
                    return None
                if event is NEED_DATA:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    data = await asyncio.wait_for(self.tunnel.read(), left)
                    self.received += len(data)
                    self.conn.receive_data(data)
        except (VzrepError, OSError, TimeoutError):
            return None

    async def abort(self, exc: BaseException) -> None:
        """Tell the target why we give up, so it rolls back at once (best effort)."""
        if isinstance(exc, VzrepError) and exc.from_peer:
            return  # the target told us: it is rolling back already
        if isinstance(exc, VzrepError):
            code = exc.exit_code
        elif isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
            code = ExitCode.INTERRUPTED  # Ctrl-C: asyncio cancels the pass before it raises
        else:
            code = ExitCode.INTERNAL
        try:
            self.tunnel.write(self.conn.send(Error(int(code), str(exc) or type(exc).__name__)))
            await asyncio.wait_for(self.tunnel.drain(), 5)
        except (VzrepError, ProtocolError, OSError, TimeoutError):
            pass


#: a map entry no block hashes to: blocks marked with it are sent again after a resume
_UNSENT = b"\xff" * 32


@dataclass
class _DiskCtx:
    """One disk of a pass, kept across a resume: its stats, the source's map, the plan."""

    disk_id: int
    job: DiskJob
    st: DiskStats
    t0: float
    builder: MapBuilder | None = None
    plan: Plan | None = None
    ready: DiskReady | None = None
    ended: bool = False


def _drop_before(chunk: Chunk, offset: int) -> None:
    """A resumed chunk: what the target already has (before ``offset``) is not sent again."""
    kept: list[Any] = []
    st = chunk.stats
    for m in chunk.messages:
        end = m.offset + m.length
        if end <= offset:
            if isinstance(m, Block):
                st.blocks_changed -= 1
                st.payload_raw -= m.length
                st.payload_wire -= len(m.payload)
                st.blocks_compressed -= m.codec != Codec.NONE
            else:
                st.zero_bytes_sent -= m.length
            continue
        if m.offset < offset:  # a ZERO_RANGE across the resume point: only its rest
            st.zero_bytes_sent -= offset - m.offset
            m = ZeroRange(m.disk_id, offset, end - offset)
        kept.append(m)
    chunk.messages = kept


def _note_ranges(ranges: list[tuple[int, int]], messages: list[Any]) -> None:
    """Each BLOCK or ZERO_RANGE a pass would send, merged into runs of [offset, length]."""
    for m in messages:
        if ranges and ranges[-1][0] + ranges[-1][1] == m.offset:
            ranges[-1] = (ranges[-1][0], ranges[-1][1] + m.length)
        else:
            ranges.append((m.offset, m.length))


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The error a user should see from a task group: ours first, then anything else."""
    flat: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        else:
            flat.append(exc)
    return next((e for e in flat if isinstance(e, VzrepError)), flat[0])


async def run_pass(
    target: TargetSpec, vm: str, jobs: list[DiskJob], options: PassOptions, progress: Progress | None = None
) -> PassReport:
    """One pass: connect, replicate every disk, commit. Raises VzrepError on failure."""
    t0 = time.monotonic()
    if options.shared_limit is not None:
        check_bucket(options.shared_limit)
    tunnel = await open_tunnel(target)

    async def reconnect() -> ByteTunnel:
        return await open_tunnel(target)

    return await run_pass_over(tunnel, target.label, vm, jobs, options, progress, started=t0, reconnect=reconnect)


async def run_pass_over(
    tunnel: ByteTunnel,
    label: str,
    vm: str,
    jobs: list[DiskJob],
    options: PassOptions,
    progress: Progress | None = None,
    *,
    started: float | None = None,
    reconnect: Callable[[], Awaitable[ByteTunnel]] | None = None,
) -> PassReport:
    """One pass over an open tunnel (SSH in the agent, :mod:`tests.support.memory` in fast tests);
    ``reconnect`` opens another if the link is lost, to resume the pass."""
    report = PassReport(vm=vm, target=label, mode=options.mode)
    t0 = time.monotonic() if started is None else started
    session = SourceSession(tunnel, vm, options, MapCache(options.state_dir, label, vm), progress, reconnect)
    try:
        await session.run(jobs, report)
        report.ok = True
    except BaseException as exc:
        if isinstance(exc, ConnectionFailed) and not exc.from_peer:
            reason = await session.peer_reason()
            if reason is not None:
                raise reason from None
        await asyncio.shield(session.abort(exc))
        raise
    finally:
        report.seconds = time.monotonic() - t0
        report.wire_bytes_sent = session.sent_before + session.tunnel.sent
        report.wire_bytes_received = session.received_before + session.received
        await session.tunnel.close()
        log.info(
            "pass_finished",
            vm=vm,
            ok=report.ok,
            seconds=round(report.seconds, 3),
            generation=report.generation,
        )
    return report


def report_dict(report: PassReport) -> dict[str, Any]:
    from dataclasses import asdict

    out = asdict(report)
    for d, st in zip(out["disks"], report.disks, strict=True):
        d["compression_ratio"] = round(st.compression_ratio, 3)
        d["throughput_mb_s"] = round(st.bytes_scanned / st.seconds / 1e6, 1) if st.seconds else 0.0
    out["seconds"] = round(report.seconds, 3)
    return out
