"""Unit tests for the ABM building blocks: bitmap runs, extent subtraction, volumes, filter files, and
garbage that must only ever produce "fully active"."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from source_agent.filters import abm
from source_agent.filters.extents import ExtentList, FilterKind
from source_agent.filters.volume import NotParsed, Volume, crc32c, set_bit_runs
from vzcommon.errors import IntegrityError
from vzcommon.log import setup_logging


class MemReader:
    def __init__(self, data: bytes, name: str = "mem") -> None:
        self.data, self.name, self.size = data, name, len(data)

    def pread(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]

    def data_extents(self, start: int = 0, end: int | None = None):  # type: ignore[no-untyped-def]
        yield start, (self.size if end is None else end) - start

    def close(self) -> None:
        pass


@settings(max_examples=200)
@given(st.binary(min_size=0, max_size=9000), st.integers(0, 80000))
def test_set_bit_runs_matches_a_naive_scan(bitmap: bytes, nbits: int) -> None:
    expect = [i for i in range(min(nbits, len(bitmap) * 8)) if bitmap[i // 8] >> (i % 8) & 1]
    got = [i for s, e in set_bit_runs(bitmap, nbits) for i in range(s, e)]
    assert got == expect


def test_set_bit_runs_fast_paths() -> None:
    assert list(set_bit_runs(b"\xff" * 8192, 65536)) == [(0, 32768), (32768, 65536)]
    assert list(set_bit_runs(b"\x00" * 8192, 65536)) == []
    assert list(set_bit_runs(b"\xff" * 8192, 100)) == [(0, 100)]


extent_lists = st.lists(st.tuples(st.integers(0, 500), st.integers(0, 60)), max_size=12).map(
    lambda xs: ExtentList((s, s + n) for s, n in xs)
)


@given(extent_lists, extent_lists)
def test_subtract_is_set_difference(a: ExtentList, b: ExtentList) -> None:
    def points(x: ExtentList) -> set[int]:
        return {i for s, e in x for i in range(s, e)}

    assert points(a.subtract(b)) == points(a) - points(b)


def test_scattered_volume_maps_reads_and_ranges() -> None:
    data = bytes(range(256)) * 16
    vol = Volume.whole(MemReader(data)).compose([(0, 1000, 100), (100, 200, 50)], "lv")
    assert vol.size == 150
    assert vol.pread(90, 20) == data[1090:1100] + data[200:210]
    assert list(vol.to_disk([(50, 120)])) == [(1050, 1100), (200, 220)]
    with pytest.raises(NotParsed):
        vol.slice(100, 100, "too big")


def test_crc32c_known_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283


def _plausible_mbr(sector: bytes) -> bool:
    """An MBR by the book (signature; four entries with status 0x00 or 0x80; a used entry starts past
    sector 0 and is not empty; at least one used): then the noise is a partition table, not garbage."""
    if sector[510:512] != b"\x55\xaa":
        return False
    entries = [sector[446 + 16 * i : 462 + 16 * i] for i in range(4)]
    used = [e for e in entries if e[4]]
    return (
        all(e[0] in (0x00, 0x80) for e in entries)
        and bool(used)
        and all(int.from_bytes(e[8:12], "little") and int.from_bytes(e[12:16], "little") for e in used)
    )


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=512, max_size=8192), st.sampled_from([0, 3, 1024 + 0x38, 510]))
def test_garbage_is_only_ever_fully_active(noise: bytes, where: int) -> None:
    """Magic numbers planted in noise reach the parsers; they must give up, never crash or skip:
    the result is one extent, the whole disk."""
    data = bytearray(noise.ljust(64 * 1024, b"\x5a"))
    for magic, off in ((b"NTFS    ", 3), (b"\x53\xef", 1024 + 0x38), (b"XFSB", 0), (b"\x55\xaa", 510)):
        if off == where or where == 0:
            data[off : off + len(magic)] = magic
    assume(not _plausible_mbr(bytes(data[:512])))  # rare: a real partition table, over noise
    reader = MemReader(bytes(data))
    result = abm.active_extents(reader)
    assert list(result) == [(0, len(data))]
    assert result == ExtentList.full(len(data)) and result.total == len(data)


def test_filter_files_round_trip_and_combine(tmp_path: Path) -> None:
    size = 1 << 30
    active = ExtentList([(0, 4096), (1 << 20, 2 << 20)])
    path = abm.write_active_filter(tmp_path, "disk0", active, size)
    assert path.name == "disk0-abbt.vztemp"
    assert abm.load_filter(path, FilterKind.ACTIVE, size) == active
    with pytest.raises(IntegrityError):
        abm.load_filter(path, FilterKind.DATA, size)
    with pytest.raises(IntegrityError):
        abm.load_filter(path, FilterKind.ACTIVE, size * 2)
    changed = ExtentList([(0, 8192), (3 << 20, 4 << 20), ((1 << 20) + 512, (1 << 20) + 1024)])
    changed.save(abm.changed_path(tmp_path, "disk0"), FilterKind.CHANGED, size)
    data = abm.combine_with_changed(tmp_path, "disk0", changed, size)
    assert data == ExtentList([(0, 4096), ((1 << 20) + 512, (1 << 20) + 1024)])
    assert not abm.changed_path(tmp_path, "disk0").exists()
    assert abm.load_filter(abm.flat_map_path(tmp_path, "disk0"), FilterKind.DATA, size) == data
    abm.remove_filters(tmp_path, "disk0")
    assert os.listdir(tmp_path) == []


def test_unknown_disk_logs_one_reason(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info")  # whatever level an earlier test left: this event is at info
    reader = MemReader(b"\x00" * (1 << 20))
    assert abm.active_extents(reader) == ExtentList.full(1 << 20)
    out = capsys.readouterr().err
    assert out.count("abm.fully_active") == 1 and "no partition table or filesystem" in out


def test_filter_file_of_unknown_kind_is_refused_as_corrupt() -> None:
    """Found by fuzzing (fuzz/corpus/vztemp/crash-unknown-kind): a valid CRC over kind 5 raised ValueError."""
    raw = bytearray(ExtentList([(0, 4096)]).to_bytes(FilterKind.ACTIVE, 1 << 20))
    raw[6:8] = (5).to_bytes(2, "little")
    raw[-4:] = zlib.crc32(raw[:-4]).to_bytes(4, "little")
    with pytest.raises(IntegrityError, match="unknown kind 5"):
        ExtentList.from_bytes(bytes(raw))
