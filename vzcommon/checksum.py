"""CRC-32 for frames and undo records: ISA-L's implementation when installed (the same function as
zlib's, ~8x faster here), zlib's otherwise."""

from __future__ import annotations

try:
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - isal is a dependency; zlib is the fallback
    from zlib import crc32

__all__ = ["crc32"]
