"""ext2/3/4: active blocks from the block bitmaps, plus all metadata whatever the bitmaps say.

Group descriptors may be 32 or 64 bytes (``64bit``), bitmaps and inode tables may live in another
group (``flex_bg``), and a group flagged ``BLOCK_UNINIT`` has no bitmap on disk: only its metadata
is in use. Superblocks, descriptor tables, bitmaps and inode tables are always active.

A filesystem that was mounted when the snapshot was taken has ``needs_recovery`` set: its newest
bitmaps may sit in the journal only. We then union every bitmap copy the journal holds
(:mod:`source_agent.filters.jbd2`), so blocks that journal replay will mark in use stay active.
Anything unexpected (an unknown feature, a checksum or count that does not add up) gives up.
"""

from __future__ import annotations

from dataclasses import dataclass

from source_agent.filters.volume import (
    NotParsed,
    Range,
    RunBuilder,
    Volume,
    crc32c,
    popcount,
    set_bit_runs,
    u16le,
    u32le,
)

MAGIC_OFFSET = 1024 + 0x38

# feature bits we understand; any other bit makes the filesystem fully active
_COMPAT_BAD = 0x100  # exclude_bitmap (ext4 snapshots)
_INCOMPAT_OK = 0x0002 | 0x0004 | 0x0010 | 0x0040 | 0x0080 | 0x0100 | 0x0200 | 0x0400
_INCOMPAT_OK |= 0x1000 | 0x2000 | 0x4000 | 0x8000 | 0x10000 | 0x20000
_RO_OK = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20 | 0x40 | 0x100 | 0x200 | 0x400 | 0x1000 | 0x2000 | 0x8000
_RO_OK |= 0x10000
INCOMPAT_RECOVER = 0x0004
INCOMPAT_META_BG = 0x0010
INCOMPAT_64BIT = 0x0080
RO_SPARSE_SUPER = 0x1
RO_GDT_CSUM = 0x10
RO_BIGALLOC = 0x200
RO_METADATA_CSUM = 0x400
COMPAT_HAS_JOURNAL = 0x4
COMPAT_SPARSE_SUPER2 = 0x200
BG_BLOCK_UNINIT = 0x2


@dataclass(frozen=True)
class Super:
    """The superblock fields ABM needs, validated."""

    raw: bytes
    block_size: int
    cluster_ratio: int  # blocks per bitmap bit (bigalloc)
    blocks_count: int
    first_data_block: int
    blocks_per_group: int
    clusters_per_group: int
    inodes_per_group: int
    inode_size: int
    groups: int
    desc_size: int
    compat: int
    incompat: int
    ro_compat: int
    reserved_gdt: int
    first_meta_bg: int

    @property
    def desc_per_block(self) -> int:
        return self.block_size // self.desc_size

    @property
    def gdt_blocks(self) -> int:
        return -(-self.groups // self.desc_per_block)

    @property
    def uninit_trusted(self) -> bool:
        """The kernel honours ``BLOCK_UNINIT`` only with group descriptor checksums."""
        return bool(self.ro_compat & (RO_GDT_CSUM | RO_METADATA_CSUM))

    def group_first_block(self, g: int) -> int:
        return self.first_data_block + g * self.blocks_per_group

    def has_super(self, g: int) -> bool:
        if g == 0:
            return True
        if self.compat & COMPAT_SPARSE_SUPER2:
            return g in (u32le(self.raw, 0x24C), u32le(self.raw, 0x250))
        if g <= 1 or not self.ro_compat & RO_SPARSE_SUPER:
            return True
        if not g & 1:
            return False
        for base in (3, 5, 7):
            n = base
            while n < g:
                n *= base
            if n == g:
                return True
        return False

    def base_meta(self, g: int) -> list[Range]:
        """Block ranges of group ``g``'s superblock and descriptor copies (ext2fs_super_and_bgd_loc2)."""
        # on 1 KiB-block bigalloc the first data block is 0 but the superblock still sits in block 1
        first = (
            max(self.group_first_block(g), 1024 // self.block_size) if g == 0 else self.group_first_block(g)
        )
        sup = 1 if self.has_super(g) else 0
        out = [(first, first + sup)] if sup else []
        meta_bg = bool(self.incompat & INCOMPAT_META_BG)
        if not meta_bg or g // self.desc_per_block < self.first_meta_bg:
            if sup:
                old = self.first_meta_bg if meta_bg else self.gdt_blocks + self.reserved_gdt
                out.append((first + 1, first + 1 + old))
        elif g % self.desc_per_block in (0, 1, self.desc_per_block - 1):
            out.append((first + sup, first + sup + 1))
        return out

    def desc_location(self, g: int) -> tuple[int, int]:
        """``(block, byte offset in block)`` of group ``g``'s descriptor."""
        m, idx = divmod(g, self.desc_per_block)
        if self.incompat & INCOMPAT_META_BG and m >= self.first_meta_bg:
            first = m * self.desc_per_block
            block = self.group_first_block(first) + (1 if self.has_super(first) else 0)
        else:
            block = 1024 // self.block_size + 1 + m  # right after the block holding the superblock
        return block, idx * self.desc_size


def read_super(vol: Volume) -> Super:
    raw = vol.read_exact(1024, 1024, "ext superblock")
    return parse_super(raw, vol.size, vol.label)


def parse_super(raw: bytes, vol_size: int, label: str) -> Super:
    if u16le(raw, 0x38) != 0xEF53:
        raise NotParsed(f"{label}: no ext superblock magic")
    compat, incompat, ro = u32le(raw, 0x5C), u32le(raw, 0x60), u32le(raw, 0x64)
    if ro & RO_METADATA_CSUM and u32le(raw, 0x3FC) != crc32c(raw[:0x3FC]) ^ 0xFFFFFFFF:
        raise NotParsed(f"{label}: ext superblock fails its checksum")
    if compat & _COMPAT_BAD or incompat & ~_INCOMPAT_OK or ro & ~_RO_OK:
        raise NotParsed(
            f"{label}: ext features we do not parse (compat {compat:#x}, incompat {incompat:#x}, "
            f"ro_compat {ro:#x})"
        )
    log_bs, log_cs = u32le(raw, 0x18), u32le(raw, 0x1C)
    if log_bs > 6 or (ro & RO_BIGALLOC and not log_bs <= log_cs <= log_bs + 16):
        raise NotParsed(f"{label}: ext block size field is corrupt")
    bs = 1024 << log_bs
    ratio = 1 << (log_cs - log_bs) if ro & RO_BIGALLOC else 1
    blocks = u32le(raw, 0x4) | ((u32le(raw, 0x150) << 32) if incompat & INCOMPAT_64BIT else 0)
    first = u32le(raw, 0x14)
    bpg, cpg, ipg = u32le(raw, 0x20), u32le(raw, 0x24), u32le(raw, 0x28)
    rev = u32le(raw, 0x4C)
    isize = u16le(raw, 0x58) if rev >= 1 else 128
    if not ro & RO_BIGALLOC:
        cpg = bpg
    desc = u16le(raw, 0xFE) if incompat & INCOMPAT_64BIT else 32
    ok = (
        0 < cpg <= bs * 8
        and cpg % 8 == 0
        and bpg == cpg * ratio
        and first == (1 if bs == 1024 and ratio == 1 else 0)
        and first < blocks
        and blocks * bs <= vol_size
        and ipg > 0
        and 128 <= isize <= bs
        and isize & (isize - 1) == 0
        and desc in (32, 64, 128, 256, 512, 1024)
        and desc <= bs
    )
    if not ok:
        raise NotParsed(
            f"{label}: ext superblock geometry is inconsistent (or the fs is larger than its volume)"
        )
    groups = -(-(blocks - first) // bpg)
    if u32le(raw, 0x0) > groups * ipg:
        raise NotParsed(f"{label}: ext inode count does not match its groups")
    return Super(
        raw,
        bs,
        ratio,
        blocks,
        first,
        bpg,
        cpg,
        ipg,
        isize,
        groups,
        desc,
        compat,
        incompat,
        ro,
        u16le(raw, 0xCE),
        u32le(raw, 0x104),
    )


@dataclass(frozen=True)
class Desc:
    block_bitmap: int
    inode_bitmap: int
    inode_table: int
    free: int
    flags: int


def parse_desc(sb: Super, raw: bytes, off: int) -> Desc:
    d = raw[off : off + sb.desc_size]
    bb, ib, it = u32le(d, 0), u32le(d, 4), u32le(d, 8)
    free = u16le(d, 0xC)
    if sb.desc_size >= 64:
        bb |= u32le(d, 0x20) << 32
        ib |= u32le(d, 0x24) << 32
        it |= u32le(d, 0x28) << 32
        free |= u16le(d, 0x2C) << 16
    return Desc(bb, ib, it, free, u16le(d, 0x12))


def read_descs(vol: Volume, sb: Super) -> list[Desc]:
    """All group descriptors (64 bytes each at most: 1 MiB of memory for a 16 TiB filesystem)."""
    out: list[Desc] = []
    cache: tuple[int, bytes] = (-1, b"")
    itable = -(-sb.inodes_per_group * sb.inode_size // sb.block_size)
    for g in range(sb.groups):
        block, off = sb.desc_location(g)
        if cache[0] != block:
            cache = (block, vol.read_exact(block * sb.block_size, sb.block_size, "ext group descriptors"))
        d = parse_desc(sb, cache[1], off)
        for what, start, n in (
            ("block bitmap", d.block_bitmap, 1),
            ("inode bitmap", d.inode_bitmap, 1),
            ("inode table", d.inode_table, itable),
        ):
            if not (sb.first_data_block <= start and start + n <= sb.blocks_count):
                raise NotParsed(f"{vol.label}: ext group {g} {what} lies outside the filesystem")
        if d.free > sb.clusters_per_group:
            raise NotParsed(f"{vol.label}: ext group {g} claims more free blocks than it has")
        out.append(d)
    return out


def metadata_blocks(sb: Super, descs: list[Desc]) -> list[Range]:
    """Block ranges of every superblock, descriptor table, bitmap and inode table."""
    itable = -(-sb.inodes_per_group * sb.inode_size // sb.block_size)
    out: list[Range] = [(0, max(sb.first_data_block, 1))]  # boot block and primary superblock
    for g, d in enumerate(descs):
        out += sb.base_meta(g)
        out += [(d.block_bitmap, d.block_bitmap + 1), (d.inode_bitmap, d.inode_bitmap + 1)]
        out.append((d.inode_table, d.inode_table + itable))
    return out


def active_ranges(vol: Volume) -> tuple[list[Range], list[str]]:
    """Active byte ranges of an ext2/3/4 volume and notes worth one log line (never empty on error)."""
    from source_agent.filters import jbd2  # local: the journal is only read when it must be

    sb = read_super(vol)
    descs = read_descs(vol, sb)
    bs, ratio = sb.block_size, sb.cluster_ratio
    journal_copies: dict[int, list[bytes]] = {}
    notes: list[str] = []
    if sb.incompat & INCOMPAT_RECOVER:
        journal_copies = jbd2.journal_copies(vol, sb, descs)
        notes.append(
            f"journal needs recovery: {sum(map(len, journal_copies.values()))} journaled blocks merged"
        )
    suspect_groups = jbd2.changed_groups(sb, descs, journal_copies) if journal_copies else set()
    runs = RunBuilder()
    meta = [(s * bs, e * bs) for s, e in metadata_blocks(sb, descs)]
    bad_groups = 0
    total_clusters = -(-(sb.blocks_count - sb.first_data_block) // ratio)
    for g, d in enumerate(descs):
        first = sb.group_first_block(g)
        nbits = min(sb.clusters_per_group, total_clusters - g * sb.clusters_per_group)
        copies = journal_copies.get(d.block_bitmap, [])
        if g in suspect_groups:
            runs.add(first * bs, min(first + nbits * ratio, sb.blocks_count) * bs)
            continue
        if d.flags & BG_BLOCK_UNINIT and sb.uninit_trusted and not copies:
            continue  # only metadata in use, already in `meta`
        bitmap = vol.read_exact(d.block_bitmap * bs, bs, f"ext group {g} block bitmap")
        if not copies and nbits - popcount(bitmap[: nbits // 8]) - _tail_used(bitmap, nbits) != d.free:
            bad_groups += 1
            runs.add(first * bs, min(first + nbits * ratio, sb.blocks_count) * bs)
            continue
        if copies:
            merged = int.from_bytes(bitmap, "little")
            for copy in copies:
                merged |= int.from_bytes(copy, "little")
            bitmap = merged.to_bytes(bs, "little")
        for s, e in set_bit_runs(bitmap, nbits):
            runs.add((first + s * ratio) * bs, min(first + e * ratio, sb.blocks_count) * bs)
    if bad_groups:
        notes.append(f"{bad_groups} group bitmap(s) disagree with their free count; kept fully active")
    # the volume beyond the filesystem's end is not ours to judge
    tail = [(sb.blocks_count * bs, vol.size)] if sb.blocks_count * bs < vol.size else []
    return [*runs.result(), *meta, *tail], notes


def _tail_used(bitmap: bytes, nbits: int) -> int:
    if nbits % 8 == 0:
        return 0
    return (bitmap[nbits // 8] & ((1 << (nbits % 8)) - 1)).bit_count()
