"""One target pass of a vSphere job: the replica VM, its disks HotAdded for the pass, a restore point.

The target session drives a :class:`ReplicaPass`::

    HELLO       start(): connect, find the appliance, work out the replica's hardware, ensure the
                replica VM (create it at the first pass, grow disks that grew), HotAdd its disks
    OPEN_DISK   device(name, size): where the core writer writes that disk (device-backed replica)
    COMMIT      the core commit, then finish(pass_id): detach, then take a restore point
    failure     the core rollback through .vzundo (disks still attached), then finish(None): detach

**Where the replica's hardware comes from.** The protocol carries only disk names and sizes
(OPEN_DISK), not the source VM's hardware. The target therefore reads the hardware itself: from the
source VM as its own vCenter sees it (one vCenter for both sites, the common case), with disk names
kept from the record this module stores in ``DATA_DIR/<vm>/vsphere-replica.json`` after each commit;
when the source VM is not visible, from that stored record. A first pass into a vCenter that cannot
see the source VM needs a replica VM the operator created with the same hardware, named with
``--replica-vm`` (disks are then matched to the source's by their order). OPEN_DISK sizes are checked
against the replica's disks, so a stale record can never make the writer run past a disk's end.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from target_agent.storage.transaction import journal_devices, list_vms, read_journal, recover_vm
from target_agent.vsphere.hotadd import ReplicaDevice, replica_disks
from target_agent.vsphere.mapping import mapped_replica_vm
from target_agent.vsphere.replica import REPLICA_MARKER, ReplicaVm, ensure_replica_vm
from target_agent.vsphere.restore_points import DEFAULT_RETENTION, take_restore_point
from vsphere.appliance import PRODUCT_UUID, find_appliance
from vsphere.cleanup import cleanup_orphans, run_shielded
from vsphere.client import VSphereClient
from vsphere.connection import connect
from vsphere.devices import DatastoreFileLocator, Locator, find_block_device, locate
from vsphere.hardware import HardwareRecord
from vsphere.model import AttachedDisk, HotAddRequest, VmInfo
from vsphere.options import ConnectOptions
from vzcommon.errors import InputError, VSphereError, VzrepError
from vzcommon.records import read_record, write_record

log = logging.getLogger(__name__)

RECORD = "vsphere-replica.json"
RECORD_MAGIC = "vzrep-vsphere-replica"
HOTADD_MODE: Final = "independent_persistent"


@dataclass(frozen=True)
class ReplicaSettings:
    """``vzrep-target serve --vcenter ...``: where replicas live and how the appliance finds disks."""

    connect: ConnectOptions
    appliance_vm: str | None = None
    uuid_path: Path = Path(PRODUCT_UUID)
    replica_vm: str | None = None  # an existing VM (name or moid) the job names as its replica
    folder: str | None = None
    datastore: str | None = None
    resource_pool: str | None = None
    host: str | None = None
    restore_points: int = DEFAULT_RETENTION
    #: datastore name -> local directory (NFS datastores mounted on the appliance; vcsim in tests)
    datastore_roots: Mapping[str, Path] = field(default_factory=dict)
    locate_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.restore_points < 1:
            raise InputError(f"--restore-points must be at least 1, not {self.restore_points}")

    def locator(self) -> Locator:
        if self.datastore_roots:
            return DatastoreDiskLocator(self.datastore_roots)
        return find_block_device


class DatastoreDiskLocator(DatastoreFileLocator):
    """The replica disk's ``-flat.vmdk`` on a datastore this appliance mounts, at its full size.

    ESXi shows a thin disk's flat file at the disk's capacity; vcsim creates it empty and does not
    extend it when the disk grows, so a file shorter than the disk is extended (sparse, reads as zeros)
    -- exactly what the HotAdded device would show."""

    def __call__(self, disk: AttachedDisk) -> Path:
        path = super().__call__(disk)
        st = path.stat()
        if stat.S_ISREG(st.st_mode) and disk.capacity and st.st_size < disk.capacity:
            os.truncate(path, disk.capacity)
        return path


def load_record(vdir: Path) -> HardwareRecord | None:
    path = vdir / RECORD
    if not path.exists():
        return None
    body = read_record(path, RECORD_MAGIC)
    return HardwareRecord.from_json(str(body["hardware"]))


def _by_order(vm_name: str, replica: VmInfo) -> HardwareRecord:
    """A record for an operator-made replica when the source VM is not visible: its own hardware,
    its disks named ``#<i>`` in device-key order -- matched to OPEN_DISK by position later."""
    rec = HardwareRecord.from_vm(replica)
    disks = tuple(replace(d, name=f"#{i}") for i, d in enumerate(rec.disks))
    return replace(rec, vm_name=vm_name, disks=disks)


@dataclass
class DiskTarget:
    path: Path
    info: dict[str, Any]  # journaled with the pass, to attach the disk again after a crash
    fresh: bool


class ReplicaPass:
    """The vSphere side of one target pass (module docstring)."""

    def __init__(self, settings: ReplicaSettings, vm: str, vdir: Path) -> None:
        self.settings, self.vm, self.vdir = settings, vm, vdir
        self.client: VSphereClient | None = None
        self.own_vm: VmInfo | None = None
        self.replica: ReplicaVm | None = None
        self.hardware: HardwareRecord | None = None
        self.devices: dict[str, ReplicaDevice] = {}
        self.events: list[str] = []
        self._stack = contextlib.AsyncExitStack()
        self._opened: list[str] = []
        self._by_order = False  # an operator-made replica matched to the source's disks by order
        #: the existing VM this VM is mapped onto (``vzrep-target map --replica-vm``), else serve's
        self.existing = settings.replica_vm

    async def start(self) -> None:
        s = self.settings
        self.existing = await asyncio.to_thread(mapped_replica_vm, self.vdir) or s.replica_vm
        self.client = await connect(s.connect)
        self.own_vm = await find_appliance(self.client, uuid_path=s.uuid_path, name=s.appliance_vm)
        self.hardware = await self._hardware()
        self.replica = await ensure_replica_vm(
            self.client,
            self.hardware,
            existing=self.existing,
            folder=s.folder,
            datastore=s.datastore,
            resource_pool=s.resource_pool,
            host=s.host,
        )
        if self.replica.vm.power_state == "poweredOn":
            raise InputError(
                f"the replica VM {self.replica.vm.name} ({self.replica.vm.moid}) is powered on: a pass never"
                " writes the disks of a running VM; power it off first (a failed-over replica is ended with"
                " `vzrep-target failover --undo`, or released after failback with `--release`)"
            )
        if self.replica.created:
            self.events.append(f"created the replica VM {self.replica.vm.name} ({self.replica.vm.moid})")
        self.events += [f"grew replica disk {n}" for n in self.replica.grown]
        self.devices = await self._stack.enter_async_context(
            replica_disks(
                self.client,
                self.replica,
                self.own_vm.moid,
                locator=s.locator(),
                locate_timeout=s.locate_timeout,
            )
        )
        log.info(
            "replica %s (%s): %d disks HotAdded to %s",
            self.replica.vm.name,
            self.replica.vm.moid,
            len(self.devices),
            self.own_vm.name,
        )

    async def _hardware(self) -> HardwareRecord:
        assert self.client is not None
        stored = await asyncio.to_thread(load_record, self.vdir)
        try:
            source = await self.client.find_vm(self.vm)
        except InputError:
            source = None
        if source is not None and REPLICA_MARKER not in source.annotation:
            return HardwareRecord.from_vm(source, stored)
        if stored is not None:
            return stored
        if self.existing:
            self._by_order = True
            return _by_order(self.vm, await self.client.find_vm(self.existing))
        raise InputError(
            f"the target's vCenter {self.client.host} does not see the source VM {self.vm!r}, so the replica's"
            " hardware is unknown: create the replica VM there with the source's hardware and name it with"
            " --replica-vm"
        )

    def device(self, name: str, size: int) -> DiskTarget:
        """Where the core writer writes source disk ``name`` (OPEN_DISK)."""
        assert self.replica is not None
        dev = self.devices.get(name)
        if dev is None and self._by_order:
            dev = self.devices.get(f"#{len(self._opened)}")  # an operator-made replica: by order
        if dev is None:
            raise InputError(
                f"the source disk {name!r} has no disk in the replica VM {self.replica.vm.name}"
                f" (it has {sorted(self.devices)}); configure the replica VM the same way as the source"
            )
        if size > dev.size:
            raise VSphereError(
                f"source disk {name!r} has {size} bytes, replica disk {dev.attached.file_name} {dev.size}:"
                " the source VM's hardware as this vCenter sees it is out of date; retry the pass"
            )
        self._opened.append(name)
        info = {
            "file_name": dev.attached.file_name,
            "capacity": dev.size,
            "replica_vm": self.replica.vm.moid,
        }
        return DiskTarget(dev.path, info, fresh=self.replica.created)

    async def finish(self, committed_pass: str | None) -> list[str]:
        """Detach the disks (always, shielded); after a commit, store the record and take a restore
        point. Never raises after a commit (the data is in); problems come back as notes."""
        notes: list[str] = []
        try:
            await self._stack.aclose()
        except VzrepError as exc:
            if committed_pass is None:
                raise
            notes.append(f"detaching the replica disks failed ({exc}); the next start detaches them")
        try:
            if committed_pass is not None and self.client is not None and self.replica is not None:
                if self.hardware is not None and not self._by_order:
                    body = {"hardware": self.hardware.to_json(), "replica_vm": self.replica.vm.moid}
                    await asyncio.to_thread(write_record, self.vdir / RECORD, RECORD_MAGIC, body)
                try:
                    rp = await take_restore_point(
                        self.client,
                        self.replica.vm.moid,
                        pass_id=committed_pass,
                        retention=self.settings.restore_points,
                    )
                except VzrepError as exc:
                    notes.append(f"the pass committed but no restore point was taken: {exc}")
                else:
                    self.events.append(f"restore point {rp.created.name} ({rp.created.moid})")
                    self.events += [f"removed the oldest restore point {s.name}" for s in rp.removed]
        finally:
            if self.client is not None:
                await run_shielded(self.client.close)
                self.client = None
        for n in notes:
            log.warning("%s", n)
        return notes


async def recover_devices(settings: ReplicaSettings, data_dir: Path) -> dict[str, str]:
    """Start-up, before ``recover_all``: detach what a crashed run left HotAdded to this appliance,
    then for each VM whose interrupted pass wrote device-backed disks, HotAdd those disks again and
    roll the pass back through them, then detach them."""
    done: dict[str, str] = {}
    pending = [(v, read_journal(v)) for v in await asyncio.to_thread(list_vms, data_dir)]
    pending = [(v, j) for v, j in pending if j is not None and journal_devices(j)]
    client = await connect(settings.connect)
    try:
        app = await find_appliance(client, uuid_path=settings.uuid_path, name=settings.appliance_vm)
        orphans = await cleanup_orphans(client, app.moid)
        done.update({f"appliance {app.name}": line for line in orphans.lines()})
        for vdir, journal in pending:
            assert journal is not None
            if journal.get("state") == "committed":  # rolls forward: only map files move
                what = await asyncio.to_thread(recover_vm, data_dir, vdir.name)
                done[vdir.name] = what or "nothing to do"
                continue
            devs = journal_devices(journal)
            names = list(devs)
            requests = [
                HotAddRequest(
                    str(devs[n]["file_name"]),
                    int(devs[n]["capacity"]),
                    HOTADD_MODE,
                    f"{devs[n].get('replica_vm', '')}/-",
                )
                for n in names
            ]
            attached: list[AttachedDisk] = []
            try:
                attached = await client.hotadd(app.moid, requests)
                paths = {
                    n: await locate(settings.locator(), a, settings.locate_timeout)
                    for n, a in zip(names, attached, strict=True)
                }
                what = await asyncio.to_thread(recover_vm, data_dir, vdir.name, paths)
                done[vdir.name] = f"{what} (replica disks attached again for the rollback)"
            except VzrepError as exc:
                done[vdir.name] = f"NOT recovered: {exc}"
                log.error("recovery of %s failed: %s", vdir.name, exc)
            finally:
                if attached:
                    await run_shielded(functools.partial(client.detach, app.moid, attached))
    finally:
        await run_shielded(client.close)
    return done
