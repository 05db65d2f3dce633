"""Benchmark disk images: a mixed raw image, a 2 % change set that can be undone, a compressible ext4.

The mixed image is laid out in random runs of 64 KiB-aligned blocks: ~40 % incompressible
random data, the rest zeros, half of which are sparse holes and half explicitly written zero
blocks (so the zero check is exercised on data that is read, not only skipped by SEEK_HOLE).
Random bytes come from AES-CTR over zeros: incompressible, seeded, and fast enough not to
dominate the set-up.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import random
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .peers import MiB, tool

BLOCK = 64 * 1024
_FALLOC_PUNCH = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


class RandomBytes:
    """A seeded stream of incompressible bytes."""

    def __init__(self, seed: int) -> None:
        key = hashlib.sha256(f"vzrep-bench-{seed}".encode()).digest()
        self._enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()

    def take(self, n: int) -> bytes:
        return self._enc.update(bytes(n))


@dataclass
class Layout:
    size: int
    data: int = 0
    zeros_written: int = 0
    holes: int = 0


def build_mixed(path: Path, size: int, seed: int = 1, data_share: float = 0.40) -> Layout:
    """A sparse raw image: random data runs, written zero runs, holes (64 KiB aligned)."""
    rng, rnd = random.Random(seed), RandomBytes(seed)
    lay = Layout(size)
    nblocks = size // BLOCK
    zero_share = (1 - data_share) / 2
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        b = 0
        while b < nblocks:
            run = min(rng.randint(1, 256), nblocks - b)
            kind = rng.random()
            off, n = b * BLOCK, run * BLOCK
            if kind < data_share:
                for pos in range(0, n, 16 * MiB):
                    os.pwrite(fd, rnd.take(min(16 * MiB, n - pos)), off + pos)
                lay.data += n
            elif kind < data_share + zero_share:
                zeros = bytes(min(16 * MiB, n))
                for pos in range(0, n, len(zeros)):
                    os.pwrite(fd, zeros[: min(len(zeros), n - pos)], off + pos)
                lay.zeros_written += n
            else:
                lay.holes += n
            b += run
        os.fdatasync(fd)
    finally:
        os.close(fd)
    return lay


@dataclass
class ChangeSet:
    """``share`` of the image's 64 KiB blocks overwritten with random data; :meth:`undo` restores them."""

    path: Path
    share: float = 0.02
    seed: int = 2
    blocks: list[int] = field(default_factory=list)
    _saved: list[tuple[int, bytes, bool]] = field(default_factory=list)

    def apply(self) -> int:
        size = self.path.stat().st_size
        assert not self._saved, "apply() twice without undo()"
        rng, rnd = random.Random(self.seed), RandomBytes(self.seed)
        nblocks = size // BLOCK
        self.blocks = sorted(rng.sample(range(nblocks), max(1, round(nblocks * self.share))))
        fd = os.open(self.path, os.O_RDWR)
        try:
            for b in self.blocks:
                off = b * BLOCK
                hole = _is_hole(fd, off)
                self._saved.append((off, os.pread(fd, BLOCK, off), hole))
                os.pwrite(fd, rnd.take(BLOCK), off)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        return len(self.blocks)

    def undo(self) -> None:
        self.restore(self.path)
        self._saved.clear()

    def restore(self, path: Path) -> None:
        """Put the saved (previous) blocks into ``path``: the source image or a peer's copy of it."""
        fd = os.open(path, os.O_RDWR)
        try:
            for off, old, hole in self._saved:
                if hole:
                    _punch(fd, off, len(old))
                else:
                    os.pwrite(fd, old, off)
            os.fdatasync(fd)
        finally:
            os.close(fd)


def _is_hole(fd: int, off: int) -> bool:
    try:
        return os.lseek(fd, off, os.SEEK_DATA) >= off + BLOCK
    except OSError:  # ENXIO: no data after off
        return True


def _punch(fd: int, off: int, length: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    if libc.fallocate(fd, _FALLOC_PUNCH, off, length) != 0:
        os.pwrite(fd, bytes(length), off)  # no hole punching here: explicit zeros read the same


# ---------------------------------------------------------------- compressible data


def _text_sources() -> list[Path]:
    roots = [Path("/usr/share/doc"), Path("/usr/share/common-licenses"), Path("/usr/lib/python3")]
    roots.append(Path(os.__file__).parent)  # the stdlib sources: real text
    files: list[Path] = []
    for root in roots:
        if root.is_dir():
            for p in root.rglob("*"):
                if p.suffix in (".gz", ".pyc", ".so", ".png", ".jpg") or not p.is_file() or p.is_symlink():
                    continue
                files.append(p)
    return files


def real_text(limit: int) -> bytes:
    """Up to ``limit`` bytes of real text files from this machine (docs, licences, Python sources)."""
    out, total = [], 0
    for p in _text_sources():
        try:
            data = p.read_bytes()
        except OSError:
            continue
        if b"\0" in data[:4096]:
            continue
        out.append(data)
        total += len(data)
        if total >= limit:
            break
    return b"".join(out)[:limit]


def build_text_ext4(path: Path, size: int, text_bytes: int, workdir: Path, seed: int = 3) -> int:
    """An ext4 image (``mkfs.ext4 -d``) holding ``text_bytes`` of text files cut from real text."""
    corpus = real_text(32 * MiB)
    rng = random.Random(seed)
    src = workdir / "ext4-src"
    src.mkdir(parents=True, exist_ok=True)
    written, i = 0, 0
    while written < text_bytes:
        n = rng.randint(64 * 1024, 4 * MiB)
        start = rng.randrange(0, max(1, len(corpus) - n))
        piece = corpus[start : start + n]
        d = src / f"d{i % 37:02d}"
        d.mkdir(exist_ok=True)
        (d / f"f{i:05d}.txt").write_bytes(piece)
        written += len(piece)
        i += 1
    with open(path, "wb") as f:
        f.truncate(size)
    subprocess.run([tool("mkfs.ext4"), "-q", "-F", "-d", str(src), str(path)], check=True)
    shutil.rmtree(src)
    return written


def mixed_sample(size: int, text: bytes) -> bytes:
    """Mixed data for the zstd level table: 1/3 text, 1/3 machine code (/usr/bin), 1/3 random."""
    third = size // 3
    binaries: list[bytes] = []
    got = 0
    for p in sorted(Path("/usr/bin").iterdir()):
        if got >= third:
            break
        try:
            if p.is_file() and not p.is_symlink():
                data = p.read_bytes()[: 4 * MiB]
                binaries.append(data)
                got += len(data)
        except OSError:
            continue
    bin_part = b"".join(binaries)[:third]
    text_part = (text * (third // max(1, len(text)) + 1))[:third]
    return text_part + bin_part + RandomBytes(9).take(size - len(text_part) - len(bin_part))
