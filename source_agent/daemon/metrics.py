"""The source daemon's metrics (``run --metrics-listen HOST:PORT``), read from its history at each scrape.

Everything comes from the SQLite history (:meth:`History.counters`, a read-only connection per
scrape), so the figures survive a restart of the daemon and agree with ``vzrep-source history``:
passes by status and failures by exit code (counters), bytes sent, the last success, the RPO lag
(seconds since the last successful pass ended) and whether the RPO is missed, the last pass's
duration and the next run.
"""

from __future__ import annotations

import time
from pathlib import Path

from vzcommon.errors import VzrepError
from vzcommon.metrics import Family, render

from .history import History


def collect(db: Path) -> str:
    now = time.time()
    passes = Family("vzrep_source_passes", "counter", "passes the daemon ran, by status")
    failures = Family("vzrep_source_pass_failures", "counter", "failed passes, by exit code")
    sent = Family("vzrep_source_wire_bytes", "counter", "bytes the passes sent to the target")
    last = Family("vzrep_source_last_success_timestamp_seconds", "gauge", "when the last successful pass ended")
    lag = Family("vzrep_source_rpo_lag_seconds", "gauge", "seconds since the last successful pass ended")
    missed = Family("vzrep_source_rpo_missed", "gauge", "1 while the VM's last success is older than its RPO")
    duration = Family("vzrep_source_last_pass_duration_seconds", "gauge", "the last successful pass's duration")
    nxt = Family("vzrep_source_next_run_timestamp_seconds", "gauge", "when the VM's next pass is due")
    up = Family("vzrep_source_history_readable", "gauge", "1 if the history could be read for this scrape")
    try:
        history = History(db, readonly=True)
    except VzrepError:
        up.add(0)
        return render([up])
    try:
        for c in history.counters():
            labels = {"job": c.job, "vm": c.vm}
            for status, n in sorted(c.passes.items()):
                passes.add(n, status=status, **labels)
            for code, n in sorted(c.failures_by_exit_code.items()):
                failures.add(n, exit_code=str(code), **labels)
            sent.add(c.wire_bytes, **labels)
            if c.last_success is not None:
                last.add(c.last_success, **labels)
            if c.scheduled:  # RPO gauges only for VMs still in a job
                if c.last_success is not None:
                    lag.add(max(0.0, now - c.last_success), **labels)
                missed.add(1 if c.rpo_missed else 0, **labels)
            if c.last_duration is not None:
                duration.add(c.last_duration, **labels)
            if c.next_run is not None:
                nxt.add(c.next_run, **labels)
    finally:
        history.close()
    up.add(1)
    return render([up, passes, failures, sent, last, lag, missed, duration, nxt])
