"""The target's Prometheus endpoint, scraped over HTTP on 127.0.0.1 and read by prometheus_client's own
parser: pass counts and failures by exit code, RPO lag, restore points, space, failover, verify."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.agents import Keys, TargetProcess
from tests.support.metrics import scrape
from tests.support.tools import make_image

MiB = 1 << 20



async def test_metrics_of_passes_failures_and_replicas(tmp_path: Path, session_keys: Keys) -> None:
    ready = tmp_path / "metrics-port"
    t = TargetProcess(
        tmp_path / "data", session_keys, tmp_path / "target.log",
        extra=("--metrics-listen", "127.0.0.1:0", "--metrics-ready-file", str(ready), "--restore-points", "3"),
    ).start()  # fmt: skip
    try:
        port = int(ready.read_text())
        assert scrape(port).get("vzrep_target_passes_total", {}) == {}  # nothing yet, and it answers
        src = make_image(tmp_path / "d.img", 8 * MiB, data_blocks=40, seed=2)
        for _ in range(2):
            done = await asyncio.to_thread(
                subprocess.run, t.source_cmd("m1", src, tmp_path / "state"), capture_output=True, text=True
            )
            assert done.returncode == 0, done.stderr
        # A pass that fails on the target: a disk that shrank (exit 3, bad input), rolled back.
        (tmp_path / "small").mkdir()
        small = make_image(tmp_path / "small" / "d.img", 4 * MiB, data_blocks=4, seed=3)
        bad = await asyncio.to_thread(
            subprocess.run, t.source_cmd("m1", small, tmp_path / "state2"), capture_output=True, text=True
        )
        assert bad.returncode == 3, bad.stderr
        m = scrape(port)
        assert m["vzrep_target_passes_total"] == {
            (("result", "committed"), ("vm", "m1")): 2, (("result", "rolled_back"), ("vm", "m1")): 1,
        }  # fmt: skip
        assert m["vzrep_target_pass_failures_total"] == {(("exit_code", "3"), ("vm", "m1")): 1}
        assert m["vzrep_target_restore_points"][(("vm", "m1"),)] == 2
        assert 0 <= m["vzrep_target_rpo_lag_seconds"][(("vm", "m1"),)] < 600
        assert m["vzrep_target_space_bytes"][(("vm", "m1"),)] >= 40 * 64 * 1024  # the data blocks at least
        assert m["vzrep_target_failover"] == {(("state", "none"), ("vm", "m1")): 1}
        assert m["vzrep_target_pass_running"][(("vm", "m1"),)] == 0
        assert "vzrep_target_last_verify_ok" not in m  # never verified
        verify = subprocess.run(
            [sys.executable, "-m", "target_agent.cli", "verify", "--data-dir", str(tmp_path / "data"), "--vm", "m1"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert verify.returncode == 0, verify.stderr
        assert scrape(port)["vzrep_target_last_verify_ok"] == {(("vm", "m1"),): 1}
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
            raise AssertionError("only /metrics is served")
        except urllib.error.HTTPError as exc:
            assert exc.code == 404
    finally:
        t.stop()
