"""Plain records of what vSphere told us (and what we ask of it), and the names that mark ours.

Nothing outside the client modules of this package touches pyVmomi objects: managed objects are named
by their managed object id (``moid``, e.g. ``vm-57``), and the client turns a moid back into a
pyVmomi object when it needs one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from vzcommon.errors import VSphereError

#: snapshot names the agent recognises as its own (never touch snapshots without these prefixes)
REPLICATION_SNAPSHOT_PREFIX = "vzrep-replication"
CBT_STUN_SNAPSHOT_PREFIX = "vzrep-cbt-stun"
RESTORE_POINT_PREFIX = "vzrep-restore-point"
#: the marker in the snapshot description; the prefix alone could be typed by a user
SNAPSHOT_MARKER = "[vzrep]"
#: extraConfig keys on an appliance VM recording a disk we HotAdded, so a crashed run's disks are found
HOTADD_MARKER_PREFIX = "vzrep.hotadd."

DiskMode = Literal["independent_nonpersistent", "independent_persistent"]


class ChangeIdRejected(VSphereError):
    """QueryChangedDiskAreas refused the stored changeId (CBT was reset): fall back to differential."""


class CbtNotEnabled(VSphereError):
    """QueryChangedDiskAreas answered NotSupported: CBT is off on the VM."""


@dataclass(frozen=True)
class DiskInfo:
    key: int
    file_name: str  # "[datastore] dir/name.vmdk"
    capacity: int  # bytes
    controller_key: int
    controller_type: str  # "ParaVirtualSCSIController", "VirtualLsiLogicController", ...
    bus_number: int
    unit_number: int
    disk_mode: str
    thin: bool | None = None
    uuid: str | None = None
    change_id: str | None = None

    @property
    def datastore(self) -> str:
        return split_datastore_path(self.file_name)[0]

    @property
    def slot(self) -> str:
        """Controller bus and unit, as vSphere shows them ("scsi0:1")."""
        return f"{controller_prefix(self.controller_type)}{self.bus_number}:{self.unit_number}"


@dataclass(frozen=True)
class ControllerInfo:
    key: int
    type: str
    bus_number: int


@dataclass(frozen=True)
class NicInfo:
    key: int
    type: str  # "VirtualVmxnet3", "VirtualE1000", ...
    network: str | None  # network (or distributed port group) name


@dataclass(frozen=True)
class VmInfo:
    moid: str
    name: str
    bios_uuid: str
    instance_uuid: str
    hardware_version: str  # "vmx-13"
    num_cpu: int
    cores_per_socket: int
    memory_mb: int
    guest_id: str
    firmware: str
    cbt_enabled: bool
    power_state: str
    template: bool
    host: str | None  # host moid
    datastores: tuple[str, ...]  # datastore names the VM uses
    controllers: tuple[ControllerInfo, ...]
    disks: tuple[DiskInfo, ...]
    nics: tuple[NicInfo, ...]
    extra_config: dict[str, str] = field(default_factory=dict)
    annotation: str = ""

    def disk(self, key: int) -> DiskInfo:
        for d in self.disks:
            if d.key == key:
                return d
        raise VSphereError(f"VM {self.name} has no disk with device key {key}; its hardware changed")


@dataclass(frozen=True)
class SnapshotInfo:
    moid: str
    name: str
    description: str
    created: datetime | None
    vm: str  # VM moid
    parent: str | None = None  # parent snapshot moid

    @property
    def ours(self) -> bool:
        return SNAPSHOT_MARKER in self.description and self.name.startswith("vzrep-")


@dataclass(frozen=True)
class HotAddRequest:
    """An existing disk file to attach to an appliance VM (:meth:`VSphereClient.hotadd`)."""

    file_name: str
    capacity: int  # bytes
    mode: DiskMode
    owner: str  # recorded in the appliance's marker, e.g. "vm-57/snapshot-70"


@dataclass(frozen=True)
class AttachedDisk:
    """A disk HotAdded to an appliance VM, where it sits there, and what it is a copy of."""

    appliance: str  # appliance VM moid
    key: int
    file_name: str
    capacity: int
    controller_type: str
    bus_number: int
    unit_number: int
    disk_mode: str
    uuid: str | None = None
    marker: str | None = None  # extraConfig key recording the HotAdd
    owner: str = ""  # what the marker says the disk belongs to (VM and snapshot moids)


def controller_prefix(controller_type: str) -> str:
    t = controller_type.lower()
    if "ide" in t:
        return "ide"
    if "sata" in t or "ahci" in t:
        return "sata"
    if "nvme" in t:
        return "nvme"
    return "scsi"


_DS_PATH = re.compile(r"^\[(?P<ds>[^\]]*)\]\s*(?P<rel>.*)$")


def split_datastore_path(path: str) -> tuple[str, str]:
    """``"[ds1] vm/vm.vmdk"`` -> ``("ds1", "vm/vm.vmdk")``."""
    m = _DS_PATH.match(path)
    if not m:
        raise VSphereError(f"not a datastore path: {path!r}")
    return m["ds"], m["rel"]


_DELTA_SUFFIX = re.compile(r"-\d{6}$")


def stable_disk_names(disks: tuple[DiskInfo, ...] | list[DiskInfo]) -> dict[int, str]:
    """Name each disk after its file, without a snapshot's ``-000001`` suffix; keys break ties.

    Used once, at the first pass; the names are then kept in the hardware record, so they stay stable
    when snapshots rename the files.
    """
    base: dict[int, str] = {}
    for d in disks:
        stem = split_datastore_path(d.file_name)[1].rsplit("/", 1)[-1]
        stem = stem.removesuffix(".vmdk")
        base[d.key] = _DELTA_SUFFIX.sub("", stem) or f"disk{d.key}"
    counts: dict[str, int] = {}
    for name in base.values():
        counts[name] = counts.get(name, 0) + 1
    return {k: (n if counts[n] == 1 else f"{n}_{k}") for k, n in base.items()}
