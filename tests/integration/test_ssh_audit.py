"""ssh-audit against a real target agent: no failure, no warning, no recommendation (issue 18).

ssh-audit comes from the lock (PyPI): Debian's 2.5.0 predates ML-KEM and strict key exchange and
warns about both as unknown. The pairing listener is not SSH (its own framed protocol over TCP,
``pairing/net.py``), so the target's SSH server is the only thing to audit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.agents import Keys, TargetProcess
from vzcommon import tunnel_policy as policy

SSH_AUDIT = Path(sys.executable).parent / "ssh-audit"


def findings(report: dict[str, Any]) -> list[str]:
    """Every failure and warning ssh-audit attached to an algorithm, and its other complaints."""
    out = []
    for section in ("kex", "key", "enc", "mac"):
        for alg in report.get(section, []):
            for level in ("fail", "warn"):
                out += [
                    f"{section} {alg['algorithm']}: [{level}] {n}"
                    for n in alg.get("notes", {}).get(level, [])
                ]
    out += [f"cve {c}" for c in report.get("cves", [])]
    out += [f"note: {n}" for n in report.get("additional_notes", [])]
    if report.get("recommendations"):
        out.append(f"recommendations: {report['recommendations']}")
    return out


def test_ssh_audit_finds_nothing_to_warn_about_in_the_target(tmp_path: Path, session_keys: Keys) -> None:
    assert SSH_AUDIT.exists(), f"{SSH_AUDIT} is missing: run `make venv` (ssh-audit is in the lock)"
    target = TargetProcess(tmp_path / "data", session_keys, tmp_path / "target.log").start()
    try:
        res = subprocess.run(
            [str(SSH_AUDIT), "-j", "-t", "10", "-p", str(target.port), "127.0.0.1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        target.stop()
    report = json.loads(res.stdout)
    assert findings(report) == []
    assert res.returncode == 0, res.stdout + res.stderr  # ssh-audit's "good": 0; warning 2, failure 3
    # it saw exactly the policy. ssh-audit fetches host keys only through the key exchanges it
    # implements itself (ML-KEM is not one), so it shows no fingerprint; it still audits the host
    # key's algorithm from the KEXINIT.
    assert report["banner"]["software"].startswith("AsyncSSH_")
    assert [a["algorithm"] for a in report["key"]] == ["ssh-ed25519"]
    assert [a["algorithm"] for a in report["enc"]] == list(policy.ENCRYPTION_ALGS)
    assert [a["algorithm"] for a in report["mac"]] == list(policy.MAC_ALGS)
    assert report["compression"] == list(policy.COMPRESSION_ALGS)
    kex = [a["algorithm"] for a in report["kex"]]
    assert [k for k in kex if not k.startswith(("ext-info-", "kex-strict-"))] == list(policy.PQ_KEX_ALGS)
    assert "kex-strict-s-v00@openssh.com" in kex  # the Terrapin counter-measure
