"""Holes in files: data_segments against files whose layout we made (and filefrag's FIEMAP where the
filesystem has it), punch_hole against the bytes, du and SEEK_HOLE."""

from __future__ import annotations

import ctypes
import errno
import os
import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.tools import run
from vzcommon import sparse
from vzcommon.sparse import data_segments, punch_hole

PAGE = 4096  # the allocation unit of ext4, XFS and tmpfs here: data and holes are seen per page
BS = 64 * 1024


def runs(blocks: set[int], unit: int) -> list[tuple[int, int]]:
    """``(offset, length)`` of the runs of consecutive block numbers."""
    out: list[tuple[int, int]] = []
    for b in sorted(blocks):
        if out and out[-1][0] + out[-1][1] == b * unit:
            out[-1] = (out[-1][0], out[-1][1] + unit)
        else:
            out.append((b * unit, unit))
    return out


def clip(segments: list[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    out = []
    for off, n in segments:
        lo, hi = max(off, start), min(off + n, end)
        if lo < hi:
            out.append((lo, hi - lo))
    return out


def make_sparse(path: Path, nblocks: int, data: set[int], unit: int = PAGE, seed: int = 1) -> int:
    """A file of ``nblocks`` blocks where only the blocks in ``data`` are written (random, never all zero)."""
    rng = random.Random(seed)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, nblocks * unit)
        for b in data:
            os.pwrite(fd, b"\x01" + rng.randbytes(unit - 1), b * unit)
    finally:
        os.close(fd)
    return nblocks * unit


def segments(path: Path, start: int, end: int) -> list[tuple[int, int]]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return list(data_segments(fd, start, end))
    finally:
        os.close(fd)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    layout=st.integers(1, 40).flatmap(lambda n: st.tuples(st.just(n), st.sets(st.integers(0, n - 1)))),
    window=st.tuples(st.integers(0, 44 * PAGE), st.integers(0, 44 * PAGE)),
)
def test_data_segments_are_exactly_the_written_blocks(
    tmp_path: Path, layout: tuple[int, set[int]], window: tuple[int, int]
) -> None:
    nblocks, data = layout
    size = make_sparse(tmp_path / "f", nblocks, data)
    assert segments(tmp_path / "f", 0, size) == runs(data, PAGE)
    start, end = min(window), max(window)
    got = segments(tmp_path / "f", start, end)
    assert got == clip(runs(data, PAGE), start, min(end, size))
    # whatever the filesystem: nothing outside the segments is data
    content = (tmp_path / "f").read_bytes()
    inside = bytearray(len(content))
    for off, n in got:
        inside[off : off + n] = content[off : off + n]
    assert bytes(inside[start:end]) == content[start:end]


def fiemap_extents(path: Path) -> list[tuple[int, int]] | None:
    """``(offset, length)`` in bytes of the file's extents by `filefrag -v -s` (FIEMAP), None where the
    filesystem has no FIEMAP (tmpfs)."""
    res = run("filefrag", "-v", "-s", path, check=False)
    if res.returncode != 0:
        assert "unsupported" in res.stderr, res.stderr
        return None
    unit = int(re.search(r"\((\d+) blocks of (\d+) bytes\)", res.stdout).group(2))  # type: ignore[union-attr]
    out: list[tuple[int, int]] = []
    for first, last in re.findall(r"^\s*\d+:\s*(\d+)\.\.\s*(\d+):", res.stdout, re.M):
        off, n = int(first) * unit, (int(last) - int(first) + 1) * unit
        if out and out[-1][0] + out[-1][1] == off:
            out[-1] = (out[-1][0], out[-1][1] + n)
        else:
            out.append((off, n))
    return out


def test_data_segments_agree_with_filefrag(tmp_path: Path) -> None:
    data = {0, 1, 5, 6, 7, 12, 31}
    size = make_sparse(tmp_path / "f", 32, data, unit=BS)
    got = segments(tmp_path / "f", 0, size)
    assert got == runs(data, BS)
    extents = fiemap_extents(tmp_path / "f")
    if extents is not None:
        assert got == extents


def test_a_file_of_holes_or_a_window_past_the_data_has_no_segments(tmp_path: Path) -> None:
    make_sparse(tmp_path / "holes", 16, set())
    assert segments(tmp_path / "holes", 0, 16 * PAGE) == []
    size = make_sparse(tmp_path / "f", 16, {2, 3})
    assert segments(tmp_path / "f", 4 * PAGE, size) == []  # only a trailing hole: ENXIO
    assert segments(tmp_path / "f", size, size + BS) == []  # past the end
    assert segments(tmp_path / "f", 3 * PAGE, 3 * PAGE) == []  # an empty window
    assert segments(tmp_path / "f", 0, 3 * PAGE + 100) == [(2 * PAGE, PAGE + 100)]


def test_data_segments_is_the_whole_range_where_holes_cannot_be_asked() -> None:
    # seq_file in /proc refuses SEEK_DATA with EINVAL, as a filesystem without it would
    fd = os.open("/proc/version", os.O_RDONLY)
    try:
        with pytest.raises(OSError) as exc:
            os.lseek(fd, 0, os.SEEK_DATA)
        assert exc.value.errno == errno.EINVAL
        assert list(data_segments(fd, 100, 5000)) == [(100, 4900)]
    finally:
        os.close(fd)


def test_data_segments_raises_other_errors() -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(OSError) as exc:
            list(data_segments(r, 0, PAGE))
        assert exc.value.errno == errno.ESPIPE
    finally:
        os.close(r)
        os.close(w)


def allocated(path: Path) -> int:
    """Bytes allocated to the file, by du."""
    return int(run("du", "--block-size=1", path).stdout.split()[0])


@pytest.fixture
def full_file(tmp_path: Path) -> Iterator[tuple[Path, bytes, int]]:
    path = tmp_path / "full"
    content = random.Random(7).randbytes(24 * BS)
    path.write_bytes(content)
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
        yield path, content, fd
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("offset", "length"), [(2 * BS, 3 * BS), (BS + 100, 2 * BS + 7), (0, 24 * BS), (23 * BS, BS)]
)
def test_punch_hole_zeroes_the_range_and_frees_its_space(
    full_file: tuple[Path, bytes, int], offset: int, length: int
) -> None:
    path, content, fd = full_file
    before = allocated(path)
    punch_hole(fd, offset, length)
    os.fsync(fd)
    end = offset + length
    after = path.read_bytes()
    assert len(after) == len(content)  # the size is kept
    assert after == content[:offset] + bytes(length) + content[end:]
    # whole pages inside the range are freed: the filesystem's word (du) and SEEK_HOLE's
    lo, hi = -(-offset // PAGE) * PAGE, end // PAGE * PAGE
    assert before - allocated(path) == hi - lo
    assert os.lseek(fd, lo, os.SEEK_HOLE) == lo
    assert segments(path, 0, len(content)) == clip([(0, lo), (hi, len(content) - hi)], 0, len(content))


def test_punch_hole_of_nothing_changes_nothing(full_file: tuple[Path, bytes, int]) -> None:
    path, content, fd = full_file
    before = allocated(path)
    punch_hole(fd, BS, 0)
    punch_hole(fd, BS, -5)
    assert path.read_bytes() == content and allocated(path) == before


def test_punch_hole_writes_zeros_where_the_filesystem_cannot_punch(
    full_file: tuple[Path, bytes, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, content, fd = full_file
    calls = []

    def unsupported(*args: int) -> int:
        calls.append(args)
        ctypes.set_errno(errno.EOPNOTSUPP)
        return -1

    monkeypatch.setattr(sparse, "_fallocate", unsupported)
    before = allocated(path)
    offset, length = BS - 3, (1 << 20) + 2 * BS + 11  # more than the 1 MiB of zeros written at a time
    punch_hole(fd, offset, length)
    assert len(calls) == 1 and calls[0][1:] == (0x02 | 0x01, offset, length)  # PUNCH_HOLE | KEEP_SIZE
    assert path.read_bytes() == content[:offset] + bytes(length) + content[offset + length :]
    assert allocated(path) >= before  # written, not freed
    monkeypatch.setattr(sparse, "_fallocate", None)  # a libc without fallocate
    punch_hole(fd, 0, 10)
    assert path.read_bytes()[:10] == bytes(10)


def test_punch_hole_raises_a_real_error(tmp_path: Path) -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(OSError) as exc:
            punch_hole(w, 0, PAGE)
        assert exc.value.errno == errno.ESPIPE
    finally:
        os.close(r)
        os.close(w)
