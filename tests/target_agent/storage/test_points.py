"""The restore-point index and retention (target_agent.storage.points), without a pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from target_agent.storage import points as rp
from vzcommon.errors import InputError, IntegrityError


def point(i: int, *, inc: bool = True) -> rp.Point:
    return rp.Point(
        id=f"g{i}",
        time=f"2026-12-0{i}T00:00:00Z",
        pass_id=f"p{i}",
        disks={"d": 1 << 20},
        increments={"d": rp.Increment(bytes=512 + i, sha256="0" * 64, old_size=1 << 20, created=False)}
        if inc
        else {},
    )


def test_retain_keeps_the_newest_and_the_oldest_kept_loses_its_increments() -> None:
    pts = [point(1, inc=False), *(point(i) for i in range(2, 6))]
    kept = rp.retain(pts, 3)
    assert [p.id for p in kept] == ["g3", "g4", "g5"]
    assert kept[0].increments == {} and kept[1].increments and kept[2].increments
    assert pts[2].increments  # the input list is not changed
    assert [p.id for p in rp.retain(pts, 1)] == ["g5"] and rp.retain(pts, 1)[0].increments == {}
    assert rp.retain(pts, 99) == [pts[0], *pts[1:]]
    with pytest.raises(InputError, match="at least 1"):
        rp.retain(pts, 0)


def test_index_round_trip_and_damage(tmp_path: Path) -> None:
    assert rp.load(tmp_path) == []
    pts = [point(1, inc=False), point(2)]
    rp.write_index(tmp_path, pts)
    assert rp.load(tmp_path) == pts
    assert (tmp_path / "points").stat().st_mode & 0o777 == 0o700
    index = tmp_path / "points" / "index"
    index.write_bytes(index.read_bytes().replace(b"g2", b"g3"))
    with pytest.raises(IntegrityError, match="checksum"):
        rp.load(tmp_path)


def test_prune_removes_what_the_index_does_not_name_and_is_idempotent(tmp_path: Path) -> None:
    pts = [point(3, inc=False), point(4)]
    for pid in ("g2", "g3", "g4", "g9"):
        d = tmp_path / "points" / pid
        d.mkdir(parents=True)
        (d / "d.vzundo").write_bytes(b"x")
    (tmp_path / "points" / ".index.tmp").write_bytes(b"half")
    rp.write_index(tmp_path, pts)
    assert sorted(rp.prune(tmp_path, pts)) == ["g2", "g3", "g9"]
    assert sorted(p.name for p in (tmp_path / "points").iterdir()) == ["g4", "index"]
    assert rp.prune(tmp_path, pts) == []


def test_keep_increment_is_a_rename_and_can_be_repeated(tmp_path: Path) -> None:
    undo = tmp_path / "d-flat.vmdk.vzundo"
    undo.write_bytes(b"undo bytes")
    rp.keep_increment(tmp_path, "g7", "d", undo)
    rp.keep_increment(tmp_path, "g7", "d", undo)  # recovery runs it again: nothing left to move
    assert not undo.exists()
    assert rp.increment_path(tmp_path, "g7", "d").read_bytes() == b"undo bytes"


def test_an_unknown_point_names_the_kept_ones() -> None:
    pts = [point(3, inc=False), point(4)]
    assert rp.find(pts, "g4", "vm") == 1
    with pytest.raises(InputError, match="no restore point 'g1'.*its points: g3, g4"):
        rp.find(pts, "g1", "vm")
