"""Active Block Mapping: which byte ranges of a disk the guest uses, and the seed's filter files.

:func:`active_extents` identifies what each volume holds (partition table, LVM physical volume,
filesystem, swap), hands it to the parser of that format, and recurses into partitions and logical
volumes. A volume that cannot be parsed with certainty is fully active, with one log line saying why:
ABM may read too much, never too little. The result is byte ranges, not aligned; the pass aligns them
to its block size. Parsing never writes and reads only metadata.

Filter files, in the pass's work directory (``.vztemp`` format of :mod:`.extents`):

* ``<disk>-abbt.vztemp`` -- the active block filter, written at the start of the disk's replication
  and removed when the disk is done;
* ``<disk>-flat-map.vztemp`` -- the disk data filter, changed (CBT) ∩ active, when both are in use;
  the CBT filter ``<disk>.vztemp`` is removed once it has been combined.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from source_agent.disks.base import VolumeReader
from source_agent.filters import ext, lvm, ntfs, partitions, swap, xfs
from source_agent.filters.extents import ExtentList, FilterKind
from source_agent.filters.volume import NotParsed, Range, Volume, u16le
from vzcommon.durable import unlink_durable
from vzcommon.errors import IntegrityError
from vzcommon.log import get_logger

log = get_logger("vzrep.abm")

_MAX_DEPTH = 4
# what garbage makes a parser raise besides NotParsed; each still means "fully active"
_PARSE_ERRORS = (struct.error, IndexError, ValueError, KeyError, TypeError, OverflowError, RecursionError)


@dataclass(frozen=True)
class AbmOptions:
    skip_swap: bool = True
    skip_pagefile: bool = False


def active_extents(reader: VolumeReader, *, skip_swap: bool = True, skip_pagefile: bool = False) -> ExtentList:
    """Byte ranges of ``reader`` the guest may use; everything else need not be read or sent."""
    opts = AbmOptions(skip_swap, skip_pagefile)
    try:
        whole = Volume.whole(reader)
    except NotParsed as exc:
        log.warning("abm.fully_active", disk=reader.name, volume=reader.name, reason=str(exc))
        return ExtentList.full(reader.size)
    result = ExtentList(_probe(whole, opts, 0, in_partition=False)).clip(reader.size)
    log.info("abm.done", disk=reader.name, size=reader.size, active=result.total, extents=len(result))
    return result


Handler = Callable[[Volume, AbmOptions], tuple[list[Range], list[str]]]


def identify(vol: Volume, *, in_partition: bool) -> str:
    """Name what the volume holds: gpt, mbr, ntfs, ext, xfs, swap, lvm; NotParsed if nothing we parse."""
    head = vol.pread(0, 4096)
    if len(head) < 1024:
        raise NotParsed(f"{vol.label}: too small to hold anything we parse")
    if head[3:11] == b"-FVE-FS-":
        raise NotParsed(f"{vol.label}: BitLocker encrypted")
    if head[:6] in (b"LUKS\xba\xbe", b"SKUL\xba\xbe"):
        raise NotParsed(f"{vol.label}: LUKS encrypted")
    if head[3:11] == b"EXFAT   " or head[82:87] == b"FAT32" or head[54:59] in (b"FAT12", b"FAT16"):
        raise NotParsed(f"{vol.label}: FAT/exFAT is not parsed")
    found = []
    if head[3:11] == b"NTFS    ":
        found.append("ntfs")
    if len(head) >= 1082 and u16le(head, 1080) == 0xEF53:
        found.append("ext")
    if head[:4] == b"XFSB":
        found.append("xfs")
    if lvm.find_label(vol) is not None:
        found.append("lvm")
    if swap.signature(vol) is not None:
        found.append("swap")
    if not in_partition and not found[:1] == ["ntfs"]:
        if partitions.is_protective_mbr(head[:512]):
            return "gpt"
        if partitions.looks_like_mbr(head[:512]):
            return "mbr"
    if len(found) > 1:
        raise NotParsed(f"{vol.label}: signatures of {', '.join(found)} at once")
    if not found:
        raise NotParsed(f"{vol.label}: no partition table or filesystem signature we know")
    return found[0]


_HANDLERS: dict[str, Handler] = {
    "ntfs": lambda v, o: ntfs.active_ranges(v, skip_pagefile=o.skip_pagefile),
    "ext": lambda v, o: ext.active_ranges(v),
    "xfs": lambda v, o: xfs.active_ranges(v),
    "swap": lambda v, o: swap.active_ranges(v, skip_swap=o.skip_swap),
}


def _probe(vol: Volume, opts: AbmOptions, depth: int, *, in_partition: bool) -> list[Range]:
    """Active disk ranges of one volume; the whole volume if anything is uncertain."""
    try:
        if depth > _MAX_DEPTH:
            raise NotParsed(f"{vol.label}: volumes nested too deep")
        kind = identify(vol, in_partition=in_partition)
        if kind in ("gpt", "mbr"):
            table = partitions.parse_gpt(vol) if kind == "gpt" else partitions.parse_mbr(vol)
            out = list(vol.to_disk(table.structures))
            for part in table.partitions:
                sub = vol.slice(part.start, part.length, part.label)
                out += _probe(sub, opts, depth + 1, in_partition=True)
            log.info("abm.parsed", volume=vol.label, kind=kind, partitions=len(table.partitions))
            return out
        if kind == "lvm":
            out, notes = lvm.active_disk_ranges(
                vol, lambda lv: _probe(lv, opts, depth + 1, in_partition=False)
            )
        else:
            ranges, notes = _HANDLERS[kind](vol, opts)
            out = list(vol.to_disk(ranges))
        log.info("abm.parsed", volume=vol.label, kind=kind, size=vol.size, ranges=len(out), notes=notes)
        return out
    except NotParsed as exc:
        reason = str(exc)
    except _PARSE_ERRORS as exc:
        reason = f"{vol.label}: parser error {type(exc).__name__}: {exc}"
    log.warning("abm.fully_active", volume=vol.label, size=vol.size, reason=reason)
    return list(vol.disk_ranges())


# -- the filter files ---------------------------------------------------------------------------------


def abbt_path(work_dir: str | Path, disk: str) -> Path:
    return Path(work_dir) / f"{disk}-abbt.vztemp"


def changed_path(work_dir: str | Path, disk: str) -> Path:
    return Path(work_dir) / f"{disk}.vztemp"


def flat_map_path(work_dir: str | Path, disk: str) -> Path:
    return Path(work_dir) / f"{disk}-flat-map.vztemp"


def write_active_filter(work_dir: str | Path, disk: str, active: ExtentList, disk_size: int) -> Path:
    """Write ``<disk>-abbt.vztemp`` durably (it is rebuilt, not trusted, if a pass restarts)."""
    path = abbt_path(work_dir, disk)
    active.save(path, FilterKind.ACTIVE, disk_size)
    return path


def load_filter(path: str | Path, kind: FilterKind, disk_size: int) -> ExtentList:
    """Read a filter file, refusing one of another kind or for a disk of another size."""
    extents, got_kind, got_size = ExtentList.load(path)
    if got_kind != kind or got_size != disk_size:
        raise IntegrityError(f"{path} is a {got_kind.name} filter for {got_size} bytes; it will be rebuilt")
    return extents


def combine_with_changed(work_dir: str | Path, disk: str, changed: ExtentList, disk_size: int) -> ExtentList:
    """Write ``<disk>-flat-map.vztemp`` = changed ∩ active and drop the CBT filter ``<disk>.vztemp``."""
    active = load_filter(abbt_path(work_dir, disk), FilterKind.ACTIVE, disk_size)
    data = changed.intersect(active)
    data.save(flat_map_path(work_dir, disk), FilterKind.DATA, disk_size)
    unlink_durable(changed_path(work_dir, disk))
    return data


def remove_filters(work_dir: str | Path, disk: str) -> None:
    """The disk is done: its active, changed and data filters go (missing ones are fine)."""
    unlink_durable(abbt_path(work_dir, disk), changed_path(work_dir, disk), flat_map_path(work_dir, disk))
