"""MBR (with extended/logical partitions) and GPT (primary, backup as fallback, CRC checked).

The tables themselves stay active, and so does everything before the first partition: boot loaders
(GRUB's core.img, boot managers) live in that gap, and it is at most a few MiB. Space between and
after partitions is inactive, except the GPT backup header and entries at the end of the disk.
"""

from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass, field

from source_agent.filters.volume import NotParsed, Range, Volume, u16le, u32le, u64le

_EXTENDED = {0x05, 0x0F, 0x85}
_MAX_LOGICAL = 256


@dataclass(frozen=True)
class Partition:
    start: int  # bytes, volume coordinates
    length: int
    label: str
    mbr_type: int | None = None
    gpt_type: str | None = None


@dataclass
class Table:
    kind: str  # "mbr" or "gpt"
    partitions: list[Partition] = field(default_factory=list)
    structures: list[Range] = field(default_factory=list)


def _mbr_entries(sector: bytes) -> list[tuple[int, int, int, int]] | None:
    """``(status, type, lba, count)`` of the four entries, or None if this is no partition table."""
    if len(sector) < 512 or sector[510:512] != b"\x55\xaa":
        return None
    out = []
    for i in range(4):
        e = sector[446 + 16 * i : 462 + 16 * i]
        status, ptype, lba, count = e[0], e[4], u32le(e, 8), u32le(e, 12)
        if status not in (0x00, 0x80):
            return None
        if ptype and (lba == 0 or count == 0):
            return None
        out.append((status, ptype, lba, count))
    if not any(ptype for _, ptype, _, _ in out):
        return None
    return out


def looks_like_mbr(sector: bytes) -> bool:
    return _mbr_entries(sector) is not None


def is_protective_mbr(sector: bytes) -> bool:
    entries = _mbr_entries(sector)
    return entries is not None and any(ptype == 0xEE for _, ptype, _, _ in entries)


def parse_mbr(vol: Volume) -> Table:
    sector = vol.read_exact(0, 512, "MBR")
    entries = _mbr_entries(sector)
    if entries is None:
        raise NotParsed(f"{vol.label}: sector 0 is not a valid MBR")
    nsect = vol.size // 512
    table = Table("mbr", structures=[(0, 512)])
    for idx, (_, ptype, lba, count) in enumerate(entries, start=1):
        if not ptype:
            continue
        if lba + count > nsect:
            raise NotParsed(f"{vol.label}: MBR partition {idx} runs past the end of the disk")
        if ptype in _EXTENDED:
            _walk_ebr(vol, lba, count, table)
        else:
            table.partitions.append(Partition(lba * 512, count * 512, f"{vol.label}p{idx}", mbr_type=ptype))
    _check_overlap(vol, table)
    return table


def _walk_ebr(vol: Volume, ext_lba: int, ext_count: int, table: Table) -> None:
    """Follow the chain of extended boot records; logical partitions are numbered from 5."""
    ebr_lba, number = ext_lba, 5
    seen: set[int] = set()
    while True:
        if ebr_lba in seen or len(seen) > _MAX_LOGICAL:
            raise NotParsed(f"{vol.label}: the extended partition's EBR chain loops")
        if not ext_lba <= ebr_lba < ext_lba + ext_count:
            raise NotParsed(f"{vol.label}: an EBR lies outside its extended partition")
        seen.add(ebr_lba)
        sector = vol.read_exact(ebr_lba * 512, 512, "EBR")
        table.structures.append((ebr_lba * 512, ebr_lba * 512 + 512))
        if sector[510:512] != b"\x55\xaa":
            raise NotParsed(f"{vol.label}: an EBR at sector {ebr_lba} lacks its signature")
        ptype, rel, count = sector[446 + 4], u32le(sector, 446 + 8), u32le(sector, 446 + 12)
        if ptype:
            start = ebr_lba + rel
            if rel == 0 or start + count > ext_lba + ext_count:
                raise NotParsed(f"{vol.label}: logical partition {number} lies outside its container")
            table.partitions.append(Partition(start * 512, count * 512, f"{vol.label}p{number}", ptype))
            number += 1
        ntype, nrel = sector[462 + 4], u32le(sector, 462 + 8)
        if ntype not in _EXTENDED or nrel == 0:
            return
        ebr_lba = ext_lba + nrel


def _check_overlap(vol: Volume, table: Table) -> None:
    parts = sorted(table.partitions, key=lambda p: p.start)
    for a, b in itertools.pairwise(parts):
        if a.start + a.length > b.start:
            raise NotParsed(f"{vol.label}: partitions {a.label} and {b.label} overlap")
    if parts:
        # boot loaders live before the first partition: keep that gap
        table.structures.append((0, parts[0].start))


def _gpt_header(vol: Volume, lba: int, ss: int) -> tuple[bytes, bytes] | None:
    """Return ``(header, entries)`` if the header at ``lba`` and its entry array pass their CRCs."""
    if lba <= 0 or (lba + 1) * ss > vol.size:
        return None
    hdr = vol.pread(lba * ss, ss)
    if hdr[:8] != b"EFI PART":
        return None
    hsize = u32le(hdr, 12)
    if not 92 <= hsize <= ss:
        return None
    crc_input = hdr[:16] + b"\0\0\0\0" + hdr[20:hsize]
    if zlib.crc32(crc_input) != u32le(hdr, 16) or u64le(hdr, 24) != lba:
        return None
    ent_lba, count, esize = u64le(hdr, 72), u32le(hdr, 80), u32le(hdr, 84)
    if esize < 128 or esize % 8 or count > 65536 or (ent_lba * ss + count * esize) > vol.size:
        return None
    entries = vol.pread(ent_lba * ss, count * esize)
    if len(entries) != count * esize or zlib.crc32(entries) != u32le(hdr, 88):
        return None
    return hdr, entries


def _guid(raw: bytes) -> str:
    a, b, c = u32le(raw, 0), u16le(raw, 4), u16le(raw, 6)
    return f"{a:08X}-{b:04X}-{c:04X}-{raw[8:10].hex().upper()}-{raw[10:16].hex().upper()}"


def parse_gpt(vol: Volume) -> Table:
    for ss in (512, 4096):
        found = _gpt_header(vol, 1, ss)
        if found is None and vol.size // ss > 1:
            found = _gpt_header(vol, vol.size // ss - 1, ss)  # the backup header, last sector
        if found is not None:
            return _gpt_table(vol, ss, *found)
    raise NotParsed(f"{vol.label}: protective MBR but neither GPT header passes its CRC checks")


def _gpt_table(vol: Volume, ss: int, hdr: bytes, entries: bytes) -> Table:
    first_usable, last_usable = u64le(hdr, 40), u64le(hdr, 48)
    count, esize = u32le(hdr, 80), u32le(hdr, 84)
    nsect = vol.size // ss
    if not first_usable <= last_usable < nsect:
        raise NotParsed(f"{vol.label}: GPT usable range does not fit the disk")
    table = Table("gpt")
    for i in range(count):
        e = entries[i * esize : (i + 1) * esize]
        if e[:16] == b"\0" * 16:
            continue
        first, last = u64le(e, 32), u64le(e, 40)
        if not first_usable <= first <= last <= last_usable:
            raise NotParsed(f"{vol.label}: GPT partition {i + 1} lies outside the usable area")
        table.partitions.append(
            Partition(first * ss, (last - first + 1) * ss, f"{vol.label}p{i + 1}", gpt_type=_guid(e[:16]))
        )
    # protective MBR, primary header and entries; backup entries and header at the end
    table.structures += [(0, first_usable * ss), ((last_usable + 1) * ss, vol.size)]
    _check_overlap(vol, table)
    return table
