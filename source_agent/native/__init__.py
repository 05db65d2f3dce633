"""The scanner's compiled kernel (``blockscan.c``), loaded with ctypes, and its pure-Python twin.

:func:`kernel` returns the compiled one when it was built (``setup.py``; needs a C compiler at
install) and ``VZREP_SCAN`` is not ``python``, else :func:`classify_python`. Both take the same
arguments and fill the same outputs, so the scanner has one code path and the tests judge both
against an independent reading of the disk.

Why compiled: ctypes releases the GIL for the call, so the scanning threads check zeros and hash on
both cores while the event loop sends; the Python loop held the GIL for everything but the hash.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from functools import lru_cache
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

from blake3 import blake3

from vzcommon.geometry import block_count

HASH_LEN = 32

# want[i]: what the caller asks of block i
WANT_SKIP, WANT_READ, WANT_HOLE = 0, 1, 2
# kind[i]: what block i turned out to be (blockscan.c names them)
KIND_SKIPPED, KIND_ZERO_SAME, KIND_ZERO_NEW, KIND_SAME, KIND_CHANGED = range(5)

#: kernel(address, length, block_size, want, old, zero_hash, zero_hash_tail, hashes, kinds, data)
#: ``address`` is the window's first byte (0 when no block is read); ``data`` the same bytes as a
#: buffer (only the Python kernel reads it); ``hashes`` and ``kinds`` are bytearrays it fills.
#: Returns the number of blocks to send.
Kernel = Callable[[int, int, int, bytes, bytes, bytes, bytes, bytearray, bytearray, "memoryview | None"], int]


def scan_mode() -> str:
    """``auto`` (the compiled kernel when built) or ``python`` (never), from ``VZREP_SCAN``."""
    return "python" if os.environ.get("VZREP_SCAN", "auto").strip().lower() == "python" else "auto"


def library_path() -> Path | None:
    """The built kernel next to this file (an extension-module file name, loaded with ctypes)."""
    here = Path(__file__).parent
    for suffix in EXTENSION_SUFFIXES:
        path = here / f"_blockscan{suffix}"
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    path = library_path()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(str(path))  # CDLL (not PyDLL): calls release the GIL
    except OSError:
        return None
    fn = lib.vz_blockscan
    fn.restype = ctypes.c_size_t
    fn.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_char_p,
        ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p,
    ]  # fmt: skip
    lib.vz_blockscan_blake3_version.restype = ctypes.c_char_p
    return lib


def classify_native(
    address: int,
    length: int,
    block_size: int,
    want: bytes,
    old: bytes,
    zero_hash: bytes,
    zero_hash_tail: bytes,
    hashes: bytearray,
    kinds: bytearray,
    data: memoryview | None = None,
) -> int:
    lib = _library()
    assert lib is not None
    nblocks = block_count(length, block_size)
    if len(want) < nblocks or len(old) < nblocks * HASH_LEN or len(hashes) < nblocks * HASH_LEN or len(kinds) < nblocks:
        raise ValueError("blockscan: arrays shorter than the window")  # the C code trusts the lengths
    out_h = (ctypes.c_char * len(hashes)).from_buffer(hashes)
    out_k = (ctypes.c_char * len(kinds)).from_buffer(kinds)
    try:
        return int(
            lib.vz_blockscan(
                address or None, length, block_size, want, old, zero_hash, zero_hash_tail,
                ctypes.addressof(out_h), ctypes.addressof(out_k),
            )
        )  # fmt: skip
    finally:
        del out_h, out_k


def classify_python(
    address: int,
    length: int,
    block_size: int,
    want: bytes,
    old: bytes,
    zero_hash: bytes,
    zero_hash_tail: bytes,
    hashes: bytearray,
    kinds: bytearray,
    data: memoryview | None = None,
) -> int:
    """What ``vz_blockscan`` does, in Python (reads ``data``; ``address`` is ignored).

    (``tobytes() ==`` copies the block and then compares with memcmp: 30x faster than comparing
    a memoryview with bytes, which goes element by element.)
    """
    bs, to_send = block_size, 0
    zeros = bytes(bs)
    for i in range(block_count(length, bs)):
        lo = i * bs
        n = min(bs, length - lo)
        h = slice(i * HASH_LEN, (i + 1) * HASH_LEN)
        was = old[h]
        if want[i] == WANT_SKIP:
            hashes[h], kinds[i] = was, KIND_SKIPPED
            continue
        if want[i] == WANT_HOLE or (data is not None and data[lo : lo + n].tobytes() == zeros[:n]):
            zh = zero_hash if n == bs else zero_hash_tail
            hashes[h] = zh
            kinds[i] = KIND_ZERO_SAME if was == zh else KIND_ZERO_NEW
        else:
            assert data is not None
            digest = blake3(data[lo : lo + n]).digest()
            hashes[h] = digest
            kinds[i] = KIND_SAME if was == digest else KIND_CHANGED
        to_send += kinds[i] in (KIND_ZERO_NEW, KIND_CHANGED)
    return to_send


def kernel() -> Kernel:
    """The kernel the scanner uses now (see the module docstring)."""
    return classify_native if scan_mode() == "auto" and _library() is not None else classify_python


def kernel_name() -> str:
    """``native`` or ``python``: which kernel :func:`kernel` returns (for the report and the logs)."""
    return "native" if kernel() is classify_native else "python"


def blake3_c_version() -> str:
    lib = _library()
    return lib.vz_blockscan_blake3_version().decode() if lib is not None else ""
