"""A sample of the crash-state replay (``make crash-replay`` runs all of it): every scenario (the
passes, then seeding and mapping) is recorded, every 30th crash point is tried with its metadata suffixes, single lost writes, one random
lost subset and a torn last write; some states get a next pass, some a crash in their recovery."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from tests.reliability.replay import explore, fast_dir, record_all
from tests.reliability.states import crash_states

TOOLS = ["seed", "seed-replace", "seed-replace-renames", "map"]


async def test_every_sampled_crash_state_recovers_to_the_old_or_the_new_replica(tmp_path: Path) -> None:
    recorded = await record_all(tmp_path / "work")
    names = [r.scenario.name for r in recorded]
    assert names == ["full", "incremental", "cut", "growth", "retention", *TOOLS]
    by_name = {r.scenario.name: r for r in recorded}
    for r in recorded:  # the seam saw it all: data (qemu-img's too), map and journal writes, fsyncs, renames
        kinds = {op.kind for op in r.ops}
        assert {"create", "write", "fsync", "dirsync"} <= kinds, (r.scenario.name, kinds)
        moves = {"seed": {"rename"}, "seed-replace": {"exchange", "unlink"}}.get(
            r.scenario.name, {"rename", "unlink"}
        )
        assert moves <= kinds, (r.scenario.name, kinds)
    assert any(op.kind == "rmdir" for op in by_name["retention"].ops)  # pruning happened
    assert any(op.kind == "punch" for op in by_name["incremental"].ops)  # zeroed blocks were punched
    assert any(op.kind == "link" for op in by_name["map"].ops)  # the copies, linked into the staging
    assert "exchange" not in {op.kind for op in by_name["seed-replace-renames"].ops}
    with tempfile.TemporaryDirectory(prefix="vzrep-crash-test-", dir=fast_dir()) as states:
        result = await explore(
            recorded,
            Path(states),
            samples=1,
            torn_limit=1,
            point_stride=30,
            next_pass_every=20,
            recovery_every=12,
        )
    assert result.failures == []
    for r in recorded:
        assert result.explored[r.scenario.name] > (2 if r.scenario.tool == "map" else 5)  # map: 35 ops
        assert result.explored[f"{r.scenario.name} (crash in recovery)"] > 0
        assert result.sides[f"{r.scenario.name}:old"]
        if not r.scenario.cut_after:  # a pass that commits: crashes after its commit point go forward
            assert result.sides[f"{r.scenario.name}:new"]
        assert result.next_passes[r.scenario.name] >= 1


def test_a_torn_and_a_lost_write_are_among_the_states(tmp_path: Path) -> None:
    from tests.reliability.record import Op

    ops = [
        Op("create", path="f", node="n1"),
        Op("write", node="n1", offset=0, data=b"a" * 1024),
        Op("write", node="n1", offset=1024, data=b"b" * 1024),
        Op("fsync", node="n1"),
        Op("dirsync", path="."),
    ]
    states = list(crash_states(ops, samples=0))
    hows = {s.how for s in states}
    assert {
        "prefix",
        "one unsynced write lost",
        "torn last write (first sectors)",
        "metadata suffix lost",
    } <= hows
    # after both barriers nothing can be lost
    assert [s for s in states if s.point == 5] == [states[-1]] and states[-1].lost == frozenset()


async def test_the_replay_catches_a_broken_write_ahead_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The judge has teeth: undo records that are never fsynced (the write-ahead rule broken) leave
    crash states where a block is overwritten but its undo record is lost, and the replay says so."""
    from target_agent.storage import undo
    from vzcommon import fsio

    def append_without_fsync(self: undo.UndoLog, records: bytes) -> None:
        view = memoryview(records)
        while view:
            view = view[fsio.write(self._fd, view) :]
        self.bytes += len(records)
        self.sha256.update(records)

    monkeypatch.setattr(undo.UndoLog, "append", append_without_fsync)
    recorded = await record_all(tmp_path / "work", ["incremental"])
    result = await explore(
        recorded, tmp_path / "state", samples=0, torn_limit=0, next_pass_every=10**9, max_failures=1
    )
    assert result.failures and "neither the old nor the new state" in result.failures[0]
