"""A pass over one VM's replica: begin, write disks, commit or roll back.

The pass journal ``DATA_DIR/<vm>/.vzpass`` says where a pass is; recovery reads it at start-up.

Commit order (a crash at any step recovers to the old or the new state):

1. flush and fsync every disk's flat extent (data durable);
2. write every disk's ``NAME.vmdk.next`` (new CID) and ``NAME-flat.vmdk.vzmap.next`` (new generation,
   CID and change id), each fsynced; fsync the directory;
3. **commit point**: atomically rewrite ``.vzpass`` with ``state = committed``;
4. rename every ``.next`` file over its final name; fsync the directory;
5. rename every ``.vzundo`` into ``points/<generation>/`` as the new restore point's reverse
   increment (or unlink it when no point keeps it), write the restore-point index, remove the
   increments retention dropped (``points``); unlink ``vzundo-script``; fsync the directories;
6. write ``vzrep-status.json``, unlink ``.vzpass``.

Recovery: a journal in state ``committed`` redoes steps 4-6 (roll forward). A journal in state
``active``, or undo logs without a journal, mean the pass never reached the commit point: every disk
is restored from its undo log, ``.next`` files are removed (roll back). Both are idempotent.

Device-backed disks (vSphere jobs, see ``replica``): the journal's ``devices`` maps each such disk to
where its flat bytes were written and to what the caller needs to find that disk again after a
restart (for vSphere: the replica disk's datastore path, so it can be HotAdded again). A block device
node is not trusted across a restart -- ``/dev/sdb`` may be another disk by then -- so recovering
such a pass needs the caller to say where the disk is now (``devices=``); without that the VM stays
pending and :class:`DeviceNotAttached` says what to do. A regular file (a datastore the appliance
mounts) is the disk itself and is used where it is.
"""

from __future__ import annotations

import datetime as dt
import secrets
import shlex
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from protocol.messages import valid_name
from vzcommon import fsio
from vzcommon.durable import atomic_write, fsync_dir, unlink_durable
from vzcommon.errors import InputError, IntegrityError
from vzcommon.log import get_logger
from vzcommon.records import read_record, write_record

from . import points
from .lock import VmLock
from .paths import PRIVATE_DIR, DeviceNotAttached, ReplicaPaths, make_private
from .replica import DiskWriter, OpenResult
from .rollback import roll_forward_disk, rollback_disk

log = get_logger("vzrep.target.pass")

JOURNAL = ".vzpass"
JOURNAL_MAGIC = "vzrep-pass-journal"
STATUS = "vzrep-status.json"
STATUS_MAGIC = "vzrep-vm-status"
SCRIPT = "vzundo-script"


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def vm_dir(data_dir: Path, vm: str) -> Path:
    if not valid_name(vm):
        raise InputError(f"invalid VM name {vm!r}: use letters, digits, '.', '_', '+' or '-', without '..'")
    return data_dir / vm


def pending_disks(vdir: Path) -> list[str]:
    """Disks with pass leftovers (undo logs or ``.next`` files)."""
    names = set()
    for p in vdir.iterdir():
        for suffix in ("-flat.vmdk.vzundo", "-flat.vmdk.vzmap.next", ".vmdk.next"):
            if p.name.endswith(suffix):
                names.add(p.name[: -len(suffix)])
    return sorted(names)


def read_journal(vdir: Path) -> dict[str, Any] | None:
    path = vdir / JOURNAL
    if not path.exists():
        return None
    try:
        return read_record(path, JOURNAL_MAGIC)
    except IntegrityError:
        # The journal is written atomically, so a damaged one was damaged at rest: do not guess
        # that the pass committed; roll back, which is always safe.
        log.warning("journal_corrupt", vm=vdir.name)
        return {"state": "active", "disks": []}


def journal_devices(journal: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The device-backed disks of a journaled pass: name -> {"path": ..., and the caller's details}."""
    devices = (journal or {}).get("devices") or {}
    return {str(k): dict(v) for k, v in devices.items() if isinstance(v, dict) and v.get("path")}


def _device_paths(
    vdir: Path, journal: Mapping[str, Any] | None, given: Mapping[str, Path] | None
) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for name, info in journal_devices(journal).items():
        path = (given or {}).get(name)
        if path is None:
            stored = Path(info["path"])
            try:
                is_file = stat.S_ISREG(stored.stat().st_mode)
            except OSError:
                is_file = False
            if not is_file:
                raise DeviceNotAttached(
                    f"the interrupted pass {(journal or {}).get('pass_id', '?')} of VM {vdir.name} wrote replica"
                    f" disk {name!r} through {stored} ({info.get('file_name') or 'a device'}), which is not"
                    " known to be attached now: start `vzrep-target serve` with the job's --vcenter options"
                    " so it attaches the disk again and rolls the pass back"
                )
            path = stored
        out[name] = path
    return out


def recover_locked(vdir: Path, devices: Mapping[str, Path] | None = None) -> str | None:
    """Finish or undo an interrupted pass of the VM in ``vdir`` (lock held). Returns what was done.

    ``devices``: where the device-backed disks of the pass are now (module docstring)."""
    from .mapping import finish as finish_mapping  # imports this module

    finish_mapping(vdir)  # a mapping interrupted after its commit point (``mapping``)
    journal = read_journal(vdir)
    disks = sorted(set(pending_disks(vdir)) | set(journal.get("disks", []) if journal else []))
    if journal is None and not disks and not (vdir / SCRIPT).exists():
        return None
    if journal is not None and journal.get("state") == "committed":
        kept = (
            [points.Point.from_json(p) for p in journal["points"]["points"]] if "points" in journal else None
        )
        newest = kept[-1] if kept else None
        for d in disks:  # moves map and undo files only: no device needed
            keep_as = newest.id if newest is not None and d in newest.increments else None
            roll_forward_disk(ReplicaPaths(vdir, d), keep_as)
        if kept is not None:
            points.write_index(vdir, kept)
            points.prune(vdir, kept)
        unlink_durable(vdir / SCRIPT)
        _write_status(vdir, journal.get("status", {}))
        unlink_durable(vdir / JOURNAL)
        log.info("recovered_forward", vm=vdir.name, disks=disks)
        return f"finished the committed pass {journal.get('pass_id', '?')} ({len(disks)} disks)"
    paths = _device_paths(vdir, journal, devices)
    details = [f"{d}: {rollback_disk(ReplicaPaths(vdir, d, paths.get(d)))}" for d in disks]
    unlink_durable(vdir / SCRIPT)
    status = _read_status(vdir)
    if journal is not None:
        status["last_failure"] = {"pass_id": journal.get("pass_id"), "rolled_back_at": now()}
        _write_status(vdir, status)
    unlink_durable(vdir / JOURNAL)
    log.warning("rolled_back", vm=vdir.name, details=details)
    return "rolled back the interrupted pass" + (f" ({'; '.join(details)})" if details else "")


def recover_vm(data_dir: Path, vm: str, devices: Mapping[str, Path] | None = None) -> str | None:
    vdir = vm_dir(data_dir, vm)
    if not vdir.is_dir():
        raise InputError(f"no replica of VM {vm!r} in {data_dir}")
    with VmLock(vdir, vm):
        return recover_locked(vdir, devices)


def recover_all(data_dir: Path) -> dict[str, str]:
    """Start-up recovery: what an interrupted seed or mapping left beside the VM directories is put
    right (``seed.recover_stages``, ``mapping.recover_staging``), then every pending pass is rolled
    back (or forward) before work is accepted.

    A VM whose pending pass needs a device that is not attached stays pending and is reported; its
    next pass is refused with the same message until it is recovered."""
    from .mapping import recover_staging  # both import this module
    from .seed import recover_stages

    done: dict[str, str] = {}
    if not data_dir.is_dir():
        return done
    done.update(recover_stages(data_dir))  # first: a replica a crashed seed had moved aside comes back
    for vm, staged in recover_staging(data_dir).items():
        done[vm] = f"{done[vm]}; {staged}" if vm in done else staged
    for vdir in sorted(p for p in data_dir.iterdir() if p.is_dir() and valid_name(p.name)):
        with VmLock(vdir, vdir.name):
            try:
                what = recover_locked(vdir)
            except DeviceNotAttached as exc:
                log.error("recovery_needs_device", vm=vdir.name, error=str(exc))
                what = f"NOT recovered: {exc}"
        if what:
            done[vdir.name] = f"{what}; {done[vdir.name]}" if vdir.name in done else what
    return done


def _read_status(vdir: Path) -> dict[str, Any]:
    try:
        return read_record(vdir / STATUS, STATUS_MAGIC)
    except (OSError, IntegrityError):
        return {}


def _write_status(vdir: Path, status: dict[str, Any]) -> None:
    if status:
        write_record(vdir / STATUS, STATUS_MAGIC, status)


def _points_from_status(vdir: Path) -> list[points.Point]:
    """A replica from before restore points: its last committed pass becomes its first point."""
    last = _read_status(vdir).get("last_pass")
    if not isinstance(last, dict) or not last.get("generation"):
        return []
    try:
        return [
            points.Point(
                id=str(last["generation"]),
                time=str(last.get("finished", "")),
                pass_id=str(last.get("pass_id", "")),
                disks={str(n): int(d["size"]) for n, d in last.get("disks", {}).items()},
                origin="upgrade",
            )
        ]
    except (KeyError, TypeError, ValueError):
        return []


class VmPass:
    """One pass for one VM, owned by one target session."""

    def __init__(
        self,
        data_dir: Path,
        vm: str,
        *,
        block_size: int,
        peer: str = "",
        restore_points: int = points.DEFAULT_RETENTION,
        job: str = "",
    ) -> None:
        if restore_points < 1:
            raise InputError(f"--restore-points must be at least 1, not {restore_points}")
        self.restore_points = restore_points
        self.job = job
        self.data_dir = data_dir
        self.vm = vm
        self.vdir = vm_dir(data_dir, vm)
        self.block_size = block_size
        self.peer = peer
        self.pass_id = secrets.token_hex(8)
        self.disks: dict[str, DiskWriter] = {}
        self.devices: dict[str, dict[str, Any]] = {}  # device-backed disks, as journaled
        self.started = now()
        self._lock = VmLock(self.vdir, vm)
        self._active = False

    def begin(self, devices: Mapping[str, Path] | None = None) -> str | None:
        """Lock the VM, recover leftovers of an earlier pass, journal this one, write the undo script.

        ``devices``: where the device-backed disks of an interrupted earlier pass are now."""
        self.data_dir.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        if not self.vdir.exists():
            fsio.mkdir(self.vdir, PRIVATE_DIR)
            fsync_dir(self.data_dir)
        make_private(self.vdir, PRIVATE_DIR)  # also when it pre-existed (seeded, made by hand)
        self._lock.acquire()
        try:
            recovered = recover_locked(self.vdir, devices)
            self._journal("active")
            self._write_script()
            self._active = True
        except BaseException:
            self._lock.release()
            raise
        return recovered

    def _points(self, generation: str, finished: str) -> list[points.Point] | None:
        """The VM's restore points once this pass commits (retention applied); None for a
        device-backed (vSphere) replica, whose restore points are snapshots of the replica VM."""
        if self.devices:
            return None
        earlier = points.load(self.vdir) or _points_from_status(self.vdir)
        increments = {n: w.increment() for n, w in self.disks.items()} if earlier else {}
        new = points.Point(
            id=generation,
            time=finished,
            pass_id=self.pass_id,
            disks={n: w.size for n, w in self.disks.items()},
            change_ids={n: w.change_id for n, w in self.disks.items() if w.change_id},
            job=self.job,
            increments=increments if self.restore_points > 1 else {},
        )
        return points.retain([*earlier, new], self.restore_points)

    def _journal(
        self, state: str, status: dict[str, Any] | None = None, kept: list[points.Point] | None = None
    ) -> None:
        body: dict[str, Any] = {
            "state": state,
            "pass_id": self.pass_id,
            "disks": sorted(self.disks),
            "started": self.started,
            "peer": self.peer,
        }
        if self.devices:
            body["devices"] = self.devices
        if status is not None:
            body["status"] = status
        if kept is not None:
            body["points"] = points.index_body(kept)
        write_record(self.vdir / JOURNAL, JOURNAL_MAGIC, body)

    def _write_script(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "target_agent.cli",
            "rollback",
            "--data-dir",
            str(self.data_dir),
            "--vm",
            self.vm,
        ]
        text = (
            "#!/bin/sh\n"
            f"# vzrep: roll back the replication pass {self.pass_id} of VM {self.vm} (started {self.started}).\n"
            "# Restores every block this pass overwrote from the .vzundo files. Safe to run more than once.\n"
            f'exec {shlex.join(cmd)} "$@"\n'
        )
        atomic_write(self.vdir / SCRIPT, text.encode(), mode=0o750)

    def open_disk(
        self,
        name: str,
        size: int,
        cached_generation: str,
        change_id: str,
        *,
        device: Path | None = None,
        device_info: Mapping[str, Any] | None = None,
        fresh: bool = False,
        rehash: bool = False,
    ) -> tuple[DiskWriter, OpenResult]:
        """Open a disk of the pass; ``device`` makes it device-backed (``replica`` module docstring),
        ``device_info`` is journaled with it so recovery can find the disk again after a restart."""
        if not valid_name(name):
            raise InputError(f"invalid disk name {name!r}")
        writer = DiskWriter(
            ReplicaPaths(self.vdir, name, device),
            size=size,
            block_size=self.block_size,
            pass_id=self.pass_id,
            change_id=change_id,
            fresh=fresh,
        )
        self.disks[name] = writer
        if device is not None:
            self.devices[name] = {**(device_info or {}), "path": str(device)}
        self._journal("active")  # the journal lists every disk (and device) before its undo log exists
        try:
            result = writer.open(cached_generation, rehash=rehash)
        except BaseException:
            writer.close()
            raise
        return writer, result

    def commit(self, summary: dict[str, Any]) -> str:
        """Run the commit sequence in the module docstring; returns the new generation."""
        generation = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(6)}"
        cids = {}
        for name, w in self.disks.items():  # steps 1-2
            cids[name] = w.prepare_commit(generation)
        fsync_dir(self.vdir)
        status = _read_status(self.vdir)
        status["vm"] = self.vm
        status["last_pass"] = {
            **summary,
            "pass_id": self.pass_id,
            "generation": generation,
            "started": self.started,
            "finished": now(),
            "peer": self.peer,
            "disks": {n: {"size": w.size, "cid": f"{cids[n]:08x}"} for n, w in self.disks.items()},
        }
        kept = self._points(generation, status["last_pass"]["finished"])
        self._journal("committed", status, kept)  # step 3: the commit point
        for w in self.disks.values():
            w.close()
        newest = kept[-1] if kept else None
        for w in self.disks.values():  # steps 4-5 (the undo logs become the new point's increments)
            keep = generation if newest is not None and w.paths.disk in newest.increments else None
            roll_forward_disk(w.paths, keep)
        if kept is not None:
            points.write_index(self.vdir, kept)
            points.prune(self.vdir, kept)
        unlink_durable(self.vdir / SCRIPT)
        _write_status(self.vdir, status)  # step 6
        unlink_durable(self.vdir / JOURNAL)
        self._active = False
        return generation

    def rollback(self) -> str:
        for w in self.disks.values():
            w.close()
        here = {n: Path(d["path"]) for n, d in self.devices.items()}  # still attached: this pass's own
        what = recover_locked(self.vdir, here) or "nothing to undo"
        self._active = False
        return what

    def discard(self) -> None:
        """End a verify: nothing was written, so undo what the pass set up (journal, empty undo logs,
        the unused next map) without recording it as a failed pass."""
        status = _read_status(self.vdir)
        self.rollback()
        _write_status(self.vdir, status)

    def close(self) -> None:
        """Release the VM; a pass that neither committed nor rolled back is rolled back first."""
        try:
            if self._active:
                self.rollback()
        finally:
            for w in self.disks.values():
                w.close()
            self._lock.release()


def list_vms(data_dir: Path) -> list[Path]:
    if not data_dir.is_dir():
        return []
    return sorted(
        p for p in data_dir.iterdir() if p.is_dir() and valid_name(p.name) and not p.name.startswith(".")
    )
