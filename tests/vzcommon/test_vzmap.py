from __future__ import annotations

from pathlib import Path

import pytest

from vzcommon.errors import IntegrityError
from vzcommon.vzmap import HEADER_SIZE, MapBuilder, MapFile


def build(path: Path, size: int = 10 * 65536 + 512, generation: str = "g1") -> None:
    b = MapBuilder(path, 65536, size, None)
    b.set_range(0, b"\x01" * 32 + b"\x02" * 32)
    b.fill(5, 3, b"\x07" * 32)
    b.finish(generation=generation, cid=0xABCDEF01, change_id="52 aa/3")


def test_round_trip_and_header(tmp_path: Path) -> None:
    build(tmp_path / "m")
    with MapFile.open(tmp_path / "m") as m:
        h = m.header
        assert (h.entries, h.generation, h.cid, h.change_id) == (11, "g1", 0xABCDEF01, "52 aa/3")
        assert m.read_entries(0, 2) == b"\x01" * 32 + b"\x02" * 32
        assert m.read_entries(5, 3) == b"\x07" * 96
        assert m.read_entries(2, 1) == bytes(32)  # unknown
        assert m.read_entries(10, 3) == bytes(96)  # past the end reads as unknown


@pytest.mark.parametrize("offset", [0, 20, HEADER_SIZE + 3, -5])
def test_any_damage_is_detected(tmp_path: Path, offset: int) -> None:
    build(tmp_path / "m")
    raw = bytearray((tmp_path / "m").read_bytes())
    raw[offset] ^= 0x40
    (tmp_path / "m").write_bytes(bytes(raw))
    with pytest.raises(IntegrityError):
        MapFile.open(tmp_path / "m")


def test_truncated(tmp_path: Path) -> None:
    build(tmp_path / "m")
    raw = (tmp_path / "m").read_bytes()
    (tmp_path / "m").write_bytes(raw[:-10])
    with pytest.raises(IntegrityError, match="length"):
        MapFile.open(tmp_path / "m")


def test_builder_copies_a_base_and_grows(tmp_path: Path) -> None:
    build(tmp_path / "m")
    with MapFile.open(tmp_path / "m") as base:
        b = MapBuilder(tmp_path / "n", 65536, 20 * 65536, base)
    assert b.read_entries(0, 2) == b"\x01" * 32 + b"\x02" * 32 and b.read_entries(15, 1) == bytes(32)
    b.abort()
    assert not (tmp_path / "n").exists()
