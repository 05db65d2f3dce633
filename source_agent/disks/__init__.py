"""Source disk readers: raw images, block devices, flat VMDKs; ``open_disk`` picks the right one."""

from __future__ import annotations

from pathlib import Path

from protocol.messages import NAME_RULE, valid_name
from vzcommon.errors import InputError
from vzcommon.vmdk import looks_like_descriptor

from .base import DiskReader
from .raw import RawReader
from .vmdk import VmdkFlatReader, sparse_create_type

__all__ = [
    "DiskReader",
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
    check_name("disk", name, " (give NAME=PATH)")
    try:
        with open(path, "rb") as f:
            head = f.read(1024)
    except OSError as exc:
        raise InputError(f"cannot open disk {path}: {exc.strerror}") from None
    if looks_like_descriptor(head):
        return VmdkFlatReader(path, name)
    if head[:4] == b"KDMV":
        raise InputError(
            f"unsupported VMDK create type {sparse_create_type(path)} ({path}): convert it with"
            " `qemu-img convert -O vmdk -o subformat=monolithicFlat` or give the raw image"
        )
    return RawReader(path, name)
