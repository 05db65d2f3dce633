"""Failover of a file replica: test it, start it on a point in time, undo it, or make it final.

The state is one record, ``DATA_DIR/<vm>/failover`` (magic, version, checksum):

* ``test`` -- the point was exported to a scratch directory (``export``) for a test VM; the replica is
  not touched and replication goes on. ``--undo`` removes the scratch directory and the record.
* ``failing-over`` -- written first by a permanent failover: from then on passes are refused, so the
  replica cannot change under the steps that follow. A crash leaves this state; running the same
  failover again finishes it (recovery of an interrupted roll is the usual pass recovery).
* ``failed-over`` -- the replica was rolled to the point and each disk got a child delta
  (``NAME-failover.vmdk``, a monolithicSparse VMDK whose parent is ``NAME.vmdk``, made by qemu-img):
  the VM runs from the deltas, so the replica and its restore points stay as they were. Passes from
  the source are refused (exit 15). ``--undo`` deletes the deltas, rolls the replica back to the point
  that was newest before the failover, and replication goes on as before.
* ``committing`` -- written by ``--commit`` before the first delta is merged into the replica
  (``qemu-img commit -d``; the VM is off). A merge stopped half-way leaves the replica part old, part
  new (and the merge gave the replica a new CID, so the delta no longer opens as its child), so
  ``--undo`` is refused from here on and running ``--commit`` again finishes it: the delta is kept
  whole until its merge is complete, and merging it again writes the same bytes.
* ``committed`` -- ``--commit`` merged the deltas into the replica: the replica is now production.
  Its maps and restore points no longer describe it and are removed; passes stay refused until the
  way back has run: ``failing-back`` and ``failed-back`` (:mod:`failback.send`), then ``--release``.

Rolling to a point is itself a pass (``transaction.VmPass``): the point is exported to a stage inside
the VM directory, and only the blocks that any newer point's increment touched are written, with the
write-ahead undo and the atomic commit of any pass. It adds a restore point (origin ``failover``), so
the point that was newest stays reachable and ``--undo`` can go back to it; no point is retired.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from vzcommon.blockhash import hash_block, zero_block
from vzcommon.durable import unlink_durable
from vzcommon.errors import FailedOver, InputError, StorageError
from vzcommon.records import read_record, write_record
from vzcommon.vzmap import MapFile

from . import points as rp
from . import undo
from .export import export_point
from .paths import ReplicaPaths
from .transaction import now

STATE = "failover"
STATE_MAGIC = "vzrep-failover"
DELTA = "{disk}-failover.vmdk"
STAGE = ".failover-stage"


def read_state(vdir: Path) -> dict[str, Any] | None:
    try:
        return read_record(vdir / STATE, STATE_MAGIC)
    except FileNotFoundError:
        return None


def _write_state(vdir: Path, body: dict[str, Any]) -> None:
    write_record(vdir / STATE, STATE_MAGIC, body)


def refuse_passes(vdir: Path, vm: str) -> None:
    """Called when a pass begins: a failed-over replica is production, not a replica to write."""
    st = read_state(vdir)
    if st is not None and st.get("state") != "test":
        raise FailedOver(
            f"VM {vm!r} is {st.get('state')} (to restore point {st.get('point')} since {st.get('since')}):"
            " its replica is refused as a destination; end a failover with `vzrep-target failover --undo`,"
            " or bring the VM home with failback after `--commit`"
        )


def _qemu_img(*args: str, cwd: Path) -> None:
    exe = shutil.which("qemu-img")
    if exe is None:
        raise InputError("failover needs qemu-img (Debian package qemu-utils) to make the replica's deltas")
    res = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise StorageError(f"qemu-img {args[0]} failed in {cwd}: {res.stderr.strip() or res.stdout.strip()}")


def test_failover(data_dir: Path, vm: str, point_id: str | None, to: Path | None) -> Path:
    """Export the point for a test VM and record the test; the replica goes on replicating."""
    vdir = data_dir / vm
    st = read_state(vdir)
    if st is not None:
        raise InputError(f"VM {vm!r} is already {st.get('state')}; end that first (`failover --undo`)")
    points = rp.load(vdir)
    if not points:
        raise InputError(f"VM {vm!r} has no restore point yet: nothing to fail over to")
    point = points[rp.find(points, point_id, vm)] if point_id else points[-1]
    where = to or vdir / "failover-test"
    export_point(data_dir, vm, point.id, where)
    _write_state(vdir, {"state": "test", "point": point.id, "since": now(), "dir": str(where)})
    return where


def _changed_blocks(vdir: Path, newer: list[rp.Point], disk: str, block_size: int) -> list[int]:
    """Every block any newer point's increment touched: where the point differs from the live replica."""
    blocks: set[int] = set()
    for p in newer:
        if disk not in p.increments:
            continue
        for rec in undo.read_records(rp.increment_path(vdir, p.id, disk)):
            blocks.update(range(rec.offset // block_size, (rec.offset + rec.length - 1) // block_size + 1))
    return sorted(blocks)


def roll_to(data_dir: Path, vm: str, point_id: str, *, origin: str) -> str | None:
    """Make the live replica equal to ``point_id`` with a pass; the new point's id (None: already)."""
    from .transaction import VmPass  # the pass machinery; imported here to keep the module graph flat

    vdir = data_dir / vm
    points = rp.load(vdir)
    k = rp.find(points, point_id, vm)
    if k == len(points) - 1:
        return None
    point, newer = points[k], points[k + 1 :]
    stage = vdir / STAGE
    shutil.rmtree(stage, ignore_errors=True)
    export_point(data_dir, vm, point.id, stage)
    try:
        with MapFile.open(ReplicaPaths(vdir, next(iter(point.disks))).map) as m:
            block_size = m.header.block_size
        vm_pass = VmPass(data_dir, vm, block_size=block_size, peer=origin, restore_points=len(points) + 1)
        vm_pass.begin()
        try:
            for disk, size in point.disks.items():
                live = ReplicaPaths(vdir, disk).flat.stat().st_size
                writer, _ = vm_pass.open_disk(disk, max(live, size), "", point.change_ids.get(disk, ""))
                blocks = _changed_blocks(vdir, newer, disk, block_size)
                if live > size:  # grown after the point: the part it did not have reads as zeros
                    blocks = sorted({*blocks, *range(size // block_size, -(-live // block_size))})
                with open(stage / f"{disk}-flat.vmdk", "rb") as f:
                    for b in blocks:
                        off = b * block_size
                        if off >= live:
                            break
                        data = f.read(block_size) if f.seek(off) == off else b""
                        data += bytes(min(block_size, live - off) - len(data))  # past the point's end
                        if data == zero_block(len(data)):
                            writer.write_zeros(off, len(data))
                        else:
                            writer.write_block(off, data, hash_block(data))
                writer.flush()
            return vm_pass.commit({"result": "ok", "origin": origin, "restored_point": point.id})
        finally:
            vm_pass.close()
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def start(data_dir: Path, vm: str, point_id: str | None) -> dict[str, Any]:
    """Permanent failover to a point (default: the newest); the state record afterwards."""
    vdir = data_dir / vm
    st = read_state(vdir)
    if st is not None and st.get("state") != "failing-over":
        raise InputError(f"VM {vm!r} is already {st.get('state')}; end that first (`failover --undo`)")
    points = rp.load(vdir)
    if not points:
        raise InputError(f"VM {vm!r} has no restore point yet: nothing to fail over to")
    point = points[rp.find(points, point_id, vm)] if point_id else points[-1]
    if st is None:
        st = {"state": "failing-over", "point": point.id, "since": now(), "newest": points[-1].id}
        _write_state(vdir, st)  # passes are refused from here on
    elif st.get("point") != point.id:
        raise InputError(f"VM {vm!r} is failing over to point {st.get('point')}: run that failover again")
    if "rolled" not in st:  # a failover run again after a crash does not roll twice
        rolled = roll_to(data_dir, vm, point.id, origin="failover")
        st = {**st, "rolled": rolled}
        _write_state(vdir, st)
    deltas = {}
    for disk in point.disks:
        # Made afresh each time: a delta left by a crash may be half-made, and nothing ran from it
        # (the VM is started only once this command has said the failover is done).
        delta = DELTA.format(disk=disk)
        unlink_durable(vdir / delta)
        _qemu_img("create", "-q", "-f", "vmdk", "-b", f"{disk}.vmdk", "-F", "vmdk", delta, cwd=vdir)
        deltas[disk] = delta
    st = {**st, "state": "failed-over", "deltas": deltas}
    _write_state(vdir, st)
    return st


def undo_failover(data_dir: Path, vm: str) -> str:
    """End a test or a permanent failover; replication goes on as before it."""
    vdir = data_dir / vm
    st = read_state(vdir)
    if st is None:
        raise InputError(f"VM {vm!r} is not failed over: nothing to undo")
    if st.get("state") == "committed":
        raise InputError(f"VM {vm!r}'s failover was committed: it can only come home by failback")
    if st.get("state") == "committing":
        raise InputError(
            f"VM {vm!r}'s failover is being committed (a commit stopped half-way): the replica holds part"
            " of the VM's writes, so it cannot go back; finish with `vzrep-target failover --commit`"
        )
    if st.get("state") == "test":
        shutil.rmtree(st.get("dir", ""), ignore_errors=True)
        unlink_durable(vdir / STATE)
        return f"test failover of VM {vm!r} ended; its scratch copy is removed"
    unlink_durable(*(vdir / d for d in (st.get("deltas") or {}).values()))
    if st.get("rolled"):
        roll_to(data_dir, vm, st["newest"], origin="failover-undo")
    unlink_durable(vdir / STATE)
    return (
        f"failover of VM {vm!r} undone: the replica is back at point {st.get('newest')} and replicates again"
    )


def release(data_dir: Path, vm: str, *, force: bool = False) -> str:
    """After failback: the replica (now equal to the original again) accepts passes."""
    vdir = data_dir / vm
    check_releasable(read_state(vdir), vm, force)
    unlink_durable(vdir / STATE)
    return f"VM {vm!r} replicates again: the next pass re-hashes the replica and sends only what differs"


def check_releasable(st: dict[str, Any] | None, vm: str, force: bool) -> None:
    """Only a failover brought home is released: the next forward pass overwrites the replica with the
    source, so releasing production that never went home would lose what it wrote."""
    state = st and st.get("state")
    if state == "failed-back" or (force and state in ("committed", "failing-back")):
        return
    if state in ("committed", "failing-back"):
        raise InputError(
            f"VM {vm!r} is {state}: the next forward pass would overwrite what it wrote here; bring it home"
            " first (`vzrep-target failback`), or add --force if it went home another way"
        )
    raise InputError(
        f"VM {vm!r} has no committed failover to release (state {state}); a failover that is not"
        " committed ends with --undo"
    )


def commit_failover(data_dir: Path, vm: str) -> str:
    """Make the failover final: the deltas' writes go into the replica, which is production now."""
    vdir = data_dir / vm
    st = read_state(vdir)
    if st is None or st.get("state") not in ("failed-over", "committing", "committed"):
        raise InputError(f"VM {vm!r} is not failed over (state {st and st.get('state')}): nothing to commit")
    if st["state"] == "failed-over":
        st = {**st, "state": "committing"}
        _write_state(vdir, st)  # from here the way back is gone: undo is refused, commit finishes
    for disk, delta in (st.get("deltas") or {}).items():
        if (vdir / delta).exists():
            _qemu_img("commit", "-q", "-d", delta, cwd=vdir)  # -d: the delta stays whole until removed
            unlink_durable(vdir / delta)
        paths = ReplicaPaths(vdir, disk)
        unlink_durable(paths.map)  # the map no longer describes the disk: a later pass re-hashes it
    _write_state(vdir, {**st, "state": "committed", "committed": now()})
    shutil.rmtree(rp.points_dir(vdir), ignore_errors=True)  # points older than production's own bytes
    return f"failover of VM {vm!r} committed: the replica is production; bring it home with failback"
