"""The block hash: BLAKE3-256 over a block's bytes.

BLAKE3 hashes ~5 GB/s single-threaded here and is collision resistant, so a matching hash lets the
source skip a block and lets the target verify what it received. The threaded mode is slower on 64 KiB
blocks, so it is not used.
"""

from __future__ import annotations

from functools import lru_cache

from blake3 import blake3

HASH_NAME = "blake3-256"
HASH_LEN = 32
#: Map entry meaning "content unknown" (never written, or skipped as inactive). No block hashes to it.
UNKNOWN_HASH = bytes(HASH_LEN)


def hash_block(data: bytes | memoryview) -> bytes:
    return blake3(data).digest()


@lru_cache(maxsize=16)
def zero_block(length: int) -> bytes:
    """A shared all-zero block; ``block == zero_block(len(block))`` is a fast memcmp."""
    return bytes(length)


@lru_cache(maxsize=16)
def zero_hash(length: int) -> bytes:
    return hash_block(zero_block(length))
