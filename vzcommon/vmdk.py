"""VMDK text descriptors: parse any, write monolithicFlat.

Both agents need this: the source reads a flat VMDK's descriptor to find its extents, the target
writes the replica's descriptor (and reads its CID to notice a replica used outside replication).
Reference: VMware's "Virtual Disk Format 1.1" specification.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError

FLAT_TYPES = frozenset({"monolithicFlat", "vmfs", "twoGbMaxExtentFlat", "custom"})
#: ``ACCESS SECTORS KIND ["FILE" [OFFSET]]``: a ZERO extent has no file (VMDK spec, VirtualBox)
#: ASCII digits, at most 20: int() raises ValueError past 4300 digits (found writing the fuzz harness:
#: a 5000-digit sector count escaped as ValueError instead of InputError)
_EXTENT_RE = re.compile(
    r'^(RW|RDONLY|NOACCESS)\s+([0-9]{1,20})\s+(\w+)(?:\s+"([^"]+)"(?:\s+([0-9]{1,20}))?)?\s*$', re.I
)
_EXTENT_START = re.compile(r"^(RW|RDONLY|NOACCESS)\s", re.I)
_KV_RE = re.compile(r'^([\w.]+)\s*=\s*"?([^"]*)"?\s*$')
MAX_DESCRIPTOR = 64 * 1024


@dataclass(frozen=True)
class Extent:
    access: str
    sectors: int
    kind: str  # FLAT, VMFS, ZERO, SPARSE, ...
    filename: str
    offset_sectors: int


@dataclass
class Descriptor:
    cid: int
    parent_cid: int
    create_type: str
    extents: list[Extent]
    ddb: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(e.sectors for e in self.extents) * 512


def looks_like_descriptor(head: bytes) -> bool:
    return head.lstrip().startswith(b"# Disk DescriptorFile")


def parse_descriptor(text: str, where: str = "descriptor") -> Descriptor:
    values: dict[str, str] = {}
    ddb: dict[str, str] = {}
    extents: list[Extent] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _EXTENT_RE.match(line)
        if m:
            access, sectors, kind, name, off = m.groups()
            if name is None and kind.upper() != "ZERO":
                raise InputError(f"{where}: extent {line!r} names no file")
            extents.append(Extent(access.upper(), int(sectors), kind.upper(), name or "", int(off or 0)))
            continue
        if _EXTENT_START.match(line):  # never skip an extent: every later one would sit at the wrong offset
            raise InputError(f"{where}: cannot read the extent line {line!r}")
        kv = _KV_RE.match(line)
        if kv:
            (ddb if kv.group(1).startswith("ddb.") else values)[kv.group(1)] = kv.group(2)
    if "createType" not in values:
        raise InputError(f"{where}: not a VMDK descriptor (no createType)")
    try:
        cid = int(values.get("CID", "ffffffff"), 16)
        parent = int(values.get("parentCID", "ffffffff"), 16)
    except ValueError:
        raise InputError(f"{where}: bad CID in VMDK descriptor") from None
    return Descriptor(cid, parent, values["createType"], extents, ddb)


def read_descriptor(path: Path) -> Descriptor:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_DESCRIPTOR + 1)
    except OSError as exc:
        raise InputError(f"cannot read VMDK descriptor {path}: {exc.strerror}") from None
    if len(data) > MAX_DESCRIPTOR or not looks_like_descriptor(data[:1024]):
        raise InputError(f"{path} is not a VMDK text descriptor")
    return parse_descriptor(data.decode("utf-8", "replace"), str(path))


def render_flat_descriptor(flat_name: str, size: int, cid: int, *, adapter: str = "lsilogic") -> str:
    """A monolithicFlat descriptor for a flat extent of ``size`` bytes, as qemu-img writes them."""
    sectors = size // 512
    cylinders = min(max(sectors // (255 * 63), 1), 65535)
    return (
        "# Disk DescriptorFile\n"
        "version=1\n"
        f"CID={cid:08x}\n"
        "parentCID=ffffffff\n"
        'createType="monolithicFlat"\n'
        "\n"
        "# Extent description\n"
        f'RW {sectors} FLAT "{flat_name}" 0\n'
        "\n"
        "# The Disk Data Base\n"
        "#DDB\n"
        "\n"
        'ddb.virtualHWVersion = "13"\n'
        f'ddb.geometry.cylinders = "{cylinders}"\n'
        'ddb.geometry.heads = "255"\n'
        'ddb.geometry.sectors = "63"\n'
        f'ddb.adapterType = "{adapter}"\n'
        'ddb.toolsVersion = "0"\n'
        'ddb.comment = "vzrep replica"\n'
    )
