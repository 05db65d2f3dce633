"""A small fault soak (bench/soak; ``make soak`` runs the big one): a dozen random faults, two of
each kind, over two VMs with real agents as subprocesses, and not one replica corrupt or lost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.soak.driver import KINDS


def test_a_dozen_faults_lose_nothing(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    res = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--faults", "12", "--workers", "1", "--vms", "2", "--seed", "7",
         "--work", str(tmp_path / "work"), "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    result = json.loads(out.read_text())
    assert result["corrupt"] == 0 and result["lost"] == 0 and result["problems"] == 0, result
    assert result["faults"] == 12
    kinds = set(KINDS) - ({"enospc"} if result["note"] else set())  # no mount namespace: no ENOSPC
    assert set(result["faults_by_kind"]) == kinds, result["faults_by_kind"]
    # the faults struck: passes were cut, killed or refused space, and the replicas rolled back
    assert sum(n for what, n in result["outcomes"].items() if "rolled back" in what) >= 3, result["outcomes"]
    assert result["clean_passes"] >= 2 * 2 + 2  # two per VM to start, one per VM at the end
