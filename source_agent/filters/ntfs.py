"""NTFS: active clusters from ``$Bitmap``, found through its MFT record's data runs.

The boot sector and its backup, ``$MFT``, ``$MFTMirr`` and ``$LogFile`` are always active. A volume
whose ``$LogFile`` is not clean (mounted by Windows when the snapshot was taken) may have allocations
recorded only in the log, so it stays fully active. ``pagefile.sys``, ``hiberfil.sys`` and
``swapfile.sys`` in the root directory can be skipped on request; their first 64 KiB stay active so
that a stale hibernation header can never reach the replica.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from source_agent.filters.extents import ExtentList
from source_agent.filters.volume import (
    NotParsed,
    Range,
    RunBuilder,
    Volume,
    set_bit_runs,
    u16le,
    u32le,
    u64le,
)

_AT_ATTRIBUTE_LIST, _AT_FILE_NAME, _AT_DATA = 0x20, 0x30, 0x80
_AT_INDEX_ROOT, _AT_INDEX_ALLOCATION = 0x90, 0xA0
_SKIPPABLE = {"pagefile.sys", "hiberfil.sys", "swapfile.sys"}
_KEEP_HEAD = 64 * 1024
_READ_CHUNK = 1 << 20

Run = tuple[int, int | None, int]  # (vcn, lcn or None when sparse, length in clusters)


def fixup(buf: bytes, what: str) -> bytes:
    """Apply the update sequence array of an MFT/INDX/RSTR record (torn-write protection)."""
    usa_ofs, usa_count = u16le(buf, 4), u16le(buf, 6)
    if usa_count < 2 or (usa_count - 1) * 512 > len(buf) or usa_ofs + 2 * usa_count > len(buf):
        raise NotParsed(f"NTFS {what} has a corrupt update sequence array")
    out = bytearray(buf)
    usn = buf[usa_ofs : usa_ofs + 2]
    for i in range(1, usa_count):
        pos = i * 512 - 2
        if out[pos : pos + 2] != usn:
            raise NotParsed(f"NTFS {what} fails its update sequence check (torn or corrupt)")
        out[pos : pos + 2] = buf[usa_ofs + 2 * i : usa_ofs + 2 * i + 2]
    return bytes(out)


@dataclass(frozen=True)
class Attr:
    type: int
    name: str
    resident: bool
    body: bytes  # the whole attribute record


def attributes(rec: bytes) -> Iterator[Attr]:
    off, used = u16le(rec, 20), min(u32le(rec, 24), len(rec))
    while off + 8 <= used:
        atype = u32le(rec, off)
        if atype == 0xFFFFFFFF:
            return
        alen = u32le(rec, off + 4)
        if alen < 16 or off + alen > used:
            raise NotParsed("NTFS MFT record has a corrupt attribute")
        body = rec[off : off + alen]
        nlen, noff = body[9], u16le(body, 10)
        name = body[noff : noff + 2 * nlen].decode("utf-16-le", "replace")
        yield Attr(atype, name, body[8] == 0, body)
        off += alen


def resident_value(a: Attr) -> bytes:
    return a.body[u16le(a.body, 20) : u16le(a.body, 20) + u32le(a.body, 16)]


def data_runs(a: Attr, nclusters: int) -> list[Run]:
    body = a.body
    p, vcn, lcn = u16le(body, 32), u64le(body, 16), 0
    out: list[Run] = []
    while p < len(body) and body[p]:
        ls, os_ = body[p] & 0xF, body[p] >> 4
        if not 1 <= ls <= 8 or os_ > 8 or p + 1 + ls + os_ > len(body):
            raise NotParsed("NTFS data run list is corrupt")
        length = int.from_bytes(body[p + 1 : p + 1 + ls], "little")
        if os_:
            lcn += int.from_bytes(body[p + 1 + ls : p + 1 + ls + os_], "little", signed=True)
            if lcn < 0 or lcn + length > nclusters:
                raise NotParsed("NTFS data run points outside the volume")
            out.append((vcn, lcn, length))
        else:
            out.append((vcn, None, length))
        vcn += length
        p += 1 + ls + os_
    return out


class Ntfs:
    def __init__(self, vol: Volume) -> None:
        self.vol = vol
        boot = vol.read_exact(0, 512, "NTFS boot sector")
        if boot[3:11] != b"NTFS    " or boot[510:512] != b"\x55\xaa":
            raise NotParsed(f"{vol.label}: no NTFS boot sector")
        bps, spc_raw = u16le(boot, 11), boot[13]
        spc = spc_raw if spc_raw <= 0x80 else 1 << (256 - spc_raw)
        if bps not in (256, 512, 1024, 2048, 4096) or spc == 0 or spc & (spc - 1):
            raise NotParsed(f"{vol.label}: NTFS boot sector geometry is corrupt")
        self.cluster = bps * spc
        total = u64le(boot, 40) * bps
        cpr = int.from_bytes(boot[64:65], "little", signed=True)
        self.rec_size = cpr * self.cluster if cpr > 0 else 1 << -cpr
        self.nclusters = total // self.cluster
        mft_lcn = u64le(boot, 48)
        if total > vol.size or self.cluster > 2 << 20 or not 512 <= self.rec_size <= 65536:
            raise NotParsed(f"{vol.label}: NTFS boot sector geometry is corrupt (or larger than its volume)")
        if not 0 < mft_lcn < self.nclusters:
            raise NotParsed(f"{vol.label}: NTFS \\$MFT location is outside the volume")
        rec0 = self._fixed_record(mft_lcn * self.cluster, 0)
        self.mft_runs = self._unnamed_data_runs(rec0, "$MFT")

    def _fixed_record(self, offset: int, number: int) -> bytes:
        raw = self.vol.read_exact(offset, self.rec_size, f"NTFS MFT record {number}")
        if raw[:4] != b"FILE":
            raise NotParsed(f"{self.vol.label}: NTFS MFT record {number} has no FILE magic")
        rec = fixup(raw, f"MFT record {number}")
        if not u16le(rec, 22) & 1:
            raise NotParsed(f"{self.vol.label}: NTFS MFT record {number} is not in use")
        return rec

    def record(self, number: int) -> bytes:
        byte = number * self.rec_size
        for vcn, lcn, length in self.mft_runs:
            if lcn is not None and vcn * self.cluster <= byte < (vcn + length) * self.cluster:
                return self._fixed_record(lcn * self.cluster + byte - vcn * self.cluster, number)
        raise NotParsed(f"{self.vol.label}: NTFS MFT record {number} is not mapped by \\$MFT's first record")

    def _unnamed_data_runs(self, rec: bytes, what: str) -> list[Run]:
        attrs = list(attributes(rec))
        if any(a.type == _AT_ATTRIBUTE_LIST for a in attrs) and what != "$MFT":
            raise NotParsed(f"{self.vol.label}: NTFS {what} has an attribute list (not followed)")
        for a in attrs:
            if a.type == _AT_DATA and not a.name:
                if a.resident:
                    raise NotParsed(f"{self.vol.label}: NTFS {what} data is resident")
                return data_runs(a, self.nclusters)
        raise NotParsed(f"{self.vol.label}: NTFS {what} has no data attribute")

    def _file_ranges(self, runs: list[Run]) -> list[Range]:
        c = self.cluster
        return [(lcn * c, (lcn + n) * c) for _, lcn, n in runs if lcn is not None]

    def log_is_clean(self, runs: list[Run]) -> bool:
        """The newest restart area says the volume was cleanly unmounted, or the log is reset (0xFF)."""
        ranges = self._file_ranges(runs)
        if not ranges:
            return False
        head = self.vol.read_exact(ranges[0][0], min(8192, ranges[0][1] - ranges[0][0]), "NTFS $LogFile")
        if head.count(0xFF) == len(head):
            return True  # ntfs-3g and mkntfs reset the log this way
        best: tuple[int, bool] | None = None
        page = 4096
        for start in (0, page):
            raw = head[start : start + page]
            if raw[:4] != b"RSTR" or len(raw) < page:
                continue
            try:
                rp = fixup(raw, "$LogFile restart page")
            except NotParsed:
                continue
            ra = u16le(rp, 24)
            if ra + 16 > len(rp):
                continue
            lsn, in_use, flags = u64le(rp, ra), u16le(rp, ra + 12), u16le(rp, ra + 14)
            clean = in_use == 0xFFFF or bool(flags & 0x2)
            if best is None or lsn > best[0]:
                best = (lsn, clean)
        return best is not None and best[1]

    def bitmap_runs(self, runs: list[Run], data_size: int) -> Iterator[Range]:
        """Stream ``$Bitmap`` run by run, chunk by chunk: memory stays small on any volume size."""
        need = -(-self.nclusters // 8)
        if data_size < need:
            raise NotParsed(f"{self.vol.label}: NTFS \\$Bitmap is shorter than the volume")
        done = 0
        for vcn, lcn, length in runs:
            if lcn is None:
                raise NotParsed(f"{self.vol.label}: NTFS \\$Bitmap is sparse")
            pos, end = vcn * self.cluster, min((vcn + length) * self.cluster, need)
            while pos < end:
                n = min(_READ_CHUNK, end - pos)
                data = self.vol.read_exact(lcn * self.cluster + pos - vcn * self.cluster, n, "NTFS $Bitmap")
                bits = min(n * 8, self.nclusters - pos * 8)
                for s, e in set_bit_runs(data, bits):
                    yield pos * 8 + s, pos * 8 + e
                pos += n
                done = max(done, pos)
        if done < need:
            raise NotParsed(f"{self.vol.label}: NTFS \\$Bitmap runs do not cover the volume")

    def root_entries(self) -> Iterator[tuple[int, str]]:
        """``(file reference, name)`` of the root directory index, stale INDX entries included."""
        rec = self.record(5)
        block = 4096
        for a in attributes(rec):
            if a.type == _AT_INDEX_ROOT and a.name == "$I30":
                val = resident_value(a)
                block = u32le(val, 8)
                if not 512 <= block <= 65536:
                    raise NotParsed(f"{self.vol.label}: NTFS root index block size is corrupt")
                yield from _index_entries(val, 16)
            elif a.type == _AT_INDEX_ALLOCATION and a.name == "$I30" and not a.resident:
                for s, e in self._file_ranges(data_runs(a, self.nclusters)):
                    for off in range(s, e, block):
                        raw = self.vol.read_exact(off, min(block, e - off), "NTFS index block")
                        if raw[:4] != b"INDX":
                            continue
                        try:
                            yield from _index_entries(fixup(raw, "index block"), 24)
                        except NotParsed:
                            continue

    def skippable_files(self) -> list[Range]:
        """Cluster ranges of pagefile.sys, hiberfil.sys, swapfile.sys (verified against their records)."""
        out: list[Range] = []
        seen: set[int] = set()
        for ref, name in self.root_entries():
            number, seq = ref & 0xFFFFFFFFFFFF, ref >> 48
            if name.lower() not in _SKIPPABLE or number in seen:
                continue
            seen.add(number)
            rec = self.record(number)
            if u16le(rec, 16) != seq or u16le(rec, 22) & 2:
                continue  # a stale entry: the record was reused or is a directory
            names = [resident_value(a) for a in attributes(rec) if a.type == _AT_FILE_NAME and a.resident]
            if not any(
                u64le(v, 0) & 0xFFFFFFFFFFFF == 5 and _fn_name(v).lower() == name.lower() for v in names
            ):
                continue
            try:
                runs = self._unnamed_data_runs(rec, name)
            except NotParsed:
                continue  # resident or listed: tiny or unusual, keep it active
            skipped = _KEEP_HEAD
            for s, e in self._file_ranges(runs):
                if e - s <= skipped:
                    skipped -= e - s
                    continue
                out.append((s + skipped, e))
                skipped = 0
        return out


def _fn_name(val: bytes) -> str:
    return val[66 : 66 + 2 * val[64]].decode("utf-16-le", "replace")


def _index_entries(buf: bytes, header_off: int) -> Iterator[tuple[int, str]]:
    off = header_off + u32le(buf, header_off)
    end = min(header_off + u32le(buf, header_off + 4), len(buf))
    while off + 16 <= end:
        elen, klen, flags = u16le(buf, off + 8), u16le(buf, off + 10), u16le(buf, off + 12)
        if elen < 16 or off + elen > end:
            return
        if flags & 2:
            return
        if klen >= 66:
            yield u64le(buf, off), _fn_name(buf[off + 16 : off + 16 + klen])
        off += elen


def active_ranges(vol: Volume, *, skip_pagefile: bool) -> tuple[list[Range], list[str]]:
    fs = Ntfs(vol)
    c = fs.cluster
    log_runs = fs._unnamed_data_runs(fs.record(2), "$LogFile")
    if not fs.log_is_clean(log_runs):
        raise NotParsed(
            f"{vol.label}: NTFS \\$LogFile is not clean (mounted by Windows when the snapshot was taken); "
            "allocations may exist only in the log"
        )
    rec6 = fs.record(6)
    runs6 = fs._unnamed_data_runs(rec6, "$Bitmap")
    data_attr = next(a for a in attributes(rec6) if a.type == _AT_DATA and not a.name)
    builder = RunBuilder()
    for s, e in fs.bitmap_runs(runs6, u64le(data_attr.body, 48)):
        builder.add(s * c, e * c)
    active = ExtentList(builder.result())
    must = ExtentList(
        [(0, 8192), *fs._file_ranges(fs.mft_runs), *fs._file_ranges(log_runs), *fs._file_ranges(runs6)]
    )
    missing = must.total - must.intersect(active).total
    if missing > 8192:  # the boot area may be a partial cluster; everything else must be marked used
        raise NotParsed(f"{vol.label}: NTFS \\$Bitmap does not mark the system files as used (corrupt)")
    notes: list[str] = []
    if skip_pagefile:
        skip = ExtentList(fs.skippable_files())
        if skip.total:
            active = active.subtract(skip)
            notes.append(f"skipped {skip.total} bytes of pagefile/hiberfil/swapfile")
    mirr = fs._file_ranges(fs._unnamed_data_runs(fs.record(1), "$MFTMirr"))
    tail = [(fs.nclusters * c, vol.size)] if fs.nclusters * c < vol.size else []
    return [*active, *must, *mirr, *tail], notes
