"""A disk's block geometry, in one place: how many blocks, and how long each one is.

Blocks are ``block_size`` bytes from offset 0; only the last may be shorter (a disk whose size is
not a multiple of the block size). The map has one entry per block, the protocol sends one block per
BLOCK frame, the scanner and hash-ahead hash per block, and the target fills zero entries per block:
all of them ask here, so they cannot disagree about the last block.
"""

from __future__ import annotations

from dataclasses import dataclass


def block_count(size: int, block_size: int) -> int:
    """Blocks that cover ``size`` bytes (the last one possibly short)."""
    return -(-size // block_size)


@dataclass(frozen=True, slots=True)
class Geometry:
    size: int
    block_size: int

    @property
    def blocks(self) -> int:
        return block_count(self.size, self.block_size)

    @property
    def full_blocks(self) -> int:
        """Blocks of the full block size (all but a short last one)."""
        return self.size // self.block_size

    @property
    def tail(self) -> int:
        """Length of the last block: ``block_size`` unless the disk ends inside a block; 0 if empty."""
        return self.size - (self.blocks - 1) * self.block_size if self.size else 0

    def length(self, offset: int) -> int:
        """Length of the block that starts at ``offset``."""
        return min(self.block_size, self.size - offset)
