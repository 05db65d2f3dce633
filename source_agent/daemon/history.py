"""The daemon's state in SQLite: jobs, every pass with its report, each VM's last error and next run.

Why SQLite: the history must survive a crash or a power cut with nothing lost, be read by another
process (``vzrep-source history``, a metrics endpoint, the console) while the daemon writes, and be
queried by job and VM. In WAL mode readers never block the writer; ``synchronous=FULL`` makes each
commit durable (the WAL is fsynced at every commit), so a pass recorded as finished stays finished.

The rows a pass leaves, in the order they are committed:

1. ``passes`` gets a row with ``status = 'running'`` and its start time, before the pass starts.
2. When it ends, one transaction sets its end, status, exit code, error and report, and updates the
   VM's row in ``vms`` (last success or error, failures in a row, next run).

A row still ``running`` when the store is opened by the daemon belongs to a pass the daemon did not
see end (it was killed, or the machine stopped): :meth:`History.recover` marks it ``interrupted``
(the target rolled that pass back when its connection dropped) and makes its VM due at once.

Statuses: ``running``, ``ok``, ``failed``, ``skipped`` (the job rule, exit 16), ``interrupted``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vzcommon.errors import ExitCode, InputError, StorageError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, path TEXT NOT NULL, schedule TEXT NOT NULL,
    updated REAL NOT NULL, error TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS passes (
    id INTEGER PRIMARY KEY AUTOINCREMENT, job TEXT NOT NULL, vm TEXT NOT NULL,
    reason TEXT NOT NULL, attempt INTEGER NOT NULL, started REAL NOT NULL, finished REAL,
    status TEXT NOT NULL, exit_code INTEGER, error TEXT NOT NULL DEFAULT '',
    wire_bytes INTEGER NOT NULL DEFAULT 0, report TEXT);
CREATE INDEX IF NOT EXISTS passes_by_vm ON passes (job, vm, id);
CREATE INDEX IF NOT EXISTS passes_by_status ON passes (status);
CREATE TABLE IF NOT EXISTS vms (
    job TEXT NOT NULL, vm TEXT NOT NULL, first_seen REAL NOT NULL, next_run REAL,
    last_start REAL, last_success REAL, last_success_start REAL,
    last_error TEXT NOT NULL DEFAULT '', last_exit INTEGER, failures INTEGER NOT NULL DEFAULT 0,
    retry_since REAL, rpo_missed INTEGER NOT NULL DEFAULT 0, scheduled INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (job, vm));
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, job TEXT NOT NULL DEFAULT '',
    vm TEXT NOT NULL DEFAULT '', kind TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '');
"""


@dataclass
class VmRow:
    """One VM of one job, as the scheduler keeps it (``vms``)."""

    job: str
    vm: str
    first_seen: float
    next_run: float | None = None
    last_start: float | None = None  # of the last pass that was not a retry: the schedule counts from it
    last_success: float | None = None  # when the last successful pass ended
    last_success_start: float | None = None  # ... and began: the replica holds the disks as they were then
    last_error: str = ""
    last_exit: int | None = None
    failures: int = 0  # failed passes in a row (reset by a success)
    retry_since: float | None = None  # start of the current retry window
    rpo_missed: bool = False
    scheduled: bool = True  # False: the VM is in no job file now (its history stays)


@dataclass
class PassRecord:
    id: int
    job: str
    vm: str
    reason: str  # schedule | retry | resume (interrupted before) | start
    attempt: int
    started: float
    finished: float | None
    status: str
    exit_code: int | None
    error: str
    wire_bytes: int
    report: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VmCounters:
    """Per-VM totals for a metrics endpoint: read from the history, never kept in memory."""

    job: str
    vm: str
    passes: dict[str, int] = field(default_factory=dict)  # status -> count
    wire_bytes: int = 0
    failures_by_exit_code: dict[int, int] = field(default_factory=dict)
    last_success: float | None = None
    last_success_start: float | None = None
    last_duration: float | None = None
    rpo_missed: bool = False
    next_run: float | None = None
    scheduled: bool = True


class History:
    """The store; one writer (the daemon, which holds :meth:`lock`), any number of readers."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        try:
            if readonly:
                try:
                    path.stat()
                except PermissionError:
                    raise InputError(
                        f"the history {path} is readable only by the agent and root: run it with sudo"
                    ) from None
                except OSError:
                    pass
                if not path.exists():
                    raise InputError(
                        f"no history at {path}: the daemon (vzrep-source run) has not run with this --db"
                    )
                self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(path, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA busy_timeout = 10000")
            if not readonly:
                mode = self.db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode != "wal":
                    raise StorageError(f"{path}: SQLite would not use WAL (journal_mode {mode})")
                self.db.execute("PRAGMA synchronous = FULL")
                self.db.executescript(_SCHEMA)  # idempotent
                columns = {r[1] for r in self.db.execute("PRAGMA table_info(vms)")}
                if "scheduled" not in columns:  # a history from before VMs could leave their jobs
                    self.db.execute("ALTER TABLE vms ADD COLUMN scheduled INTEGER NOT NULL DEFAULT 1")
                self.db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
            version = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if version is None or int(version[0]) != SCHEMA_VERSION:
                raise StorageError(
                    f"{path}: history schema version {version[0] if version else '?'}, this vzrep reads"
                    f" {SCHEMA_VERSION}: upgrade vzrep, or move the file away to start a new history"
                )
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"cannot use the history database {path}: {exc}") from None

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- the daemon's writes ------------------------------------------------------------------

    def recover(self, now: float) -> tuple[list[PassRecord], list[tuple[str, str]]]:
        """Passes left ``running`` by a daemon that died are marked interrupted; returns them, and
        every VM whose last pass was interrupted (by a crash, or by a clean stop): due first."""
        with self.transaction() as db:
            rows = [self._pass(r) for r in db.execute("SELECT * FROM passes WHERE status = 'running'")]
            for p in rows:
                db.execute(
                    "UPDATE passes SET status = 'interrupted', finished = ?, exit_code = ?, error = ? WHERE id = ?",
                    (
                        now,
                        int(ExitCode.INTERRUPTED),
                        "the daemon stopped before the pass ended (the target rolled it back)",
                        p.id,
                    ),
                )
                self._event(
                    db,
                    now,
                    p.job,
                    p.vm,
                    "interrupted",
                    f"pass {p.id} found running at start: marked interrupted",
                )
            last = db.execute(
                "SELECT job, vm FROM passes WHERE id IN (SELECT MAX(id) FROM passes GROUP BY job, vm)"
                " AND status = 'interrupted'"
            ).fetchall()
        return rows, [(r["job"], r["vm"]) for r in last]

    def save_job(
        self, job_id: str, name: str, path: str, schedule: dict[str, Any], now: float, error: str = ""
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET name = excluded.name,"
                " path = excluded.path, schedule = excluded.schedule, updated = excluded.updated,"
                " error = excluded.error",
                (job_id, name, path, json.dumps(schedule), now, error),
            )

    def vm(self, job: str, vm: str) -> VmRow | None:
        r = self.db.execute("SELECT * FROM vms WHERE job = ? AND vm = ?", (job, vm)).fetchone()
        return None if r is None else _vm_row(r)

    def save_vm(self, row: VmRow, db: sqlite3.Connection | None = None) -> None:
        d = asdict(row)
        d["rpo_missed"], d["scheduled"] = int(row.rpo_missed), int(row.scheduled)
        cols = ", ".join(d)
        sql = f"INSERT OR REPLACE INTO vms ({cols}) VALUES ({', '.join('?' * len(d))})"
        if db is not None:
            db.execute(sql, tuple(d.values()))
        else:
            with self.transaction() as t:
                t.execute(sql, tuple(d.values()))

    def start_pass(self, row: VmRow, reason: str, attempt: int, started: float) -> int:
        """Step 1: the pass is recorded as running (committed) before it starts."""
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO passes (job, vm, reason, attempt, started, status) VALUES (?, ?, ?, ?, ?, 'running')",
                (row.job, row.vm, reason, attempt, started),
            )
            self.save_vm(row, db)
        assert cur.lastrowid is not None
        return cur.lastrowid

    def finish_pass(
        self,
        pass_id: int,
        row: VmRow,
        *,
        finished: float,
        status: str,
        exit_code: int,
        error: str,
        report: dict[str, Any] | None,
        wire_bytes: int,
    ) -> None:
        """Step 2: the pass's end and the VM's new state, in one transaction."""
        with self.transaction() as db:
            db.execute(
                "UPDATE passes SET finished = ?, status = ?, exit_code = ?, error = ?, wire_bytes = ?,"
                " report = ? WHERE id = ?",
                (
                    finished,
                    status,
                    exit_code,
                    error,
                    wire_bytes,
                    None if report is None else json.dumps(report),
                    pass_id,
                ),
            )
            self.save_vm(row, db)

    def event(self, now: float, job: str, vm: str, kind: str, detail: str) -> None:
        with self.transaction() as db:
            self._event(db, now, job, vm, kind, detail)

    @staticmethod
    def _event(db: sqlite3.Connection, now: float, job: str, vm: str, kind: str, detail: str) -> None:
        db.execute(
            "INSERT INTO events (time, job, vm, kind, detail) VALUES (?, ?, ?, ?, ?)",
            (now, job, vm, kind, detail),
        )

    # -- reads (``vzrep-source history``, metrics, the console) -----------------------------------

    def passes(
        self, job: str | None = None, vm: str | None = None, limit: int | None = None
    ) -> list[PassRecord]:
        """Passes oldest first (the newest ``limit`` of them); ``job`` is a job's id or name."""
        where, args = self._where(job, vm)
        sql = f"SELECT * FROM passes{where} ORDER BY id DESC" + (f" LIMIT {int(limit)}" if limit else "")
        return [self._pass(r) for r in reversed(self.db.execute(sql, args).fetchall())]

    def vms(self, job: str | None = None, vm: str | None = None) -> list[VmRow]:
        where, args = self._where(job, vm)
        return [_vm_row(r) for r in self.db.execute(f"SELECT * FROM vms{where} ORDER BY job, vm", args)]

    def events(self, job: str | None = None, vm: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        where, args = self._where(job, vm)
        rows = self.db.execute(f"SELECT * FROM events{where} ORDER BY id DESC LIMIT {int(limit)}", args)
        return [dict(r) for r in reversed(rows.fetchall())]

    def jobs(self) -> list[dict[str, Any]]:
        out = []
        for r in self.db.execute("SELECT * FROM jobs ORDER BY name, id"):
            d = dict(r)
            d["schedule"] = json.loads(d["schedule"])
            out.append(d)
        return out

    def last_started(self, job: str, vm: str, reason: str) -> float | None:
        """When the newest finished pass of that reason (say ``verify``) started; None: never."""
        row = self.db.execute(
            "SELECT MAX(started) AS s FROM passes WHERE job = ? AND vm = ? AND reason = ? AND status IN ('ok', 'failed')",
            (job, vm, reason),
        ).fetchone()
        return None if row is None or row["s"] is None else float(row["s"])

    def counters(self) -> list[VmCounters]:
        """Per VM: passes by status, bytes sent, failures by exit code, last success (for metrics)."""
        out: dict[tuple[str, str], VmCounters] = {}
        for row in self.vms():
            out[(row.job, row.vm)] = VmCounters(
                row.job, row.vm, last_success=row.last_success, last_success_start=row.last_success_start,
                rpo_missed=row.rpo_missed, next_run=row.next_run, scheduled=row.scheduled,
            )  # fmt: skip
        q = "SELECT job, vm, status, exit_code, COUNT(*) AS n, SUM(wire_bytes) AS b FROM passes GROUP BY job, vm, status, exit_code"
        for r in self.db.execute(q):
            c = out.setdefault((r["job"], r["vm"]), VmCounters(r["job"], r["vm"]))
            c.passes[r["status"]] = c.passes.get(r["status"], 0) + r["n"]
            c.wire_bytes += r["b"] or 0
            if r["status"] == "failed" and r["exit_code"] is not None:
                c.failures_by_exit_code[r["exit_code"]] = (
                    c.failures_by_exit_code.get(r["exit_code"], 0) + r["n"]
                )
        q = "SELECT job, vm, finished - started AS d FROM passes WHERE id IN (SELECT MAX(id) FROM passes WHERE status = 'ok' GROUP BY job, vm)"
        for r in self.db.execute(q):
            if (r["job"], r["vm"]) in out:
                out[(r["job"], r["vm"])].last_duration = r["d"]
        return [out[k] for k in sorted(out)]

    def _where(self, job: str | None, vm: str | None) -> tuple[str, tuple[str, ...]]:
        clauses, args = [], []
        if job:
            clauses.append("job IN (SELECT id FROM jobs WHERE id = ? OR name = ? UNION SELECT ?)")
            args += [job, job, job]
        if vm:
            clauses.append("vm = ?")
            args.append(vm)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(args)

    @staticmethod
    def _pass(r: sqlite3.Row) -> PassRecord:
        d = dict(r)
        d["report"] = json.loads(d["report"]) if d["report"] else None
        return PassRecord(**d)


def _vm_row(r: sqlite3.Row) -> VmRow:
    d = dict(r)
    d["rpo_missed"] = bool(d["rpo_missed"])
    d["scheduled"] = bool(d.get("scheduled", 1))  # read-only on a history not yet migrated: all are
    return VmRow(**d)
