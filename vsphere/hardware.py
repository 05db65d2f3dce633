"""The one hardware model: what a job records at its first pass, and the check that it has not changed.

:class:`HardwareRecord` is stored by the source (``vsphere/<vm>/hardware.json`` in its state dir) and
by the target (in ``vsphere-replica.json``), and it is what :meth:`VSphereClient.create_vm` builds a
replica VM from: one type from the source VM's configuration to the replica's.

A replica is only usable if the target VM has the source's hardware, and HotAdd replication cannot
carry hardware changes (see the seed), so any change other than a grown disk stops the pass and tells
the user to configure the target VM the same way and edit the job. A grown disk is reported apart:
the replica disk grows and that disk falls back to a differential pass (vSphere resets CBT on resize).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from vsphere.model import VmInfo, stable_disk_names
from vzcommon.errors import InputError


@dataclass(frozen=True)
class DiskRecord:
    key: int
    name: str  # stable name: the replica's file name and the key of the target's map
    capacity: int
    controller_type: str
    bus_number: int
    unit_number: int


@dataclass(frozen=True)
class NicRecord:
    key: int
    type: str
    network: str | None


@dataclass(frozen=True)
class HardwareRecord:
    vm_name: str
    hardware_version: str
    guest_id: str
    firmware: str
    num_cpu: int
    cores_per_socket: int
    memory_mb: int
    disks: tuple[DiskRecord, ...]
    nics: tuple[NicRecord, ...] = field(default=())
    format_version: int = 1

    @classmethod
    def from_vm(cls, vm: VmInfo, previous: HardwareRecord | None = None) -> HardwareRecord:
        """Record ``vm``; disk names are kept from ``previous`` so they never change."""
        names = stable_disk_names(vm.disks)
        if previous is not None:
            names.update({d.key: d.name for d in previous.disks})
        return cls(
            vm_name=vm.name,
            hardware_version=vm.hardware_version,
            guest_id=vm.guest_id,
            firmware=vm.firmware,
            num_cpu=vm.num_cpu,
            cores_per_socket=vm.cores_per_socket,
            memory_mb=vm.memory_mb,
            disks=tuple(
                DiskRecord(d.key, names[d.key], d.capacity, d.controller_type, d.bus_number, d.unit_number)
                for d in sorted(vm.disks, key=lambda d: d.key)
            ),
            nics=tuple(NicRecord(n.key, n.type, n.network) for n in sorted(vm.nics, key=lambda n: n.key)),
        )

    def disk(self, key: int) -> DiskRecord | None:
        return next((d for d in self.disks if d.key == key), None)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> HardwareRecord:
        try:
            raw: dict[str, Any] = json.loads(text)
            if raw.get("format_version") != 1:
                raise ValueError(f"format_version {raw.get('format_version')!r}")
            raw["disks"] = tuple(DiskRecord(**d) for d in raw["disks"])
            raw["nics"] = tuple(NicRecord(**n) for n in raw.get("nics", ()))
            return cls(**raw)
        except (ValueError, TypeError, KeyError) as e:
            raise InputError(
                f"the job's recorded VM hardware is unreadable ({e}); edit the job: record it again with"
                " `vzrep-source accept-hardware --vm NAME --vcenter ...`"
            ) from e


@dataclass(frozen=True)
class HardwareDiff:
    changes: tuple[str, ...]  # human-readable, one per change
    grown: dict[int, tuple[int, int]]  # disk key -> (recorded, current) capacity

    @property
    def ok(self) -> bool:
        return not self.changes


class HardwareChanged(InputError):
    """The source VM's hardware differs from the job's record; the pass must not run."""

    def __init__(self, vm_name: str, changes: tuple[str, ...]) -> None:
        self.changes = changes
        lines = "; ".join(changes)
        super().__init__(
            f"the hardware of VM {vm_name} changed since the job was configured: {lines}. "
            "Replication cannot carry hardware changes: configure the target VM the same way, "
            f"then edit the job to record the new hardware: `vzrep-source accept-hardware --vm {vm_name}"
            " --vcenter ...` (the pass's vCenter options and --state-dir) shows the change and records it"
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def compare(recorded: HardwareRecord, current: HardwareRecord) -> HardwareDiff:
    changes: list[str] = []
    for label, attr in (
        ("hardware version", "hardware_version"),
        ("guest OS", "guest_id"),
        ("firmware", "firmware"),
        ("CPUs", "num_cpu"),
        ("cores per socket", "cores_per_socket"),
        ("memory (MB)", "memory_mb"),
    ):
        a, b = getattr(recorded, attr), getattr(current, attr)
        if a != b:
            changes.append(f"{label} {a} -> {b}")
    grown: dict[int, tuple[int, int]] = {}
    rec = {d.key: d for d in recorded.disks}
    cur = {d.key: d for d in current.disks}
    for key in sorted(rec.keys() - cur.keys()):
        changes.append(f"disk {rec[key].name} (key {key}) was removed")
    for key in sorted(cur.keys() - rec.keys()):
        d = cur[key]
        changes.append(f"a disk was added: {d.name} (key {key}, {_gib(d.capacity)})")
    for key in sorted(rec.keys() & cur.keys()):
        a, b = rec[key], cur[key]
        if (a.controller_type, a.bus_number, a.unit_number) != (
            b.controller_type,
            b.bus_number,
            b.unit_number,
        ):
            changes.append(
                f"disk {a.name} moved from {a.controller_type} {a.bus_number}:{a.unit_number} "
                f"to {b.controller_type} {b.bus_number}:{b.unit_number}"
            )
        if b.capacity > a.capacity:
            grown[key] = (a.capacity, b.capacity)
        elif b.capacity < a.capacity:
            changes.append(f"disk {a.name} shrank from {_gib(a.capacity)} to {_gib(b.capacity)}")
    rn = {n.key: n for n in recorded.nics}
    cn = {n.key: n for n in current.nics}
    for key in sorted(rn.keys() - cn.keys()):
        changes.append(f"network adapter {rn[key].type} (key {key}) was removed")
    for key in sorted(cn.keys() - rn.keys()):
        changes.append(f"a network adapter was added: {cn[key].type} on {cn[key].network}")
    for key in sorted(rn.keys() & cn.keys()):
        if (rn[key].type, rn[key].network) != (cn[key].type, cn[key].network):
            changes.append(
                f"network adapter {key} changed from {rn[key].type} on {rn[key].network} "
                f"to {cn[key].type} on {cn[key].network}"
            )
    return HardwareDiff(tuple(changes), grown)


def check(recorded: HardwareRecord, current: HardwareRecord) -> HardwareDiff:
    """Raise :class:`HardwareChanged` unless the only changes are grown disks."""
    diff = compare(recorded, current)
    if not diff.ok:
        raise HardwareChanged(recorded.vm_name, diff.changes)
    return diff
