"""A replica checked against its own records, without the source: ``vzrep-target verify``.

A map says what the passes *wrote*; the storage under it can still go bad (a bad sector, a bit
flip, someone's ``dd``). This reads the replica's **bytes on disk**, hashes every block and compares
it with the committed map, and checks every restore point's reverse increments against the size and
SHA-256 recorded when their pass committed (and the records inside them against their own CRCs). It
writes nothing to the replica; the result is kept in the VM's status (``last_verify``) for
``status``, the console and the metrics. Held under the VM's lock: a pass waits (exit 10) rather
than change bytes under the check.

What it cannot tell alone is *which* side is right when a block differs from its map -- the disk
rotted, or the map is wrong. ``vzrep-source verify`` (the source's hashes against the target's
bytes) tells that, and ``--repair`` sends the right bytes as an ordinary pass.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from protocol.messages import HASH_LEN
from vzcommon.blockhash import zero_hash
from vzcommon.errors import InputError, IntegrityError
from vzcommon.geometry import Geometry
from vzcommon.vzmap import MapFile

from . import points as rp
from . import undo
from .export import check_increment
from .lock import VmLock
from .paths import ReplicaPaths
from .replica import replica_hashes
from .transaction import _read_status, _write_status


@dataclass
class DiskVerify:
    disk: str
    size: int
    block_size: int
    bytes_compared: int = 0
    #: [offset, length] of each run of blocks whose bytes differ from the map
    differing: list[tuple[int, int]] = field(default_factory=list)
    problem: str = ""  # the map itself could not be read


@dataclass
class VerifyReport:
    vm: str
    ok: bool = True
    seconds: float = 0.0
    disks: list[DiskVerify] = field(default_factory=list)
    #: point id -> what is wrong with it ("" when its increments check out)
    points: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ranges(blocks: list[int], block_size: int, size: int) -> list[tuple[int, int]]:
    """Adjacent block indexes merged into byte ranges (the last one cut at the disk's end)."""
    out: list[tuple[int, int]] = []
    for b in blocks:
        off = b * block_size
        length = min(block_size, size - off)
        if out and out[-1][0] + out[-1][1] == off:
            out[-1] = (out[-1][0], out[-1][1] + length)
        else:
            out.append((off, length))
    return out


def disk_hashes(fd: int, size: int, block_size: int) -> list[bytes]:
    """Every block's hash, read from the bytes on disk (as a map is rebuilt: ``replica_hashes``)."""
    g = Geometry(size, block_size)
    hashes = [zero_hash(block_size)] * g.blocks
    if g.tail != block_size and size:
        hashes[g.full_blocks] = zero_hash(g.tail)
    for first, run in replica_hashes(fd, size, block_size):
        n = HASH_LEN
        hashes[first : first + len(run) // n] = [run[i : i + n] for i in range(0, len(run), n)]
    return hashes


def verify_disk(paths: ReplicaPaths) -> DiskVerify:
    try:
        m = MapFile.open(paths.map)
    except FileNotFoundError:
        return DiskVerify(paths.disk, 0, 0, problem="no block map: nothing recorded to check it against")
    except (IntegrityError, OSError) as exc:
        return DiskVerify(paths.disk, 0, 0, problem=f"its block map is damaged: {exc}")
    with m:
        h = m.header
        result = DiskVerify(paths.disk, h.disk_size, h.block_size)
        try:
            fd = os.open(paths.flat, os.O_RDONLY)
        except OSError as exc:
            result.problem = f"the replica disk cannot be read: {exc.strerror or exc}"
            return result
        try:
            size = os.lseek(fd, 0, os.SEEK_END)
            if size != h.disk_size:
                result.problem = f"the replica has {size} bytes, its map describes {h.disk_size}"
                return result
            found = disk_hashes(fd, size, h.block_size)
        finally:
            os.close(fd)
        recorded = m.read_entries(0, len(found))
        n = len(found[0]) if found else 0
        bad = [i for i, digest in enumerate(found) if recorded[i * n : (i + 1) * n] != digest]
        result.bytes_compared = size
        result.differing = _ranges(bad, h.block_size, size)
    return result


def verify_point(vdir: Path, point: rp.Point) -> str:
    """"" when every increment of the point checks out; else what is wrong."""
    for disk in point.increments:
        try:
            path = check_increment(vdir, point, disk)
            for _ in undo.read_records(path):  # each record's CRC (read_records checks them)
                pass
        except IntegrityError as exc:
            return str(exc)
        except OSError as exc:
            return f"the increment of disk {disk!r} cannot be read: {exc.strerror or exc}"
    return ""


def verify_vm(data_dir: Path, vm: str) -> VerifyReport:
    """Check a replica's bytes and its restore points against their records; writes only the result."""
    vdir = data_dir / vm
    if not vdir.is_dir():
        raise InputError(f"no replica of VM {vm!r} in {data_dir}")
    t0 = time.monotonic()
    report = VerifyReport(vm)
    with VmLock(vdir, vm):
        disks = sorted(p.name[: -len("-flat.vmdk.vzmap")] for p in vdir.glob("*-flat.vmdk.vzmap"))
        disks += sorted(
            n for n in (p.name[: -len("-flat.vmdk")] for p in vdir.glob("*-flat.vmdk")) if n not in disks
        )
        for disk in disks:
            paths = ReplicaPaths(vdir, disk)
            if not paths.flat.exists():  # a vSphere replica's map: its bytes live in the replica VM
                continue
            d = verify_disk(paths)
            report.disks.append(d)
            report.ok = report.ok and not d.problem and not d.differing
        try:
            kept = rp.load(vdir)
        except IntegrityError as exc:
            report.points["index"] = str(exc)
            report.ok = False
            kept = []
        for point in kept[1:]:  # the oldest kept point has no increment; the newest is the live replica
            report.points[point.id] = verify_point(vdir, point)
            report.ok = report.ok and not report.points[point.id]
        report.seconds = round(time.monotonic() - t0, 3)
        record_verify(vdir, report.ok, "target", sum(len(d.differing) for d in report.disks),
                      [p for p, why in report.points.items() if why])  # fmt: skip
    return report


def record_verify(
    vdir: Path, ok: bool, by: str, differing: int, damaged_points: list[str], map_wrong_blocks: int = 0
) -> None:
    """The last verify's result, kept in the VM's status record (atomic replace) for ``status``.

    ``by`` "target": ``differing`` counts ranges whose bytes differ from the map; "source": blocks whose
    bytes differ from the source's."""
    status = _read_status(vdir)
    status["last_verify"] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "ok": ok,
        "by": by,
        "differing": differing,
        "damaged_points": damaged_points,
        "map_wrong_blocks": map_wrong_blocks,
    }
    _write_status(vdir, status)
