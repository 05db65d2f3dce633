"""XFS: per allocation group, everything not in the by-block free space B+tree (bnobt) is active.

The free extents of each AG must add up to its AGF's free block count, or we give up. The log must
be clean (its head is an unmount record): a filesystem mounted when the snapshot was taken may have
allocations recorded only in the log, and log recovery would then reference blocks we skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from source_agent.filters.volume import (
    NotParsed,
    Range,
    RunBuilder,
    Volume,
    crc32c,
    u16be,
    u32be,
    u32le,
    u64be,
)

_INCOMPAT_OK = 0x1 | 0x2 | 0x4 | 0x8 | 0x20  # ftype, sparse inodes, meta uuid, bigtime, nrext64
_RO_OK = 0x1 | 0x2 | 0x4 | 0x8  # finobt, rmapbt, reflink, inobtcount
_MAX_LEVELS = 9
_LOG_MAGIC = 0xFEEDBABE
_UNMOUNT_TRANS = 0x20


@dataclass(frozen=True)
class XfsSuper:
    block_size: int
    sect_size: int
    dblocks: int
    agblocks: int
    agcount: int
    agblklog: int
    logstart: int
    logblocks: int
    v5: bool

    def fsb_to_byte(self, fsb: int) -> int:
        ag, agbno = fsb >> self.agblklog, fsb & ((1 << self.agblklog) - 1)
        return (ag * self.agblocks + agbno) * self.block_size


def _crc_ok(buf: bytes, off: int) -> bool:
    return crc32c(buf[:off] + b"\0\0\0\0" + buf[off + 4 :]) == u32le(buf, off)


def read_super(vol: Volume) -> XfsSuper:
    head = vol.read_exact(0, 512, "XFS superblock")
    if head[:4] != b"XFSB":
        raise NotParsed(f"{vol.label}: no XFS superblock")
    ss = u16be(head, 102)
    if ss not in (512, 1024, 2048, 4096, 8192, 16384, 32768):
        raise NotParsed(f"{vol.label}: XFS sector size is corrupt")
    raw = vol.read_exact(0, ss, "XFS superblock")
    v5 = u16be(raw, 100) & 0xF == 5
    if v5 and not _crc_ok(raw, 224):
        raise NotParsed(f"{vol.label}: XFS superblock fails its checksum")
    bs, dblocks, agblocks, agcount = u32be(raw, 4), u64be(raw, 8), u32be(raw, 84), u32be(raw, 88)
    if raw[126]:
        raise NotParsed(f"{vol.label}: XFS mkfs did not finish (sb_inprogress)")
    if v5 and (u32be(raw, 216) & ~_INCOMPAT_OK or u32be(raw, 212) & ~_RO_OK):
        raise NotParsed(
            f"{vol.label}: XFS features we do not parse (incompat {u32be(raw, 216):#x}, ro {u32be(raw, 212):#x})"
        )
    ok = (
        bs in (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
        and 1 << raw[120] == bs
        and agcount > 0
        and agblocks > 0
        and (agcount - 1) * agblocks < dblocks <= agcount * agblocks
        and dblocks * bs <= vol.size
        and raw[124] < 32
        and agblocks <= 1 << raw[124]
    )
    if not ok:
        raise NotParsed(f"{vol.label}: XFS superblock geometry is inconsistent (or larger than its volume)")
    return XfsSuper(bs, ss, dblocks, agblocks, agcount, raw[124], u64be(raw, 48), u32be(raw, 96), v5)


def log_is_clean(vol: Volume, sb: XfsSuper) -> bool:
    """The log head is an unmount record: nothing for log recovery to replay."""
    if not sb.logstart:
        return False  # external log: its state is not on this disk
    base, nbb = sb.fsb_to_byte(sb.logstart), sb.logblocks * sb.block_size // 512
    if base + nbb * 512 > sb.dblocks * sb.block_size or nbb < 2:
        return False

    def bb(n: int) -> bytes:
        return vol.read_exact(base + (n % nbb) * 512, 512, "XFS log")

    def cycle(n: int) -> int:
        b = bb(n)  # a record header carries its cycle in h_cycle; other blocks are stamped with it
        return u32be(b, 4) if u32be(b, 0) == _LOG_MAGIC else u32be(b, 0)

    first, last = cycle(0), cycle(nbb - 1)
    if first == last:
        head = nbb
    else:
        lo, hi = 0, nbb - 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if cycle(mid) == first:
                lo = mid
            else:
                hi = mid
        head = hi
    for back in range(1, min(nbb, 4096)):
        n = (head - back) % nbb
        rec = bb(n)
        if u32be(rec, 0) != _LOG_MAGIC:
            continue
        version, length, nops, size = u32be(rec, 8), u32be(rec, 12), u32be(rec, 40), u32be(rec, 320)
        hblks = -(-size // 32768) if version & 2 and size > 32768 else 1
        if (n + hblks + -(-length // 512)) % nbb != head % nbb:
            return False  # the newest record does not end at the head: torn or in flight
        op = bb(n + hblks)
        return nops >= 1 and bool(op[9] & _UNMOUNT_TRANS)
    return False


def _free_extents(vol: Volume, sb: XfsSuper, ag: int, root: int, levels: int, ag_len: int) -> Iterator[Range]:
    """Free ``(agbno, end)`` extents of one AG in block order, from its bnobt."""
    hdr = 56 if sb.v5 else 16
    magic = b"AB3B" if sb.v5 else b"ABTB"
    maxrecs, leafmax = (sb.block_size - hdr) // 12, (sb.block_size - hdr) // 8
    ag_byte = ag * sb.agblocks * sb.block_size
    # A B+tree never reaches a block twice. Without this check, interior nodes that all point at one
    # child made the walk exponential in the depth (maxrecs ** 8 reads: a hang, found by review)
    seen: set[int] = set()

    def walk(agbno: int, level: int) -> Iterator[Range]:
        if not 0 < agbno < ag_len:
            raise NotParsed(f"{vol.label}: XFS AG {ag} free space tree points outside the AG")
        if agbno in seen:
            raise NotParsed(f"{vol.label}: XFS AG {ag} free space tree reaches block {agbno} twice")
        seen.add(agbno)
        blk = vol.read_exact(ag_byte + agbno * sb.block_size, sb.block_size, "XFS bnobt block")
        nrecs = u16be(blk, 6)
        if blk[:4] != magic or u16be(blk, 4) != level or nrecs > (maxrecs if level else leafmax):
            raise NotParsed(f"{vol.label}: XFS AG {ag} free space tree block {agbno} is corrupt")
        if sb.v5 and (u64be(blk, 16) * 512 != ag_byte + agbno * sb.block_size or u32be(blk, 48) != ag):
            raise NotParsed(f"{vol.label}: XFS AG {ag} free space tree block {agbno} is misplaced")
        if level == 0:
            for i in range(nrecs):
                start, count = u32be(blk, hdr + 8 * i), u32be(blk, hdr + 8 * i + 4)
                yield start, start + count
        else:
            for i in range(nrecs):
                yield from walk(u32be(blk, hdr + maxrecs * 8 + 4 * i), level - 1)

    yield from walk(root, levels - 1)


def active_ranges(vol: Volume) -> tuple[list[Range], list[str]]:
    sb = read_super(vol)
    if not log_is_clean(vol, sb):
        raise NotParsed(
            f"{vol.label}: XFS log is dirty or external (mounted when the snapshot was taken); "
            "allocations may exist only in the log"
        )
    bs = sb.block_size
    runs = RunBuilder()
    for ag in range(sb.agcount):
        ag_len = min(sb.agblocks, sb.dblocks - ag * sb.agblocks)
        agf = vol.read_exact(ag * sb.agblocks * bs + sb.sect_size, sb.sect_size, "XFS AGF")
        if agf[:4] != b"XAGF" or u32be(agf, 8) != ag or u32be(agf, 12) != ag_len:
            raise NotParsed(f"{vol.label}: XFS AG {ag} header (AGF) is corrupt")
        if sb.v5 and not _crc_ok(agf, 216):
            raise NotParsed(f"{vol.label}: XFS AG {ag} header (AGF) fails its checksum")
        root, levels, freeblks = u32be(agf, 16), u32be(agf, 28), u32be(agf, 52)
        if not 1 <= levels <= _MAX_LEVELS:
            raise NotParsed(f"{vol.label}: XFS AG {ag} free space tree depth is corrupt")
        base, pos, total = ag * sb.agblocks, 0, 0
        for start, end in _free_extents(vol, sb, ag, root, levels, ag_len):
            if start < pos or end > ag_len or end <= start:
                raise NotParsed(f"{vol.label}: XFS AG {ag} free extents overlap or leave the AG")
            runs.add((base + pos) * bs, (base + start) * bs)
            pos, total = end, total + end - start
        runs.add((base + pos) * bs, (base + ag_len) * bs)
        if total != freeblks:
            raise NotParsed(f"{vol.label}: XFS AG {ag} free space tree disagrees with its AGF count")
    tail = [(sb.dblocks * bs, vol.size)] if sb.dblocks * bs < vol.size else []
    return [*runs.result(), *tail], []
