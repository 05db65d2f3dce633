"""The target's metrics (``serve --metrics-listen HOST:PORT``): per VM, from its state files and passes.

Counters of passes (committed, rolled back by exit code) count since the agent started, as
Prometheus counters do; everything else is read from each VM's directory at each scrape -- the last
pass (time, duration, bytes), the RPO lag (seconds since the last committed pass), restore points,
the space the replica and its points take, its failover state and its last verify -- so the figures
survive a restart of the agent.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from vzcommon.metrics import Family, render

from .storage.status import vm_status
from .storage.transaction import list_vms


def _epoch(stamp: object) -> float | None:
    if not isinstance(stamp, str):
        return None
    try:
        when = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()


def _space(vdir: Path) -> int:
    """Bytes the VM's directory takes on the storage (allocated blocks, holes not counted)."""
    total = 0
    for root, _, files in os.walk(vdir):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


class TargetMetrics:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.passes: Counter[tuple[str, str]] = Counter()  # (vm, result)
        self.failures: Counter[tuple[str, int]] = Counter()  # (vm, exit code)

    def pass_ended(self, event: dict[str, Any]) -> None:
        """The sessions' ``on_pass_end``: count it."""
        vm = str(event.get("vm") or "")
        if event.get("result") == "committed":
            self.passes[(vm, "committed")] += 1
        else:
            self.passes[(vm, "rolled_back")] += 1
            self.failures[(vm, int(event.get("exit_code") or 1))] += 1

    def collect(self) -> str:
        now = time.time()
        passes = Family("vzrep_target_passes", "counter", "passes since the agent started, by result")
        failures = Family("vzrep_target_pass_failures", "counter", "rolled-back passes since start, by exit code")
        for (vm, result), n in sorted(self.passes.items()):
            passes.add(n, vm=vm, result=result)
        for (vm, code), n in sorted(self.failures.items()):
            failures.add(n, vm=vm, exit_code=str(code))
        last = Family("vzrep_target_last_success_timestamp_seconds", "gauge", "when the last pass committed")
        lag = Family("vzrep_target_rpo_lag_seconds", "gauge", "seconds since the last committed pass")
        duration = Family("vzrep_target_last_pass_duration_seconds", "gauge", "the last committed pass's duration")
        received = Family("vzrep_target_last_pass_bytes_received", "gauge", "bytes the last committed pass received")
        points = Family("vzrep_target_restore_points", "gauge", "restore points kept")
        space = Family("vzrep_target_space_bytes", "gauge", "bytes the replica and its restore points take")
        failover = Family("vzrep_target_failover", "gauge", "1 in the VM's failover state (none: replicating)")
        verify = Family("vzrep_target_last_verify_ok", "gauge", "1 if the last verify found the replica whole")
        running = Family("vzrep_target_pass_running", "gauge", "1 while a pass holds the VM")
        for vdir in list_vms(self.data_dir):
            vm = vdir.name
            st = vm_status(vdir)
            lp = st.get("last_pass") or {}
            finished = _epoch(lp.get("finished"))
            if finished is not None:
                last.add(finished, vm=vm)
                lag.add(max(0.0, now - finished), vm=vm)
            if isinstance(lp.get("seconds"), (int, float)):
                duration.add(lp["seconds"], vm=vm)
            if isinstance(lp.get("bytes_received"), int):
                received.add(lp["bytes_received"], vm=vm)
            points.add(len(st.get("restore_points") or []), vm=vm)
            space.add(_space(vdir), vm=vm)
            failover.add(1, vm=vm, state=str((st.get("failover") or {}).get("state") or "none"))
            if st.get("last_verify"):
                verify.add(1 if st["last_verify"].get("ok") else 0, vm=vm)
            running.add(1 if st.get("pass_running") else 0, vm=vm)
        return render([passes, failures, last, lag, duration, received, points, space, failover, verify, running])
