"""Seeding: a backup already at the DR site becomes a VM's replica, with its map and restore point 1.

A seed is any disk image qemu reads (``vzcommon.images``: raw, every VMDK create type and snapshot
chain, qcow2 with backing files, VHDX, OVA members). Each disk is restored thin by ``qemu-img
convert`` -- a block that reads as zeros stays a hole -- and hashed as part of the restore (from the
page cache, before anything is committed), into the same ``.vzmap`` a pass would leave
(same block size, BLAKE3-256, the descriptor's CID), so the first pass finds a trusted map and the
source sends only what changed since the backup. The seeded state is restore point 1 (origin
``seed``); the first pass adds point 2.

All or nothing, in this order (a crash or a bad seed at any step leaves ``DATA_DIR/<vm>`` as it was):

1. open and check every seed (``qemu-img info`` and ``check``): nothing is written yet;
2. in a stage directory ``DATA_DIR/.seed-<vm>-<random>`` (0700; files 0600): per disk the flat
   extent, its map and descriptor, then the points index and the status; every file fsynced, then the
   stage directory;
3. **commit point**: the stage is renamed to ``DATA_DIR/<vm>`` -- or, with ``replace``, exchanged
   with the existing directory in one ``renameat2(RENAME_EXCHANGE)`` -- and ``DATA_DIR`` fsynced;
4. the old directory (now under the stage's name) is removed.

Stage directories left by a crash (before 3 they are unfinished seeds, after 3 the replaced replica)
are removed by start-up recovery (:func:`recover_stages`) and by the next seed of that VM. Their names
start with a dot, so passes and ``status`` never take them for a VM.

Every write, fsync and name change goes through ``vzcommon.fsio`` (``tests/reliability`` replays the
crashes of a seed); the bytes ``qemu-img convert`` writes are reported to it once written.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import mmap
import os
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from protocol.framing import MAX_BLOCK_SIZE, MIN_BLOCK_SIZE
from protocol.messages import valid_name
from vzcommon import fsio
from vzcommon.blockhash import hash_block, zero_hash
from vzcommon.durable import exchange_durable, fsync_dir, remove_tree, write_durable
from vzcommon.errors import BusyError, FailedOver, InputError, StorageError
from vzcommon.geometry import Geometry
from vzcommon.images import Image
from vzcommon.log import get_logger
from vzcommon.qemu import ConvertRange
from vzcommon.records import write_record
from vzcommon.sparse import data_segments
from vzcommon.vmdk import render_flat_descriptor
from vzcommon.vzmap import MapBuilder

from . import points
from .failover import read_state
from .lock import VmLock, exclusive
from .paths import PRIVATE_DIR, PRIVATE_FILE, ReplicaPaths
from .transaction import STATUS, STATUS_MAGIC, now, vm_dir

log = get_logger("vzrep.target.seed")

DEFAULT_BLOCK_SIZE = MIN_BLOCK_SIZE  # what a pass uses unless told (source_agent.pipeline)
#: bytes of the restored extent mapped and hashed at a time
CHUNK = 64 << 20
#: bytes of data qemu-img restores per run, while the span before is hashed. 64 MiB spans leave less
#: hashing after the last one, but measured on the loaded 2-core bench machine the hashing then ran at
#: half its speed (it competes with qemu for the cores): 1 GiB image, 2.3-2.9 s against 3.1-3.6 s
SPAN = 256 << 20
STAGE_PREFIX = ".seed-"


@dataclass
class SeededDisk:
    name: str
    seed: str
    format: str
    size: int
    bytes_read: int = 0  # bytes restored and hashed: the seed's data, block-aligned (holes are never read)
    bytes_written: int = 0  # blocks that were not zeros
    zero_blocks: int = 0  # blocks read as zeros, left as holes
    cid: str = ""


@dataclass
class SeedReport:
    vm: str
    point: str
    block_size: int
    disks: list[SeededDisk] = field(default_factory=list)
    replaced: bool = False
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


#: a stage (``.seed-<vm>-<8 hex>``) or the old directory moved aside beside it (``...-old``)
_STAGE_RE = re.compile(re.escape(STAGE_PREFIX) + r"(?P<vm>.+)-[0-9a-f]{8}(?P<old>-old)?")
_ASIDE = "-old"


def stage_vm(name: str) -> str | None:
    """The VM a seed stage directory's name belongs to (None: not a stage's name)."""
    m = _STAGE_RE.fullmatch(name)
    return m["vm"] if m else None


def _stages(data_dir: Path, vm: str) -> list[Path]:
    if not data_dir.is_dir():
        return []
    return [p for p in data_dir.iterdir() if stage_vm(p.name) == vm and p.is_dir() and not p.is_symlink()]


def remove_stages(data_dir: Path, vm: str) -> list[str]:
    """Put right what a crashed seed of ``vm`` left (module docstring); idempotent, seed lock held.

    A crash between the two renames of the fallback replace (no ``RENAME_EXCHANGE``) leaves no VM
    directory and the old one aside: it was before the commit point, so the old one goes back."""
    vdir = data_dir / vm
    gone = []
    asides = [p for p in _stages(data_dir, vm) if p.name.endswith(_ASIDE)]
    if not os.path.lexists(vdir) and len(asides) == 1:
        fsio.replace(asides[0], vdir)
        fsync_dir(data_dir)
        gone.append(f"{asides[0].name} (moved back to {vm})")
    for stage in _stages(data_dir, vm):
        remove_tree(stage, ignore_errors=True)
        gone.append(stage.name)
    if gone:
        fsync_dir(data_dir)
    return gone


def recover_stages(data_dir: Path) -> dict[str, str]:
    """Start-up recovery of every seed a crash interrupted (VM -> what was done); a VM being seeded
    now (its seed lock held) is left alone."""
    done: dict[str, str] = {}
    if not data_dir.is_dir():
        return done
    vms = sorted({vm for p in data_dir.iterdir() if (vm := stage_vm(p.name)) and p.is_dir()})
    for vm in vms:
        try:
            with _seed_lock(data_dir, vm):
                gone = remove_stages(data_dir, vm)
        except BusyError:
            continue
        if gone:
            log.warning("seed_stages_removed", vm=vm, what=gone)
            done[vm] = f"put right an interrupted seed: {', '.join(gone)}"
    return done


def has_replica(vdir: Path) -> bool:
    """Whether ``vdir`` holds anything but an empty lock file (a replica, a copy put there by hand...)."""
    if not vdir.exists():
        return False
    return any(p.name != ".lock" for p in vdir.iterdir())


def spans(extents: list[tuple[int, int]], size: int, block_size: int, most: int) -> list[tuple[int, int]]:
    """Disjoint block-aligned ``(offset, length)`` spans covering every data extent, each holding about
    ``most`` bytes of data (a longer extent is cut; the alignment may add a block at either end); the
    holes between spans are left out."""
    out: list[tuple[int, int]] = []
    start = end = -1  # the span being built
    data = 0
    for off, n in extents:
        pos, stop = off, off + n
        while pos < stop:
            lo = max(pos - pos % block_size, end if end >= 0 else 0)
            if start < 0:
                start, data = lo, 0
            take = min(stop - pos, most - data)
            hi = min(size, -(-(pos + take) // block_size) * block_size)
            end, data, pos = hi, data + take, pos + take
            if data >= most:
                out.append((start, end - start))
                start = -1
    if start >= 0 and end > start:
        out.append((start, end - start))
    return [(o, n) for o, n in out if n > 0]


def restore_disk(image: Image, paths: ReplicaPaths, block_size: int, cid: int, generation: str) -> SeededDisk:
    """Restore one seed into ``paths`` (a stage directory): thin flat extent, map, descriptor; fsynced.

    ``qemu-img convert`` writes the flat extent span by span (qemu's own copy loop, only what is not
    zeros); while it writes one span, this thread hashes the span before it, still in the page cache
    (holes are never read). Why not stream the seed through qemu-nbd and hash each block as it passes:
    measured on the 4 GiB bench image, that ran at 0.3x the speed of ``qemu-img convert`` alone
    (qemu-nbd's one thread copying through a unix socket was the limit)."""
    size = image.size
    geometry = Geometry(size, block_size)
    report = SeededDisk(paths.disk, image.where, image.format, size, cid=f"{cid:08x}")
    builder = MapBuilder(paths.map, block_size, size, None)
    fd = fsio.open(paths.flat, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE)
    running: ConvertRange | None = None
    try:
        fsio.ftruncate(fd, size)  # a sparse file of the disk's size: qemu writes into it (-n, target is zero)
        builder.fill(0, geometry.full_blocks, zero_hash(block_size))
        if geometry.tail != block_size:
            builder.set_range(geometry.full_blocks, zero_hash(geometry.tail))
        done: tuple[int, int] | None = None  # written by qemu, not hashed yet
        for off, n in spans(image.allocated(), size, block_size, SPAN):
            running = ConvertRange(image.info, paths.flat, off, n)
            if done is not None:
                _hash_span(fd, *done, geometry, builder, report)
            running.wait()
            fsio.wrote(fd, off, n)
            running, done = None, (off, n)
        if done is not None:
            _hash_span(fd, *done, geometry, builder, report)
        fsio.fsync(fd)
        write_durable(
            paths.descriptor, render_flat_descriptor(paths.flat.name, size, cid).encode(), PRIVATE_FILE
        )
        builder.finish(generation=generation, cid=cid)
    except OSError as exc:
        builder.abort()
        raise StorageError(
            f"cannot restore seed {image.where} into {paths.flat}: {exc.strerror or exc}; nothing was kept"
        ) from None
    except BaseException:
        builder.abort()
        raise
    finally:
        if running is not None:
            running.kill()
        fsio.close(fd)
    return report


def _hash_span(
    fd: int, lo: int, length: int, geometry: Geometry, builder: MapBuilder, report: SeededDisk
) -> None:
    """Map entries of one restored span: BLAKE3 of every block holding data (holes keep the zero hash
    they were given); ``report`` counts the blocks that are data and those that read as zeros.

    The extent is read through ``mmap``: no copy out of the page cache (measured: a third less CPU than
    ``preadv`` into a buffer). A page that cannot be read would end the process with SIGBUS; the file is
    our own stage file, which nobody truncates, and a crash leaves the VM directory as it was anyway."""
    bs = geometry.block_size
    zh, tail_zh = zero_hash(bs), zero_hash(geometry.tail)
    step = max(CHUNK - CHUNK % bs, bs)
    done = lo
    for off, n in data_segments(fd, lo, lo + length):
        first = max(done, off - off % bs)
        hi = min(lo + length, -(-(off + n) // bs) * bs)
        for pos in range(first, hi, step):
            count = min(step, hi - pos)
            base = pos - pos % mmap.ALLOCATIONGRANULARITY
            with mmap.mmap(fd, pos + count - base, prot=mmap.PROT_READ, offset=base) as mapped:
                view = memoryview(mapped)[pos - base :]
                hashes = bytearray()
                for b in range(0, count, bs):
                    block = view[b : b + bs]
                    digest = hash_block(block)
                    block.release()
                    hashes += digest
                    if digest == (zh if b + bs <= count else tail_zh):
                        report.zero_blocks += 1
                    else:
                        report.bytes_written += min(bs, count - b)
                view.release()
            builder.set_range(pos // bs, bytes(hashes))
            report.bytes_read += count
        done = max(done, hi)


def seed_vm(
    data_dir: Path,
    vm: str,
    disks: Mapping[str, Path],
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    replace: bool = False,
    job: str = "",
    check: bool = True,
) -> SeedReport:
    """Make ``DATA_DIR/<vm>`` a replica restored from ``disks`` (disk name -> seed image); see the
    module docstring. Refuses a VM that already has a replica unless ``replace``."""
    t0 = time.monotonic()
    vdir = vm_dir(data_dir, vm)
    if not disks:
        raise InputError(f"seeding VM {vm!r} needs at least one disk (--disk NAME=FILE)")
    for name in disks:
        if not valid_name(name):
            raise InputError(
                f"invalid disk name {name!r}: use letters, digits, '.', '_', '+' or '-', without '..'"
            )
    if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE or block_size & (block_size - 1):
        raise InputError("block size must be a power of two from 64K to 4M")
    _refuse_existing(vdir, vm, replace)
    images: dict[str, Image] = {}
    try:
        for name, path in disks.items():  # step 1: every seed opened and checked before anything is made
            images[name] = Image(path, verify=check)
        data_dir.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        with _seed_lock(data_dir, vm):
            remove_stages(data_dir, vm)
            stage = data_dir / f"{STAGE_PREFIX}{vm}-{secrets.token_hex(4)}"
            fsio.mkdir(stage, PRIVATE_DIR)
            try:
                report = _build(stage, vm, images, block_size, job)
                report.replaced = _install(stage, vdir, vm, replace)  # step 3
            finally:
                remove_tree(stage, ignore_errors=True)  # step 4 (or an unfinished stage)
                fsync_dir(data_dir)
    finally:
        for image in images.values():
            image.close()
    report.seconds = round(time.monotonic() - t0, 3)
    log.info(
        "seeded", vm=vm, point=report.point, disks=[d.name for d in report.disks], seconds=report.seconds
    )
    return report


def _seed_lock(data_dir: Path, vm: str) -> contextlib.AbstractContextManager[None]:
    """One seed of a VM at a time (``DATA_DIR/.seed-<vm>.lock``, flock): a second one would remove the
    first one's stage as a crash's leftover."""
    return exclusive(data_dir / f"{STAGE_PREFIX}{vm}.lock", f"VM {vm!r} is being seeded already on this target; wait for that seed to end")


def _refuse_existing(vdir: Path, vm: str, replace: bool) -> None:
    if not has_replica(vdir):
        return
    state = read_state(vdir)
    if state is not None:
        raise FailedOver(
            f"VM {vm!r} is {state.get('state')}: its replica is production now and is not replaced by a seed;"
            " end the failover first (`vzrep-target failover --undo`)"
        )
    if not replace:
        raise InputError(
            f"VM {vm!r} already has a replica in {vdir}: seeding would replace it and its restore points;"
            " give --replace to do that, or seed under another VM name"
        )


def _build(stage: Path, vm: str, images: Mapping[str, Image], block_size: int, job: str) -> SeedReport:
    """Step 2: the whole replica in the stage directory, durable."""
    generation = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(6)}"
    seed_id = f"seed-{secrets.token_hex(6)}"
    report = SeedReport(vm, generation, block_size)
    for name, image in images.items():
        cid = secrets.randbits(32) or 1
        report.disks.append(restore_disk(image, ReplicaPaths(stage, name), block_size, cid, generation))
    finished = now()
    point = points.Point(
        id=generation,
        time=finished,
        pass_id=seed_id,
        disks={d.name: d.size for d in report.disks},
        job=job,
        origin="seed",
    )
    points.write_index(stage, [point])
    status = {
        "vm": vm,
        "last_pass": {
            "pass_id": seed_id,
            "generation": generation,
            "origin": "seed",
            "started": finished,
            "finished": finished,
            "peer": "",
            "disks": {d.name: {"size": d.size, "cid": d.cid, "seed": d.seed} for d in report.disks},
        },
    }
    write_record(stage / STATUS, STATUS_MAGIC, status)
    fsync_dir(stage)
    return report


def _install(stage: Path, vdir: Path, vm: str, replace: bool) -> bool:
    """Step 3, the commit point; True if an existing directory was replaced."""
    if not vdir.exists():
        try:
            fsio.replace(stage, vdir)
        except OSError as exc:
            raise StorageError(f"cannot put the seeded replica in place at {vdir}: {exc.strerror}") from None
        fsync_dir(vdir.parent)
        return False
    with VmLock(vdir, vm):  # no pass may run while the directory is swapped under it
        _refuse_existing(vdir, vm, replace)  # again, under the lock
        os.chmod(vdir, PRIVATE_DIR)
        try:
            exchange_durable(stage, vdir)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise StorageError(
                    f"cannot put the seeded replica in place at {vdir}: {exc.strerror}"
                ) from None
            # no atomic exchange here: the old directory moves aside first (a crash between the two
            # renames leaves the VM absent and both directories under stage names; never half of one)
            # (start-up recovery moves the old one back: ``remove_stages``)
            aside = stage.with_name(stage.name + _ASIDE)
            fsio.replace(vdir, aside)
            fsio.replace(stage, vdir)
            fsync_dir(vdir.parent)
            with contextlib.suppress(OSError):
                fsio.replace(aside, stage)
    return True
