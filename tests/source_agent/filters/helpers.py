"""Test helpers for ABM: run the real tools, read images, and build a replica from active extents only."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from source_agent.disks.base import DiskReader
from source_agent.filters.abm import active_extents
from source_agent.filters.extents import ExtentList

MiB = 1 << 20


def tool(name: str) -> str:
    """The path of a required tool; a missing one fails the test and names the package (mk/abm.mk)."""
    path = shutil.which(name) or next(
        (p for d in ("/usr/sbin", "/sbin") if os.access(p := f"{d}/{name}", os.X_OK)), None
    )
    if path is None:
        pytest.fail(f"{name} is not installed: run `make sysdeps` (mk/abm.mk lists its Debian package)")
    return path


def run(*cmd: str | Path, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    argv = [tool(str(cmd[0])), *map(str, cmd[1:])]
    res = subprocess.run(argv, capture_output=True, input=input, check=False)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({res.returncode}):\n{res.stdout.decode()}{res.stderr.decode()}")
    return res


class FileReader:
    """A minimal :class:`DiskReader` over an image file (the core's RawReader may replace it)."""

    def __init__(self, path: Path, name: str = "disk0") -> None:
        self.name = name
        self._f = open(path, "rb")
        self.size = os.fstat(self._f.fileno()).st_size

    def pread(self, offset: int, length: int) -> bytes:
        return os.pread(self._f.fileno(), length, offset)

    def data_extents(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int]]:
        stop = self.size if end is None else end
        yield start, stop - start

    def close(self) -> None:
        self._f.close()


def sparse_image(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def open_reader(path: Path) -> DiskReader:
    """The core's RawReader when it is there (the pass reads disks with it), else the local one."""
    try:
        from source_agent.disks.raw import RawReader
    except ImportError:
        return FileReader(path)
    return RawReader(path, "disk0")


def abm(path: Path, **kw: bool) -> ExtentList:
    reader = open_reader(path)
    try:
        return active_extents(reader, **kw)
    finally:
        reader.close()


def replicate(src: Path, dst: Path, extents: ExtentList, block: int = 64 * 1024) -> int:
    """Copy only the active extents (aligned to ``block``, as the pass does) into a zero image."""
    size = src.stat().st_size
    sparse_image(dst, size)
    copied = 0
    with open(src, "rb") as fi, open(dst, "r+b") as fo:
        for s, e in extents.align(block).clip(size):
            pos = s
            while pos < e:
                n = min(8 * MiB, e - pos)
                data = os.pread(fi.fileno(), n, pos)
                os.pwrite(fo.fileno(), data, pos)
                pos += n
                copied += n
    return copied


def covers(extents: ExtentList, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``ranges`` that ``extents`` leaves out (empty means all covered)."""
    return list(ExtentList(ranges).subtract(extents))


def parse_free_list(text: str) -> list[tuple[int, int]]:
    """``"1-5, 9, 12-40"`` -> ``[(1, 6), (9, 10), (12, 41)]`` (inclusive ranges of dumpe2fs and friends)."""
    out = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        a, _, b = part.partition("-")
        out.append((int(a), int(b or a) + 1))
    return out


def write_at(image: Path, offset: int, data: bytes) -> None:
    with open(image, "r+b") as f:
        os.pwrite(f.fileno(), data, offset)


def embed(image: Path, offset: int, part: Path) -> None:
    """Copy a filesystem image into a disk image at ``offset`` (holes stay holes)."""
    with open(part, "rb") as fi, open(image, "r+b") as fo:
        pos = 0
        size = part.stat().st_size
        while pos < size:
            try:
                data_at = os.lseek(fi.fileno(), pos, os.SEEK_DATA)
            except OSError:
                break
            hole = os.lseek(fi.fileno(), data_at, os.SEEK_HOLE)
            while data_at < hole:
                n = min(8 * MiB, hole - data_at)
                os.pwrite(fo.fileno(), os.pread(fi.fileno(), n, data_at), offset + data_at)
                data_at += n
            pos = hole


def extract(image: Path, offset: int, length: int, out: Path) -> Path:
    """The reverse of :func:`embed`: a partition of a disk image as its own file."""
    sparse_image(out, length)
    with open(image, "rb") as fi, open(out, "r+b") as fo:
        pos = 0
        while pos < length:
            n = min(8 * MiB, length - pos)
            data = os.pread(fi.fileno(), n, offset + pos)
            if data.count(0) != len(data):
                os.pwrite(fo.fileno(), data, pos)
            pos += n
    return out


def make_files(root: Path, spec: dict[str, int], seed: int = 1) -> dict[str, bytes]:
    """Write files of pseudo-random content (incompressible, distinct per file) under ``root``."""
    import random

    rnd = random.Random(seed)
    out = {}
    for name, size in spec.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        data = rnd.randbytes(size)
        p.write_bytes(data)
        out[name] = data
    return out
