"""The ext3/4 journal (JBD2), read only to learn what journal replay will change.

A snapshot of a mounted filesystem has ``needs_recovery`` set, and its newest block bitmaps and group
descriptors may exist only in the journal. We walk the log from ``s_start`` and collect every copy of
a block bitmap, descriptor block or superblock it holds, committed or not (a superset is safe: it only
keeps more blocks active). Revoke records are ignored for the same reason.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

from source_agent.filters.volume import NotParsed, Volume, u16le, u32be, u32le

if TYPE_CHECKING:
    from source_agent.filters.ext import Desc, Super

_MAGIC = 0xC03B3998
_EXTENTS_FL = 0x80000
_INC_64BIT, _INC_CSUM_V2, _INC_CSUM_V3, _INC_FAST_COMMIT = 0x2, 0x8, 0x10, 0x20
_INC_KNOWN = 0x1 | 0x2 | 0x4 | 0x8 | 0x10
_FLAG_ESCAPE, _FLAG_SAME_UUID, _FLAG_LAST = 0x1, 0x2, 0x8


def _inode(vol: Volume, sb: Super, descs: list[Desc], ino: int) -> bytes:
    g, idx = divmod(ino - 1, sb.inodes_per_group)
    if not 0 <= g < len(descs):
        raise NotParsed(f"{vol.label}: ext journal inode {ino} does not exist")
    off = descs[g].inode_table * sb.block_size + idx * sb.inode_size
    return vol.read_exact(off, sb.inode_size, "ext journal inode")


def _extent_map(
    vol: Volume,
    sb: Super,
    node: bytes,
    depth_left: int,
    out: list[tuple[int, int, int]],
    seen: set[int] | None = None,
) -> None:
    """Walk the journal inode's extent tree. ``seen``: the index blocks read so far; a tree never
    reaches one twice, and index nodes that all point at one child made the walk exponential (a hang
    and unbounded memory at depth 4; found by review of the fuzz targets)."""
    if u16le(node, 0) != 0xF30A or depth_left < 0:
        raise NotParsed(f"{vol.label}: ext journal extent tree is corrupt")
    seen = set() if seen is None else seen
    entries, depth = u16le(node, 2), u16le(node, 6)
    for i in range(entries):
        e = node[12 + 12 * i : 24 + 12 * i]
        if depth == 0:
            length = u16le(e, 4)
            length = length - 32768 if length > 32768 else length
            out.append((u32le(e, 0), u32le(e, 8) | (u16le(e, 6) << 32), length))
        else:
            child = u32le(e, 4) | (u16le(e, 8) << 32)
            if child in seen:
                raise NotParsed(f"{vol.label}: ext journal extent tree reaches block {child} twice")
            seen.add(child)
            data = vol.read_exact(child * sb.block_size, sb.block_size, "ext extent block")
            _extent_map(vol, sb, data, min(depth_left, depth) - 1, out, seen)


def _indirect_map(vol: Volume, sb: Super, iblock: bytes, nblocks: int) -> list[tuple[int, int, int]]:
    per = sb.block_size // 4
    out: list[tuple[int, int, int]] = []
    if nblocks > sb.blocks_count:  # the inode's size bounds the walk: it cannot exceed the filesystem
        raise NotParsed(f"{vol.label}: ext journal inode is larger than its filesystem")
    seen: set[int] = set()  # as in _extent_map: indirect blocks shared by several pointers

    def walk(block: int, level: int, logical: int) -> None:
        if not block or logical >= nblocks:
            return
        if level == 0:
            out.append((logical, block, 1))
            return
        if block in seen:
            raise NotParsed(f"{vol.label}: ext journal block map reaches block {block} twice")
        seen.add(block)
        data = vol.read_exact(block * sb.block_size, sb.block_size, "ext indirect block")
        span = per ** (level - 1)
        for i in range(per):
            walk(u32le(data, 4 * i), level - 1, logical + i * span)

    for i in range(12):
        walk(u32le(iblock, 4 * i), 0, i)
    walk(u32le(iblock, 48), 1, 12)
    walk(u32le(iblock, 52), 2, 12 + per)
    walk(u32le(iblock, 56), 3, 12 + per + per * per)
    return out


class _JournalFile:
    """Logical journal block -> filesystem block, from the journal inode's block map."""

    def __init__(self, vol: Volume, sb: Super, descs: list[Desc]) -> None:
        ino = u32le(sb.raw, 0xE0)
        if not ino:
            raise NotParsed(f"{vol.label}: ext journal is external; its replay cannot be predicted")
        inode = _inode(vol, sb, descs, ino)
        size = u32le(inode, 0x4) | (u32le(inode, 0x6C) << 32)
        nblocks = size // sb.block_size
        exts: list[tuple[int, int, int]] = []
        if u32le(inode, 0x20) & _EXTENTS_FL:
            _extent_map(vol, sb, inode[0x28:0x64], 5, exts)
        else:
            exts = _indirect_map(vol, sb, inode[0x28:0x64], nblocks)
        self.vol, self.bs = vol, sb.block_size
        self.exts = sorted(exts)
        self.starts = [e[0] for e in self.exts]

    def read(self, lblock: int) -> bytes:
        i = bisect.bisect_right(self.starts, lblock) - 1
        if i < 0 or lblock >= self.exts[i][0] + self.exts[i][2]:
            raise NotParsed(f"{self.vol.label}: ext journal block {lblock} is not mapped")
        logical, phys, _ = self.exts[i]
        return self.vol.read_exact((phys + lblock - logical) * self.bs, self.bs, "ext journal block")


def journal_copies(vol: Volume, sb: Super, descs: list[Desc] | None = None) -> dict[int, list[bytes]]:
    """Map filesystem block -> every copy the journal holds of it (bitmaps, descriptors, superblock)."""
    from source_agent.filters.ext import read_descs

    descs = descs if descs is not None else read_descs(vol, sb)
    wanted = {d.block_bitmap for d in descs}
    wanted |= {sb.desc_location(m * sb.desc_per_block)[0] for m in range(sb.gdt_blocks)}
    wanted.add(1024 // sb.block_size)  # the block holding the primary superblock
    jf = _JournalFile(vol, sb, descs)
    jsb = jf.read(0)
    if u32be(jsb, 0) != _MAGIC or u32be(jsb, 4) not in (3, 4) or u32be(jsb, 12) != sb.block_size:
        raise NotParsed(f"{vol.label}: ext journal superblock is corrupt")
    maxlen, first, seq, start = u32be(jsb, 16), u32be(jsb, 20), u32be(jsb, 24), u32be(jsb, 28)
    incompat = u32be(jsb, 40) if u32be(jsb, 4) == 4 else 0
    if start == 0:
        return {}  # the journal is empty: nothing to replay
    if incompat & ~_INC_KNOWN or incompat & _INC_FAST_COMMIT or not first <= start < maxlen:
        raise NotParsed(
            f"{vol.label}: ext journal needs recovery with features we do not follow ({incompat:#x})"
        )
    if incompat & _INC_CSUM_V3:
        tag_size = 16
    else:
        tag_size = 12 + (2 if incompat & _INC_CSUM_V2 else 0) - (0 if incompat & _INC_64BIT else 4)
    tail = 4 if incompat & (_INC_CSUM_V2 | _INC_CSUM_V3) else 0

    def nxt(p: int) -> int:
        return first if p + 1 >= maxlen else p + 1

    copies: dict[int, list[bytes]] = {}
    pos, steps = start, 0
    while steps < maxlen:
        blk = jf.read(pos)
        if u32be(blk, 0) != _MAGIC or u32be(blk, 8) != seq:
            break
        btype = u32be(blk, 4)
        pos, steps = nxt(pos), steps + 1
        if btype == 1:
            off = 12
            while off + tag_size <= sb.block_size - tail:
                target = u32be(blk, off)
                if tag_size == 16:
                    flags = u32be(blk, off + 4)
                    target |= u32be(blk, off + 8) << 32
                else:
                    flags = u32be(blk, off + 4) & 0xFFFF
                    if incompat & _INC_64BIT:
                        target |= u32be(blk, off + 8) << 32
                if target in wanted:
                    data = jf.read(pos)
                    if flags & _FLAG_ESCAPE:
                        data = _MAGIC.to_bytes(4, "big") + data[4:]
                    copies.setdefault(target, []).append(data)
                pos, steps = nxt(pos), steps + 1
                off += tag_size + (0 if flags & _FLAG_SAME_UUID else 16)
                if flags & _FLAG_LAST:
                    break
        elif btype == 2:
            seq = (seq + 1) & 0xFFFFFFFF
        elif btype != 5:
            break
    return copies


def changed_groups(sb: Super, descs: list[Desc], copies: dict[int, list[bytes]]) -> set[int]:
    """Groups whose descriptor the journal changes in a way bitmaps cannot follow: keep them whole."""
    from source_agent.filters.ext import parse_desc, parse_super

    sb_block = 1 if sb.block_size == 1024 else 0
    for copy in copies.get(sb_block, []):
        raw = copy[1024:2048] if sb.block_size > 1024 else copy[:1024]
        try:
            other = parse_super(raw, 1 << 62, "journaled superblock")
        except NotParsed:
            continue  # the superblock copy is only read for its geometry
        if (other.blocks_count, other.groups) != (sb.blocks_count, sb.groups):
            raise NotParsed("ext journal holds a resize; its replay cannot be predicted")
    out: set[int] = set()
    for m in range(sb.gdt_blocks):
        first_group = m * sb.desc_per_block
        block = sb.desc_location(first_group)[0]
        for copy in copies.get(block, []):
            for g in range(first_group, min(first_group + sb.desc_per_block, sb.groups)):
                d = parse_desc(sb, copy, (g - first_group) * sb.desc_size)
                old = descs[g]
                if d.block_bitmap != old.block_bitmap or (d.flags ^ old.flags) & 0x2:
                    out.add(g)
    return out
