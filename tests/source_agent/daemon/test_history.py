"""The history store: WAL with durable commits, readers beside the writer, a newer schema refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from source_agent.daemon.history import History, VmRow
from vzcommon.errors import InputError, StorageError


def test_the_store_is_wal_with_full_sync_and_readable_while_written(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite"
    h = History(db)
    assert h.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert h.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    row = VmRow("job", "web", first_seen=1.0)
    pid = h.start_pass(row, "schedule", 1, 10.0)
    reader = History(db, readonly=True)
    h.db.execute("BEGIN IMMEDIATE")  # the daemon in the middle of a write
    h.db.execute("UPDATE passes SET status = 'ok'")
    assert [(p.id, p.status) for p in reader.passes()] == [(pid, "running")]  # the last commit
    h.db.execute("ROLLBACK")
    with pytest.raises(sqlite3.OperationalError):
        reader.db.execute("DELETE FROM passes")  # a reader cannot write
    reader.close()
    h.finish_pass(
        pid, row, finished=12.0, status="failed", exit_code=4, error="lost", report=None, wire_bytes=5
    )
    h.close()
    # What a crash leaves is what was committed: a new process sees it all.
    again = History(db, readonly=True)
    (p,) = again.passes(vm="web")
    assert (p.status, p.exit_code, p.error, p.wire_bytes, p.finished) == ("failed", 4, "lost", 5, 12.0)
    (c,) = again.counters()
    assert c.failures_by_exit_code == {4: 1} and c.passes == {"failed": 1} and c.wire_bytes == 5


def test_a_missing_or_newer_history_is_refused_with_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no history at .* has not run with this --db"):
        History(tmp_path / "none.sqlite", readonly=True)
    db = tmp_path / "h.sqlite"
    History(db).close()
    con = sqlite3.connect(db)
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(StorageError, match="history schema version 99, this vzrep reads 1: upgrade vzrep"):
        History(db)
    (tmp_path / "junk.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(StorageError, match="cannot use the history database"):
        History(tmp_path / "junk.sqlite")


def test_passes_by_job_name_or_id_and_vm(tmp_path: Path) -> None:
    h = History(tmp_path / "h.sqlite")
    h.save_job("id-1", "web tier", "/jobs/web.toml", {"rpo": 60}, 1.0)
    for vm in ("a", "b"):
        h.start_pass(VmRow("id-1", vm, first_seen=1.0), "schedule", 1, 2.0)
    h.start_pass(VmRow("id-2", "a", first_seen=1.0), "schedule", 1, 3.0)
    assert len(h.passes(job="web tier")) == 2 and len(h.passes(job="id-1")) == 2
    assert [p.job for p in h.passes(vm="a")] == ["id-1", "id-2"]
    assert [p.id for p in h.passes(limit=2)] == [2, 3]
    assert h.jobs()[0]["schedule"] == {"rpo": 60}


def test_a_history_from_before_the_scheduled_column_is_read_and_then_migrated(tmp_path: Path) -> None:
    """An appliance upgraded in place: its history has no ``vms.scheduled``; the history command reads
    it (every VM scheduled, as it was), and the daemon's first start adds the column, keeping the rows."""
    db = tmp_path / "h.sqlite"
    h = History(db)
    h.save_vm(VmRow("job", "web", first_seen=1.0, next_run=2.0))
    h.close()
    con = sqlite3.connect(db)
    con.execute("ALTER TABLE vms DROP COLUMN scheduled")
    con.commit()
    con.close()
    old = History(db, readonly=True)
    assert [(v.vm, v.scheduled, v.next_run) for v in old.vms()] == [("web", True, 2.0)]
    old.close()
    h = History(db)
    assert [(v.vm, v.scheduled) for v in h.vms()] == [("web", True)]
    row = h.vm("job", "web")
    assert row is not None
    row.scheduled = False
    h.save_vm(row)
    assert h.vm("job", "web").scheduled is False
    h.close()
