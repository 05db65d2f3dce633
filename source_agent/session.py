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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.connection import CLOSED, NEED_DATA, SourceConnection
from protocol.errors import ProtocolError
from protocol.messages import (
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
)
from protocol.version import PROTOCOL_VERSION
from source_agent.disks.base import DiskReader
from vzcommon.blockhash import HASH_NAME
from vzcommon.errors import ConnectionFailed, ExitCode, VzrepError, from_peer
from vzcommon.log import get_logger
from vzcommon.vzmap import MapBuilder

from .bandwidth import Limiter, Limiters, Schedule, shared
from .compression import chunk_mode, pass_mode
from .mapcache import MapCache
from .native import kernel_name
from .native.ahead import HashAhead
from .pipeline import DEFAULT_BLOCK_SIZE, Chunk, DiskScanner, DiskStats, start_ahead
from .planning import Plan, Planner
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
    #: bandwidth rules of this pass, and of the appliance (shared by every pass of the process):
    #: ``RATE[@DAYS/HH:MM-HH:MM]`` (:mod:`source_agent.bandwidth`)
    limit: tuple[str, ...] = ()
    appliance_limit: tuple[str, ...] = ()


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
    seconds_limited: float = 0.0  # time the bandwidth limit held the sender back
    scan_kernel: str = field(default_factory=kernel_name)  # native | python (source_agent.native)


Progress = Callable[[str, int, int], None]


class SourceSession:
    def __init__(
        self, tunnel: ByteTunnel, vm: str, options: PassOptions, cache: MapCache, progress: Progress | None = None
    ) -> None:
        self.tunnel = tunnel
        self.vm = vm
        self.opts = options
        self.cache = cache
        self.conn = SourceConnection()
        self.progress = progress
        self.received = 0
        self._builders: dict[str, MapBuilder] = {}
        own = Limiter(Schedule.parse(options.limit)) if options.limit else None
        self.limiter = Limiters(own, shared(options.appliance_limit) if options.appliance_limit else None)

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

    async def handshake(self) -> Welcome:
        codecs = ("zstd", "none") if self.opts.compress != "none" else ("none",)
        o = self.opts
        hello = Hello(
            PROTOCOL_VERSION, AGENT, self.vm, (HASH_NAME,), codecs, o.block_size, o.job, o.require_replica,
            o.restore_points, o.mode,
        )  # fmt: skip
        await self._send(hello)
        await self.tunnel.drain()
        welcome = await self._next()
        assert isinstance(welcome, Welcome)
        return welcome

    async def replicate_disk(self, disk_id: int, job: DiskJob) -> DiskStats:
        reader, bs = job.reader, self.opts.block_size
        st = DiskStats(name=reader.name, size=reader.size)
        t0 = time.monotonic()
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
        try:
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
            # Hash-ahead (native.ahead) for an incremental pass of a disk read in full: a filtered
            # read skips blocks, and a first pass sends every block (it would read them twice).
            if plan.filter is None and ready.map_status != MapStatus.EMPTY:
                job.ahead = job.ahead or start_ahead(reader, bs)
            elif job.ahead is not None:
                await asyncio.to_thread(job.ahead.close)
                job.ahead = None
            if job.ahead is not None:
                job.ahead.set_active(job.ahead.threads)
            scanner = DiskScanner(disk_id, reader, bs, builder, st, plan.filter, job.ahead)
            st.hashed_ahead = scanner.ahead is not None
            await self._stream(scanner, st)
            # a disk truncated under us must not reach the replica as zeros
            await asyncio.to_thread(reader.check_size)
            # The scanner's own totals: the connection checks them against the frames it framed
            # (a chunk lost between scanner and tunnel fails here), the target against what it got.
            sent = (0, 0) if self.opts.mode == "verify" else (st.blocks_changed, st.zero_bytes_sent)
            frame_len = await self._send(DiskEnd(disk_id, *sent))
            st.wire_bytes += frame_len
            await self.tunnel.drain()
        except BaseException:
            builder.abort()
            raise
        finally:
            if job.ahead is not None:
                await asyncio.to_thread(job.ahead.close)
                log.debug("hash_ahead_done", disk=reader.name, waited_s=round(job.ahead.waited, 3))
                job.ahead = None
            if job.cleanup:
                await asyncio.to_thread(job.cleanup)
        st.seconds = time.monotonic() - t0
        self._builders[reader.name] = builder
        return st

    async def _stream(self, scanner: DiskScanner, st: DiskStats) -> None:
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
        held_before = self.limiter.waited  # the appliance's limiter is shared: count this pass's share
        try:
            await self.handshake()
            for disk_id, job in enumerate(jobs):
                report.disks.append(await self.replicate_disk(disk_id, job))
            differing = sum(d.blocks_changed + d.zero_blocks_sent for d in report.disks)
            await self._send(Commit(len(jobs), self.opts.failover, differing if self.opts.mode == "verify" else 0))
            await self.tunnel.drain()
            done = await self._next()
            assert isinstance(done, Committed)
            report.generation = done.generation
            report.failed_over, report.failover_note = done.failed_over, done.note
            for name, builder in self._builders.items():
                if self.opts.mode == "verify":  # nothing changed on the target: the cached map stays
                    builder.abort()
                else:
                    await asyncio.to_thread(self.cache.commit, name, builder, done.generation)
            self._builders.clear()
            report.seconds_limited = round(self.limiter.waited - held_before, 3)
        finally:
            keepalive.cancel()
            await asyncio.gather(keepalive, return_exceptions=True)
            for builder in self._builders.values():
                builder.abort()

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
    tunnel = await open_tunnel(target)
    return await run_pass_over(tunnel, target.label, vm, jobs, options, progress, started=t0)


async def run_pass_over(
    tunnel: ByteTunnel,
    label: str,
    vm: str,
    jobs: list[DiskJob],
    options: PassOptions,
    progress: Progress | None = None,
    *,
    started: float | None = None,
) -> PassReport:
    """One pass over an open tunnel (SSH in the agent, :mod:`tests.support.memory` in fast tests)."""
    report = PassReport(vm=vm, target=label, mode=options.mode)
    t0 = time.monotonic() if started is None else started
    session = SourceSession(tunnel, vm, options, MapCache(options.state_dir, label, vm), progress)
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
        report.wire_bytes_sent = tunnel.sent
        report.wire_bytes_received = session.received
        await tunnel.close()
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
