"""Source disk readers: raw images, block devices, flat VMDKs, and every other image format through
qemu (``qemu``); ``open_disk`` picks the right one."""

from __future__ import annotations

from pathlib import Path

from protocol.messages import NAME_RULE, valid_name
from vzcommon.errors import InputError
from vzcommon.vmdk import FLAT_TYPES, looks_like_descriptor, read_descriptor

from .base import DiskReader
from .qemu import QemuReader
from .raw import RawReader
from .vmdk import VmdkFlatReader

#: leading bytes of the formats read through qemu (sparse VMDK, hosted VMDK 3 "COWD", qcow2, VHDX)
_QEMU_MAGICS = (b"KDMV", b"COWD", b"QFI\xfb", b"vhdxfile")
#: names that promise a format qemu reads (a damaged header is then reported, not read as raw)
_QEMU_SUFFIXES = (".qcow2", ".qcow", ".vhdx", ".vhd", ".vdi", ".ova")

__all__ = [
    "DiskReader",
    "QemuReader",
    "RawReader",
    "VmdkFlatReader",
    "check_name",
    "default_name",
    "open_disk",
    "parse_disk_spec",
]


def default_name(path: Path) -> str:
    """A disk's stable name: the file's base name without extension (and without ``-flat``)."""
    stem = path.name.split(".", 1)[0] if not path.name.startswith(".") else path.name
    return stem[: -len("-flat")] if stem.endswith("-flat") else stem


def parse_disk_spec(spec: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` (a ``/`` before the first ``=`` makes it a path); the name is not
    checked here (:func:`check_disk_name`)."""
    name, sep, path = spec.partition("=")
    if sep and "/" not in name:
        return name, Path(path)
    p = Path(spec)
    return default_name(p), p


def check_name(what: str, name: str, hint: str = "") -> None:
    """Refuse a VM or disk name that cannot be a file name here and on the target
    (``protocol.messages.valid_name``); the message states the rule."""
    if not valid_name(name):
        shown = name if len(name) <= 80 else name[:77] + "..."
        raise InputError(f"invalid {what} name {shown!r}{hint}: {NAME_RULE}")


def open_disk(path: Path, name: str) -> DiskReader:
    """A reader for ``path``: raw files and devices and flat VMDKs directly (mapped, hash-ahead), every
    other format (sparse VMDKs, snapshot chains, qcow2, VHDX, OVA or OVA/MEMBER) through qemu."""
    check_name("disk", name, " (give NAME=PATH)")
    if not path.exists() and path.parent.suffix.lower() in (".ova", ".tar") and path.parent.is_file():
        return QemuReader(path, name)  # a member of an OVA
    try:
        with open(path, "rb") as f:
            head = f.read(1024)
    except OSError as exc:
        raise InputError(f"cannot open disk {path}: {exc.strerror}") from None
    if looks_like_descriptor(head):
        desc = read_descriptor(path)
        if desc.create_type in FLAT_TYPES and desc.parent_cid == 0xFFFFFFFF:
            return VmdkFlatReader(path, name)
        return QemuReader(path, name)  # sparse extents or a snapshot (delta) in a chain
    if head[:8].startswith(_QEMU_MAGICS) or path.suffix.lower() in _QEMU_SUFFIXES:
        return QemuReader(path, name)
    if path.suffix.lower() == ".vmdk" and not path.name.endswith("-flat.vmdk"):
        return QemuReader(path, name)  # neither descriptor nor sparse header: qemu says what is wrong
    return RawReader(path, name)
