"""Replica mapping: a copy already at the DR site becomes a VM's replica, so the first pass sends only
the differences (Veeam's "replica mapping"; seeding from a backup is ``seed``).

Two kinds, both run on the target by ``vzrep-target map``:

* ``--from-vm OTHER``: the replica of another VM on this target (another job's, or one replicated
  from another source appliance) becomes this VM's. Its directory is renamed: its restore points
  (vzrep's, by any job) stay valid and count, its map comes along (the first pass compares hashes and
  reads nothing the map already proves), and files vzrep did not make in it (foreign: a snapshot delta
  made by another tool, notes) move along untouched; they are never listed as restore points, never
  used for failover and never removed by retention.
* ``--disk NAME=PATH``: flat files made by another tool on this host (a raw image, or a
  monolithicFlat VMDK's descriptor) move into a new replica directory -- by hard link, so nothing is
  copied and the files must be on DATA_DIR's filesystem. A restore point of origin ``mapped``
  records their state, so the first pass (which hashes them, having no map) leaves two points: the
  mapped state and the source's latest.

A VM whose replica is the same VM name made by another job needs no mapping at all: the replica is
there, and its points count.

Crash safety. ``--from-vm`` is one ``rename`` (with the other VM's lock held and any interrupted pass
of it recovered first) and an fsync of DATA_DIR. ``--disk`` builds the whole replica in a staging
directory ``DATA_DIR/.map-<vm>.<token>``: hard links to the copies (their own names untouched), the
descriptors, the restore-point index and the record ``.vzmapping`` naming the copies' paths and
inodes, all fsynced. Renaming the staging directory to ``DATA_DIR/<vm>`` is the commit point; after
it the copies' old names are unlinked -- each only while it is still the same inode as the replica's
flat file, and a descriptor only while it still has the bytes it had -- and ``.vzmapping`` is removed.
A crash before the rename leaves the copies as they were (the staging directory is removed by
start-up recovery, :func:`recover_staging`, and by the next ``map`` of that VM); a crash after it is
finished by :func:`finish`, which every pass's recovery runs (``transaction.recover_locked``) and
which a repeated ``map`` runs too. One ``map`` of a VM at a time (``DATA_DIR/.map-<vm>.lock``), so
neither removes a staging directory another is still building.

Every write, fsync and name change goes through ``vzcommon.fsio`` (``tests/reliability`` replays the
crashes of a mapping).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from protocol.messages import valid_name
from vzcommon import fsio
from vzcommon.durable import fsync_dir, remove_tree, unlink_durable, write_durable
from vzcommon.errors import BusyError, InputError
from vzcommon.log import get_logger
from vzcommon.records import read_record, write_record
from vzcommon.vmdk import looks_like_descriptor, read_descriptor, render_flat_descriptor

from . import points
from .lock import VmLock, exclusive
from .paths import PRIVATE_DIR, PRIVATE_FILE

log = get_logger("vzrep.target.mapping")

RECORD = ".vzmapping"
#: a VM mapped onto an existing vSphere VM (``target_agent.vsphere.mapping``)
REPLICA_VM_RECORD = "replica-vm"
RECORD_MAGIC = "vzrep-mapping"
STAGING_PREFIX = ".map-"
#: what vzrep itself keeps in a VM directory, besides each disk's files (``paths``)
OWN_NAMES = frozenset(
    {
        ".lock",
        ".vzpass",
        "vzrep-status.json",
        "vzundo-script",
        points.POINTS,
        RECORD,
        "failover",
        ".failover-stage",
    }
)
_DISK_SUFFIXES = (
    "-flat.vmdk",
    ".vmdk",
    "-flat.vmdk.vzmap",
    "-flat.vmdk.vzundo",
    "-flat.vmdk.vzmap.next",
    ".vmdk.next",
    "-failover.vmdk",
)


def holds_replica(vdir: Path) -> bool:
    """Whether the target holds a replica of this VM: restore points, or disks (seeded, mapped, or
    replicated). The job rule asks this before a pass creates anything."""
    if not vdir.is_dir():
        return False
    if points.load(vdir) or (vdir / REPLICA_VM_RECORD).exists():
        return True
    return any(p.name.endswith(("-flat.vmdk", ".vzmap")) for p in vdir.iterdir())


def _disk_names(vdir: Path) -> set[str]:
    names: set[str] = set()
    for point in points.load(vdir):
        names.update(point.disks)
    for p in vdir.iterdir():
        if p.name.endswith("-flat.vmdk.vzmap"):
            names.add(p.name.removesuffix("-flat.vmdk.vzmap"))
    return names


def foreign_files(vdir: Path) -> list[str]:
    """Names in the VM directory that vzrep did not make (another tool's snapshot deltas, notes):
    never restore points, never used, never removed."""
    if not vdir.is_dir():
        return []
    ours = {f"{d}{s}" for d in _disk_names(vdir) for s in _DISK_SUFFIXES}
    return sorted(p.name for p in vdir.iterdir() if p.name not in OWN_NAMES and p.name not in ours)


#: formats whose bytes are not the disk's: mapped as raw they would make a replica of garbage
_IMAGE_MAGIC = (
    (b"KDMV", "sparse VMDK (monolithicSparse or streamOptimized)"),
    (b"COWD", "ESX sparse VMDK"),
    (b"QFI\xfb", "qcow2"),
    (b"vhdxfile", "VHDX"),
)


def _generation() -> str:
    return f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(6)}"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Copy:
    """One disk of a copy made by another tool: its flat bytes and, for a VMDK, its descriptor."""

    disk: str
    flat: Path
    size: int
    descriptor: Path | None


def inspect_copy(disk: str, path: Path) -> Copy:
    """A raw image or a one-extent monolithicFlat VMDK; anything else is refused (``seed`` restores
    sparse formats)."""
    if not valid_name(disk):
        raise InputError(f"invalid disk name {disk!r}: it must be the source disk's name")
    try:
        st = path.stat()
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as exc:
        raise InputError(f"cannot read the copy of disk {disk!r} at {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path} is not a regular file: map a file (a device is mapped by `serve --map`)")
    kind = next((k for magic, k in _IMAGE_MAGIC if head.startswith(magic)), "")
    if kind:
        raise InputError(
            f"{path} is a {kind} image, not flat bytes: mapping takes raw images and one-extent"
            " monolithicFlat VMDKs; restore other formats with `vzrep-target seed`"
        )
    if not looks_like_descriptor(head):
        if st.st_size % 512 or st.st_size == 0:
            raise InputError(f"{path} has {st.st_size} bytes, not a whole number of 512-byte sectors")
        return Copy(disk, path.resolve(), st.st_size, None)
    desc = read_descriptor(path)
    flat_kinds = {"FLAT", "VMFS"}
    if len(desc.extents) != 1 or desc.extents[0].kind not in flat_kinds or desc.extents[0].offset_sectors:
        raise InputError(
            f"{path} is a {desc.create_type or 'VMDK'} of {len(desc.extents)} extent(s): mapping takes raw"
            " images and one-extent monolithicFlat VMDKs; restore other formats with `vzrep-target seed`"
        )
    ext = desc.extents[0]
    flat = (path.parent / ext.filename).resolve()
    try:
        flat_size = flat.stat().st_size
    except OSError as exc:
        raise InputError(
            f"{path} names the extent {flat}, which cannot be read: {exc.strerror or exc}"
        ) from None
    size = ext.sectors * 512
    if flat_size < size:
        raise InputError(f"the extent {flat} has {flat_size} bytes, its descriptor {path} says {size}")
    if flat_size != size:
        raise InputError(
            f"the extent {flat} has {flat_size} bytes, its descriptor {path} says {size}: fix one"
        )
    return Copy(disk, flat, size, path.resolve())


_STAGING_RE = re.compile(re.escape(STAGING_PREFIX) + r"(?P<vm>.+)\.[0-9a-f]{8}")


def staging_vm(name: str) -> str | None:
    """The VM a staging directory's name belongs to (None: not a staging directory's name)."""
    m = _STAGING_RE.fullmatch(name)
    return m["vm"] if m else None


def _map_lock(data_dir: Path, vm: str) -> contextlib.AbstractContextManager[None]:
    """One ``map`` of a VM at a time (flock on ``DATA_DIR/.map-<vm>.lock``): another would remove
    this one's staging directory as a crash's leftover."""
    return exclusive(data_dir / f"{STAGING_PREFIX}{vm}.lock", f"VM {vm!r} is being mapped already on this target; wait for that to end")


def _remove_staging(data_dir: Path, vm: str) -> list[str]:
    """Staging directories of an earlier ``map`` of this VM that never reached its commit point."""
    gone = []
    for p in sorted(data_dir.iterdir()):
        if staging_vm(p.name) == vm and p.is_dir() and not p.is_symlink():
            remove_tree(p)  # hard links and files we wrote: the copies' own names are elsewhere
            gone.append(p.name)
    if gone:
        fsync_dir(data_dir)
    return gone


def recover_staging(data_dir: Path) -> dict[str, str]:
    """Start-up recovery: staging directories of mappings a crash interrupted before their commit
    point are removed (VM -> what was done); a VM being mapped now (its lock held) is left alone."""
    done: dict[str, str] = {}
    if not data_dir.is_dir():
        return done
    vms = sorted({vm for p in data_dir.iterdir() if (vm := staging_vm(p.name)) and p.is_dir()})
    for vm in vms:
        try:
            with _map_lock(data_dir, vm):
                gone = _remove_staging(data_dir, vm)
        except BusyError:
            continue
        if gone:
            log.warning("map_staging_removed", vm=vm, what=gone)
            done[vm] = f"removed the staging directory of an interrupted mapping: {', '.join(gone)}"
    return done


def _refuse_existing(vdir: Path, vm: str) -> None:
    if holds_replica(vdir):
        raise InputError(
            f"VM {vm!r} already has a replica in {vdir.parent}: nothing to map (its restore points count);"
            " move it aside first to map another copy"
        )
    if vdir.exists() and any(p.name not in OWN_NAMES for p in vdir.iterdir()):
        raise InputError(f"{vdir} exists and holds files vzrep did not make: move them aside first")


def _clear_leftovers(vdir: Path) -> None:
    """A VM directory without a replica holds only vzrep's own leftovers (``_refuse_existing`` said
    so: a lock file, the status of a first pass that was rolled back): it makes way for the mapping."""
    for p in vdir.iterdir():
        if p.is_dir() and not p.is_symlink():
            remove_tree(p)
        else:
            fsio.unlink(p)
    fsio.rmdir(vdir)


def map_disks(data_dir: Path, vm: str, disks: dict[str, Path]) -> str:
    """Make the copies in ``disks`` (disk name -> file) VM ``vm``'s replica (module docstring)."""
    if not valid_name(vm):
        raise InputError(f"invalid VM name {vm!r}")
    if not disks:
        raise InputError("give --disk NAME=PATH for each disk of the copy, named as the source names it")
    vdir = data_dir / vm
    copies = [inspect_copy(name, path) for name, path in disks.items()]
    data_dir.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    if vdir.is_dir() and (vdir / RECORD).exists():
        finish(vdir)
    _refuse_existing(vdir, vm)
    dev = data_dir.stat().st_dev
    for c in copies:
        if c.flat.stat().st_dev != dev:
            raise InputError(
                f"{c.flat} is on another filesystem than {data_dir}: mapping moves files without copying;"
                " move the copy onto that filesystem, or restore it with `vzrep-target seed`"
            )
    with _map_lock(data_dir, vm):
        _remove_staging(data_dir, vm)
        stage = data_dir / f"{STAGING_PREFIX}{vm}.{secrets.token_hex(4)}"
        fsio.mkdir(stage, PRIVATE_DIR)
        fsync_dir(data_dir)
        try:
            record = _build(stage, copies)
            if vdir.exists():
                _clear_leftovers(vdir)
            fsio.replace(stage, vdir)  # the commit point
            fsync_dir(data_dir)
        except BaseException:
            with contextlib.suppress(OSError):
                remove_tree(stage)
            raise
    log.info("mapped", vm=vm, disks=[c.disk for c in copies], point=record)
    finish(vdir)
    return f"VM {vm!r} is mapped onto {', '.join(str(c.descriptor or c.flat) for c in copies)}: restore point {record} (mapped)"


def _build(stage: Path, copies: list[Copy]) -> str:
    sources = []
    for c in copies:
        flat = stage / f"{c.disk}-flat.vmdk"
        fsio.link(c.flat, flat)
        fd = fsio.open(flat, os.O_RDONLY)
        try:
            fsio.fsync(fd)  # a copy another tool just wrote may still be in the page cache
        finally:
            fsio.close(fd)
        text = render_flat_descriptor(flat.name, c.size, secrets.randbits(32) or 1)
        write_durable(stage / f"{c.disk}.vmdk", text.encode(), PRIVATE_FILE)
        st = c.flat.stat()
        sources.append(
            {
                "disk": c.disk,
                "path": str(c.flat),
                "dev": st.st_dev,
                "ino": st.st_ino,
                "descriptor": str(c.descriptor) if c.descriptor else "",
                "descriptor_sha256": points.sha256_of(c.descriptor) if c.descriptor else "",
            }
        )
    point = points.Point(
        id=_generation(), time=_now(), pass_id="", disks={c.disk: c.size for c in copies}, origin="mapped"
    )
    points.write_index(stage, [point])
    write_record(stage / RECORD, RECORD_MAGIC, {"sources": sources, "mapped": _now()})
    fsync_dir(stage)
    return point.id


def finish(vdir: Path) -> str | None:
    """After the commit point of a ``--disk`` mapping: the copies' old names go (idempotent)."""
    try:
        record = read_record(vdir / RECORD, RECORD_MAGIC)
    except FileNotFoundError:
        return None
    gone = []
    for src in record.get("sources", []):
        path, flat = Path(src["path"]), vdir / f"{src['disk']}-flat.vmdk"
        with contextlib.suppress(FileNotFoundError):
            st, ft = path.lstat(), flat.stat()
            if (st.st_dev, st.st_ino) == (ft.st_dev, ft.st_ino) and stat.S_ISREG(st.st_mode):
                unlink_durable(path)
                gone.append(str(path))
        desc = Path(src["descriptor"]) if src.get("descriptor") else None
        if desc is not None and desc.is_file() and points.sha256_of(desc) == src.get("descriptor_sha256"):
            unlink_durable(desc)
            gone.append(str(desc))
    unlink_durable(vdir / RECORD)
    return f"finished mapping {vdir.name} (moved {', '.join(gone) or 'nothing left to move'})"


def map_from_vm(data_dir: Path, vm: str, other: str) -> str:
    """Make the replica of VM ``other`` on this target VM ``vm``'s (module docstring)."""
    from . import failover
    from .transaction import recover_locked

    for name in (vm, other):
        if not valid_name(name):
            raise InputError(f"invalid VM name {name!r}")
    if vm == other:
        raise InputError(f"VM {vm!r} cannot be mapped onto itself: its replica is already its own")
    src, dst = data_dir / other, data_dir / vm
    if not src.is_dir():
        raise InputError(f"no replica of VM {other!r} in {data_dir}")
    _refuse_existing(dst, vm)
    with VmLock(src, other):
        recovered = recover_locked(src)  # an interrupted pass of the other VM is finished or undone
        if recovered:
            log.warning("recovered_before_mapping", vm=other, what=recovered)
        if failover.read_state(src) is not None:
            raise InputError(f"VM {other!r} is in a failover: end it before its replica is mapped")
        if not holds_replica(src):
            raise InputError(f"{src} holds no replica (no restore points, no disks): nothing to map onto")
        if dst.exists():
            _clear_leftovers(dst)
        fsio.replace(src, dst)  # the commit point
        fsync_dir(data_dir)
    n = len(points.load(dst))
    log.info("mapped", vm=vm, from_vm=other, points=n)
    return f"VM {vm!r} is mapped onto the replica of {other!r} ({n} restore points, kept)"
