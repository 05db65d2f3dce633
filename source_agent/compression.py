"""Whether and how a changed block is compressed: every decision in one place.

Three levels, each decided here and nowhere else:

* per pass, :func:`pass_mode`: ``--compress zstd`` always, ``none`` never (or when the target did not
  accept zstd in the handshake), ``auto`` probes;
* per chunk, :func:`chunk_mode`: in ``auto`` the chunk is compressed outright while the sender is
  behind (the link, not the scanner, is the bottleneck), else its first changed block is the probe;
* per block, :class:`BlockPacker`: a probe that shrinks below ``PROBE_RATIO`` turns compression on for
  the rest of the chunk; a block is sent compressed only if that saves ~3 %; ``GIVE_UP_AFTER``
  blocks in a row that do not shrink turn it off for the rest of the chunk.

zstd level 1 (``ZSTD_LEVEL``): most of the ratio at the highest speed (README, "Performance").
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from enum import Enum

import zstandard

from protocol.messages import Codec

ZSTD_LEVEL = 1
PROBE_RATIO = 0.85
GIVE_UP_AFTER = 4  # consecutive blocks that do not shrink: stop compressing the rest of the chunk


class Compress(Enum):
    OFF = "off"
    ON = "on"
    #: compress the chunk if its first changed block shrinks to under PROBE_RATIO
    PROBE = "probe"


def pass_mode(option: str, codecs: Collection[int]) -> Compress:
    """The pass's mode from ``--compress`` and the codecs the target accepted."""
    if option == "none" or Codec.ZSTD not in codecs:
        return Compress.OFF
    return Compress.ON if option == "zstd" else Compress.PROBE


def chunk_mode(mode: Compress, sender_behind: bool) -> Compress:
    """A chunk's mode: in ``auto``, a sender that is behind means the link is the bottleneck."""
    return Compress.ON if mode is Compress.PROBE and sender_behind else mode


_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    """One compressor per worker thread (a ZstdCompressor must not be shared between threads)."""
    cctx: zstandard.ZstdCompressor | None = getattr(_local, "cctx", None)
    if cctx is None:
        cctx = _local.cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return cctx


class BlockPacker:
    """The per-block decisions of one chunk (one packer per chunk, used by one thread)."""

    def __init__(self, mode: Compress) -> None:
        self.compress = mode is Compress.ON
        self.probing = mode is Compress.PROBE  # the chunk's first changed block decides for the chunk
        self.misses = 0

    def pack(self, payload: bytes) -> tuple[bytes, Codec]:
        """The bytes to send for a changed block and their codec."""
        if not (self.compress or self.probing):
            return payload, Codec.NONE
        n = len(payload)
        packed = _compressor().compress(payload)
        if self.probing:
            self.probing, self.compress = False, len(packed) < n * PROBE_RATIO
        if len(packed) < n - n // 32:
            self.misses = 0
            return packed, Codec.ZSTD
        self.misses += 1
        self.compress = self.compress and self.misses < GIVE_UP_AFTER
        return payload, Codec.NONE
