"""Source disk readers: raw images, block devices, flat VMDKs; ``open_disk`` picks the right one."""

from __future__ import annotations

from pathlib import Path

from protocol.messages import valid_name
from vzcommon.errors import InputError
from vzcommon.vmdk import looks_like_descriptor

from .base import DiskReader
from .raw import RawReader
from .vmdk import VmdkFlatReader, sparse_create_type

__all__ = ["DiskReader", "RawReader", "VmdkFlatReader", "default_name", "open_disk", "parse_disk_spec"]


def default_name(path: Path) -> str:
    """A disk's stable name: the file's base name without extension (and without ``-flat``)."""
    stem = path.name.split(".", 1)[0] if not path.name.startswith(".") else path.name
    return stem[: -len("-flat")] if stem.endswith("-flat") else stem


def parse_disk_spec(spec: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH``."""
    name, sep, path = spec.partition("=")
    if sep and valid_name(name) and not name.startswith("/"):
        return name, Path(path)
    p = Path(spec)
    return default_name(p), p


def open_disk(path: Path, name: str) -> DiskReader:
    if not valid_name(name):
        raise InputError(
            f"invalid disk name {name!r}: use letters, digits, '.', '_', '+' or '-' (give NAME=PATH)"
        )
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
