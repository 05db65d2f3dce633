"""LVM2 physical volumes: label, metadata text, and logical volumes mapped through their segments.

A logical volume made only of linear segments (``striped`` with one stripe) on this disk is parsed
like any other volume, so the filesystem inside it is filtered too. Every other LV (striped over
several stripes, mirrors, RAID, thin pools, snapshots, cache, sub-LVs referenced by others, LVs that
continue on another disk) keeps all of its extents active. Physical extents that no LV uses are
inactive; the label, metadata areas and anything outside the extent area stay active.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterator

from source_agent.filters.volume import NotParsed, Range, Volume, u32le, u64le

Probe = Callable[[Volume], list[Range]]
Value = int | str | list["Value"] | dict[str, "Value"]

_MDA_MAGIC = b" LVM2 x[5A%r0N*>"
_INITIAL_CRC = 0xF597A6CF
#: The metadata text is read whole. Real text is a few KiB per LV (the default area is 1 MiB); without
#: this bound a size field of 3 GiB was allocated as asked (found by review of the fuzz targets)
_MAX_METADATA = 16 << 20
_TOKEN = re.compile(
    r'\s+|#[^\n]*|(?P<str>"(?:[^"\\]|\\.)*")|(?P<num>-?\d+(?:\.\d+)?)|(?P<word>[A-Za-z0-9_.+\-]+)|(?P<punct>[{}\[\]=,])'
)


def lvm_crc(data: bytes, initial: int = _INITIAL_CRC) -> int:
    """LVM's CRC-32: the zlib polynomial, seeded with ``initial`` and without the final inversion."""
    return ~zlib.crc32(data, ~initial & 0xFFFFFFFF) & 0xFFFFFFFF


def _tokens(text: str) -> Iterator[tuple[str, str]]:
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise NotParsed(f"LVM metadata: unexpected character at {pos}")
        pos = m.end()
        if m.lastgroup:
            yield m.lastgroup, m.group(m.lastgroup)


def parse_config(text: str) -> dict[str, Value]:
    """Parse LVM's text format (``name { key = value ... }``) into nested dicts."""
    toks = list(_tokens(text))
    pos = 0

    def value() -> Value:
        nonlocal pos
        kind, tok = toks[pos]
        pos += 1
        if kind == "str":
            return re.sub(r"\\(.)", r"\1", tok[1:-1])
        if kind == "num":
            return int(float(tok))
        if tok == "[":
            items: list[Value] = []
            while toks[pos][1] != "]":
                items.append(value())
                if toks[pos][1] == ",":
                    pos += 1
            pos += 1
            return items
        raise NotParsed(f"LVM metadata: unexpected {tok!r}")

    def section(top: bool) -> dict[str, Value]:
        nonlocal pos
        out: dict[str, Value] = {}
        while pos < len(toks):
            kind, tok = toks[pos]
            if tok == "}" and not top:
                pos += 1
                return out
            if kind not in ("word", "str") or pos + 1 >= len(toks):
                raise NotParsed(f"LVM metadata: unexpected {tok!r}")
            pos += 1
            name = tok.strip('"')
            if toks[pos][1] == "{":
                pos += 1
                out[name] = section(False)
            elif toks[pos][1] == "=":
                pos += 1
                out[name] = value()
            else:
                raise NotParsed(f"LVM metadata: expected '=' or '{{' after {name!r}")
        if not top:
            raise NotParsed("LVM metadata: unterminated section")
        return out

    try:
        return section(True)
    except IndexError:
        raise NotParsed("LVM metadata text is truncated") from None


def find_label(vol: Volume) -> tuple[int, bytes] | None:
    """``(offset, sector)`` of a valid ``LABELONE`` label in the first four sectors."""
    for sector in range(4):
        data = vol.pread(sector * 512, 512)
        if len(data) == 512 and data[:8] == b"LABELONE" and data[24:32] == b"LVM2 001":
            if u64le(data, 8) == sector and lvm_crc(data[20:]) == u32le(data, 16):
                return sector * 512, data
    return None


def _metadata_text(vol: Volume) -> tuple[str, str]:
    """``(pv uuid, metadata text)`` from the label and the first valid metadata area."""
    found = find_label(vol)
    if found is None:
        raise NotParsed(f"{vol.label}: LVM label is missing or fails its checksum")
    off, label = found
    hdr = vol.read_exact(off, 512, "LVM PV header")[u32le(label, 20) :]
    uuid = hdr[:32].decode("ascii", "replace")
    p, lists = 40, []
    for _ in range(2):  # data areas, then metadata areas; each list ends with a zero entry
        items = []
        while p + 16 <= len(hdr) and u64le(hdr, p):
            items.append((u64le(hdr, p), u64le(hdr, p + 8)))
            p += 16
        p += 16
        lists.append(items)
    for mda_off, mda_size in lists[1]:
        mh = vol.read_exact(mda_off, 512, "LVM metadata area header")
        if mh[4:20] != _MDA_MAGIC or lvm_crc(mh[4:]) != u32le(mh, 0):
            continue
        size = u64le(mh, 32)
        loc_off, loc_size, loc_crc, flags = u64le(mh, 40), u64le(mh, 48), u32le(mh, 56), u32le(mh, 60)
        if not loc_off or flags & 1 or size > mda_size or loc_off >= size:
            continue
        if loc_size > _MAX_METADATA:  # read before its CRC is checked: the size alone is untrusted
            raise NotParsed(f"{vol.label}: LVM metadata of {loc_size} bytes is larger than we read")
        first = min(loc_size, size - loc_off)
        text = vol.read_exact(mda_off + loc_off, first, "LVM metadata")
        if first < loc_size:  # the circular buffer wraps after its 512-byte header
            text += vol.read_exact(mda_off + 512, loc_size - first, "LVM metadata")
        if lvm_crc(text) == loc_crc:
            return uuid, text.rstrip(b"\0").decode("utf-8", "replace")
    raise NotParsed(f"{vol.label}: no LVM metadata area passes its checksum")


def _as_dict(v: Value | None, what: str) -> dict[str, Value]:
    if not isinstance(v, dict):
        raise NotParsed(f"LVM metadata: {what} is missing")
    return v


def _as_int(v: Value | None, what: str) -> int:
    if not isinstance(v, int) or v < 0:
        raise NotParsed(f"LVM metadata: {what} is missing or not a count")
    return v


def _strings(v: Value) -> Iterator[str]:
    if isinstance(v, str):
        yield v
    elif isinstance(v, list):
        for x in v:
            yield from _strings(x)
    elif isinstance(v, dict):
        for x in v.values():
            yield from _strings(x)


def active_disk_ranges(vol: Volume, probe: Probe) -> tuple[list[Range], list[str]]:
    """Active *disk* ranges of a PV: its own structures, plus whatever ``probe`` finds in each LV."""
    uuid, text = _metadata_text(vol)
    cfg = parse_config(text)
    vgs = [(k, v) for k, v in cfg.items() if isinstance(v, dict)]
    if len(vgs) != 1:
        raise NotParsed(f"{vol.label}: LVM metadata holds {len(vgs)} volume groups")
    vg_name, vg = vgs[0]
    ext = _as_int(vg.get("extent_size"), "extent_size") * 512
    pvs = _as_dict(vg.get("physical_volumes"), "physical_volumes")
    mine = [
        n for n, pv in pvs.items() if isinstance(pv, dict) and str(pv.get("id", "")).replace("-", "") == uuid
    ]
    if len(mine) != 1 or ext <= 0:
        raise NotParsed(f"{vol.label}: this PV is not in its own volume group's metadata")
    pv = _as_dict(pvs[mine[0]], "pv")
    pe_start, pe_count = (
        _as_int(pv.get("pe_start"), "pe_start") * 512,
        _as_int(pv.get("pe_count"), "pe_count"),
    )
    if pe_start + pe_count * ext > vol.size:
        raise NotParsed(f"{vol.label}: LVM extents run past the end of the physical volume")
    lvs = _as_dict(vg.get("logical_volumes", {}), "logical_volumes")
    referenced = {s for name, lv in lvs.items() for s in _strings(lv) if s != name}
    out: list[Range] = list(vol.to_disk([(0, pe_start), (pe_start + pe_count * ext, vol.size)]))
    notes: list[str] = []
    for name, lv_v in lvs.items():
        lv = _as_dict(lv_v, f"logical volume {name}")
        pieces, linear = _lv_pieces(lv, mine[0], ext, pe_count)
        pv_ranges = [(pe_start + o, pe_start + o + n) for _, o, n in pieces]
        status = lv.get("status", [])
        visible = isinstance(status, list) and "VISIBLE" in status
        if linear and visible and name not in referenced:
            lv_vol = vol.compose([(lo, pe_start + o, n) for lo, o, n in pieces], f"{vg_name}/{name}")
            out += probe(lv_vol)
        elif pv_ranges:
            notes.append(f"LV {vg_name}/{name} is not linear on this disk: kept fully active")
            out += vol.to_disk(pv_ranges)
    return out, notes


def _lv_pieces(
    lv: dict[str, Value], pv_name: str, ext: int, pe_count: int
) -> tuple[list[tuple[int, int, int]], bool]:
    """``(lv offset, pv offset, length)`` of every piece on this PV, and whether the LV is wholly linear here."""
    pieces: list[tuple[int, int, int]] = []
    linear, covered = True, 0
    segs = sorted(
        (_as_int(_as_dict(v, k).get("start_extent"), "start_extent"), _as_dict(v, k))
        for k, v in lv.items()
        if k.startswith("segment") and isinstance(v, dict)
    )
    for start_extent, seg in segs:
        count = _as_int(seg.get("extent_count"), "extent_count")
        stripes = seg.get("stripes")
        if seg.get("type") != "striped" or not isinstance(stripes, list):
            linear = False
            continue
        nstripes = len(stripes) // 2
        if nstripes != 1 or start_extent != covered:
            linear = False
        per = count // max(nstripes, 1)
        for i in range(nstripes):
            pv, pe = stripes[2 * i], stripes[2 * i + 1]
            if not isinstance(pe, int):
                raise NotParsed(f"LVM metadata: a stripe of {pv} has no extent number")
            if pv == pv_name:
                if pe + per > pe_count:
                    raise NotParsed(f"LVM metadata: a segment runs past the extents of {pv}")
                pieces.append((start_extent * ext, pe * ext, per * ext))
            else:
                linear = False  # continues on another disk: its filesystem cannot be read from here
        covered = start_extent + count
    return pieces, linear and bool(pieces)
