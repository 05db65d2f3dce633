"""Hash-ahead (``hashahead.c``): native threads that hash a disk's blocks ahead of the pipeline.

Why: an incremental pass reads and hashes the whole disk to find the few blocks that changed. These
threads do that without Python, so they need no GIL, and they start before the source has imported
asyncssh and connected, on the core that would otherwise sit idle (README, "Performance"). Their
hashes do not depend on the target's map; the pipeline compares them with it chunk by chunk
(:func:`classify`) and re-reads only the blocks it sends.

Used for a disk that is one region of one file or device (raw images, block devices, single-extent
flat VMDKs), read in full (no ABM/CBT filter), in an incremental pass (the replica has a map: in a
first pass every block is sent, so reading it twice would cost more than it saves), and only when
:func:`available`; otherwise the pipeline scans chunk by chunk as before.

Reading: the threads map a regular file on a local filesystem chunk by chunk (``region.mappable``,
decided as in ``source_agent/disks/mapping.py``, with the same SIGBUS caveat for a file truncated
under them) and ``pread`` anything else. They may run up to ``LOOKAHEAD_BYTES`` of disk ahead of the
pipeline; the page cache, not this process, holds what they read.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from dataclasses import dataclass
from functools import lru_cache

from vzcommon.errors import InputError
from vzcommon.geometry import block_count

from . import HASH_LEN, _library, scan_mode

#: flags of a finished block (hashahead.c)
AHEAD_HOLE, AHEAD_ZERO, AHEAD_DATA = 1, 2, 3
#: how far the threads may run ahead of the pipeline, in disk bytes (results: 33 bytes per block)
LOOKAHEAD_BYTES = 4 << 30


@dataclass(frozen=True)
class Region:
    """Where a disk's bytes are: ``[offset, offset + size)`` of ``fd``; ``mappable`` per ``disks.mapping``."""

    fd: int
    offset: int
    mappable: bool


@lru_cache(maxsize=1)
def _bound() -> ctypes.CDLL:
    """The library with the hash-ahead functions' signatures declared."""
    lib = _library()
    if lib is None:
        raise RuntimeError("hash-ahead needs the compiled scan library")
    u64, vp, cp = ctypes.c_uint64, ctypes.c_void_p, ctypes.c_char_p
    lib.vz_ahead_start.restype = vp
    lib.vz_ahead_start.argtypes = [
        ctypes.c_int,
        u64,
        u64,
        u64,
        u64,
        u64,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        cp,
        cp,
    ]
    lib.vz_ahead_take.restype = ctypes.c_int
    lib.vz_ahead_take.argtypes = [vp, u64, vp, vp, ctypes.POINTER(u64)]
    lib.vz_ahead_release.argtypes = [vp, u64]
    lib.vz_ahead_set_active.argtypes = [vp, ctypes.c_int]
    lib.vz_ahead_cancel.argtypes = [vp]
    lib.vz_ahead_stop.argtypes = [vp]
    lib.vz_ahead_classify.restype = ctypes.c_size_t
    lib.vz_ahead_classify.argtypes = [ctypes.c_size_t, cp, cp, cp, vp]
    return lib


def available() -> bool:
    """Whether hash-ahead can run here: the library is built, and neither ``VZREP_HASH_AHEAD=0`` nor
    ``VZREP_SCAN=python`` (the operator's switches) turns it off."""
    if os.environ.get("VZREP_HASH_AHEAD", "1").strip().lower() in ("0", "off", "no", "false"):
        return False
    return scan_mode() == "auto" and _library() is not None


def default_threads() -> int:
    return max(1, min(2, os.cpu_count() or 1))


class HashAhead:
    """A running pool for one disk; chunks are taken in order and released when done with."""

    def __init__(
        self,
        region: Region,
        size: int,
        block_size: int,
        chunk_blocks: int,
        zero_hash: bytes,
        zero_hash_tail: bytes,
        *,
        threads: int | None = None,
        active: int | None = None,
    ) -> None:
        self._lib = lib = _bound()
        self.size, self.block_size, self.chunk_blocks = size, block_size, chunk_blocks
        self.threads = threads or default_threads()
        slots = max(4, LOOKAHEAD_BYTES // (block_size * chunk_blocks))
        handle = lib.vz_ahead_start(
            region.fd, region.offset, size, block_size, chunk_blocks, slots, int(region.mappable),
            self.threads, self.threads if active is None else active, zero_hash, zero_hash_tail,
        )  # fmt: skip
        if not handle:
            raise OSError("cannot start the hash-ahead threads (out of memory or threads?)")
        self._handle: int | None = handle
        self._cv = threading.Condition()
        self._takers = 0
        self.waited = 0.0  # seconds the pipeline waited for chunks (the threads were behind)

    def set_active(self, n: int) -> None:
        """Let ``n`` threads work (the others wait): fewer while the process still starts up."""
        with self._cv:
            if self._handle is not None:
                self._lib.vz_ahead_set_active(self._handle, n)

    def take(self, chunk: int, count: int) -> tuple[bytearray, bytearray, int]:
        """Wait (without the GIL) for ``chunk`` and return its hashes, flags and bytes read."""
        first, nblocks = chunk * self.chunk_blocks, block_count(self.size, self.block_size)
        if not 0 <= first < nblocks:
            raise RuntimeError(f"hash-ahead: chunk {chunk} is not available (past the disk's end)")
        if count != min(self.chunk_blocks, nblocks - first):
            raise ValueError(f"hash-ahead: chunk {chunk} does not have {count} blocks")  # C copies that many
        with self._cv:
            if self._handle is None:
                raise RuntimeError("hash-ahead was stopped")
            handle = self._handle
            self._takers += 1
        hashes, flags, read = bytearray(count * HASH_LEN), bytearray(count), ctypes.c_uint64()
        h = (ctypes.c_char * len(hashes)).from_buffer(hashes)
        f = (ctypes.c_char * len(flags)).from_buffer(flags)
        t0 = time.monotonic()
        try:
            rc = self._lib.vz_ahead_take(
                handle, chunk, ctypes.addressof(h), ctypes.addressof(f), ctypes.byref(read)
            )
        finally:
            del h, f
            with self._cv:
                self.waited += time.monotonic() - t0
                self._takers -= 1
                self._cv.notify_all()
        if rc < 0:
            raise RuntimeError(f"hash-ahead: chunk {chunk} is not available (stopped or taken out of order)")
        if rc > 0:
            raise InputError(
                f"cannot read the disk at chunk {chunk}: {os.strerror(rc)}; nothing of this pass is kept"
            )
        return hashes, flags, int(read.value)

    def release(self, chunk: int) -> None:
        with self._cv:
            if self._handle is not None:
                self._lib.vz_ahead_release(self._handle, chunk)

    def close(self) -> None:
        """Stop and join the threads (each finishes its chunk first); idempotent."""
        with self._cv:
            handle, self._handle = self._handle, None
            if handle is None:
                return
            self._lib.vz_ahead_cancel(handle)
            while self._takers:
                self._cv.wait()
        self._lib.vz_ahead_stop(handle)

    def __del__(self) -> None:  # a backstop: the threads must never outlive the fd they read
        if getattr(self, "_handle", None) is not None:
            self.close()


def classify(flags: bytes | bytearray, hashes: bytes | bytearray, old: bytes, kinds: bytearray) -> int:
    """Kinds of a taken chunk's blocks against the map's ``old`` entries; returns how many to send."""
    lib = _bound()
    n = len(flags)
    if len(hashes) < n * HASH_LEN or len(old) < n * HASH_LEN or len(kinds) < n:
        raise ValueError("hash-ahead: arrays shorter than the chunk")
    out = (ctypes.c_char * len(kinds)).from_buffer(kinds)
    try:
        return int(lib.vz_ahead_classify(n, bytes(flags), bytes(hashes), old, ctypes.addressof(out)))
    finally:
        del out
