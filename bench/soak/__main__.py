"""``python -m bench.soak`` (``make soak``): run the fault soak and print faults by kind and the verdict.

The run re-executes itself under ``unshare -m`` (a private mount namespace, so each worker's small
tmpfs is invisible outside and goes away with the run); where that is not allowed (not root), it runs
without ENOSPC faults and says so. Exit 0 only with no corrupt or lost replica and no other finding.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .driver import KINDS, Config, soak

NS_ENV = "VZSOAK_MOUNT_NS"


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    p.add_argument("--faults", type=int, default=500, help="faults to inject in all (default 500)")
    p.add_argument(
        "--workers", type=int, default=2, help="workers, each with its own target agent (default 2)"
    )
    p.add_argument("--vms", type=int, default=4, help="VMs in all, spread over the workers (default 4)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--disk-mib", type=int, default=4, help="size of the first disk of each VM (default 4)")
    p.add_argument(
        "--changes", type=int, default=4, help="blocks changed per disk before each pass (default 4)"
    )
    p.add_argument(
        "--clean-ratio", type=float, default=0.3, help="chance of a clean pass after a fault (default 0.3)"
    )
    p.add_argument(
        "--max-seconds", type=float, default=900, help="stop injecting after this long (default 900)"
    )
    p.add_argument("--kinds", default=",".join(KINDS), help=f"fault kinds (default {','.join(KINDS)})")
    p.add_argument(
        "--work", type=Path, help="work directory (default: a new one in $TMPDIR, removed if all is well)"
    )
    p.add_argument("--json", type=Path, help="also write the result as JSON here")
    p.add_argument(
        "--no-fork-server",
        action="store_true",
        help="start every source agent as a new process (slower: each imports everything)",
    )
    p.add_argument("--no-unshare", action="store_true", help="no private mount namespace (no ENOSPC faults)")
    return p.parse_args(argv)


def reexec_in_namespace(argv: list[str]) -> int | None:
    """Run this command again in a private mount namespace; None when that is not possible here."""
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        return None
    probe = subprocess.run([unshare, "-m", "--propagation", "private", "true"], capture_output=True)
    if probe.returncode != 0:
        return None
    cmd = [unshare, "-m", "--propagation", "private", sys.executable, "-m", "bench.soak", *argv]
    return subprocess.run(cmd, env={**os.environ, NS_ENV: "1"}).returncode


def report(result: dict[str, object], seconds: float, cfg: Config, note: str) -> str:
    lines = [f"fault soak: {result['faults']} faults, {result['passes']} passes "
             f"({result['clean_passes']} clean) over {cfg.vms} VMs, {cfg.workers} workers, seed {cfg.seed}, "
             f"{seconds:.0f} s"]  # fmt: skip
    if int(result["faults"]) < cfg.faults:  # type: ignore[call-overload]
        lines.append(
            f"stopped by --max-seconds {cfg.max_seconds:.0f} after {result['faults']} of {cfg.faults} faults"
        )
    if note:
        lines.append(note)
    lines.append("faults by kind:")
    for kind, n in result["faults_by_kind"].items():  # type: ignore[attr-defined]
        lines.append(f"  {kind:12} {n:5}")
    lines.append("outcomes:")
    for what, n in result["outcomes"].items():  # type: ignore[attr-defined]
        lines.append(f"  {n:5}  {what}")
    lines.append("source exit codes: " + ", ".join(f"{k}: {v}" for k, v in result["exit_codes"].items()))  # type: ignore[attr-defined]
    lines.append(f"target restarts: {result['target_restarts']}")
    lines.append(
        f"corrupt replicas: {result['corrupt']}   lost replicas: {result['lost']}   other findings: {result['problems']}"
    )
    for key in ("corrupt_detail", "lost_detail", "problem_detail"):
        for item in result[key][:20]:  # type: ignore[index]
            lines.append(f"  {key.split('_')[0]}: {item}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    note = ""
    if os.environ.get(NS_ENV) != "1" and not args.no_unshare:
        rc = reexec_in_namespace(argv)
        if rc is not None:
            return rc
        note = "no private mount namespace here (needs root and unshare): ENOSPC faults left out"
    kinds = tuple(k for k in args.kinds.split(",") if k)
    if unknown := set(kinds) - set(KINDS):
        print(f"unknown fault kinds: {sorted(unknown)}", file=sys.stderr)
        return 2
    tmpfs = os.environ.get(NS_ENV) == "1"
    if not tmpfs:
        kinds = tuple(k for k in kinds if k != "enospc")
    work = args.work or Path(tempfile.mkdtemp(prefix="vzrep-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = Config(
        work=work, faults=args.faults, workers=args.workers, vms=args.vms, seed=args.seed,
        disk_mib=args.disk_mib, changes=args.changes, clean_ratio=args.clean_ratio,
        max_seconds=args.max_seconds, kinds=kinds, tmpfs=tmpfs, fork_server=not args.no_fork_server,
    )  # fmt: skip
    t0 = time.monotonic()
    tally = asyncio.run(soak(cfg))
    seconds = time.monotonic() - t0
    result = tally.as_dict()
    result.update(
        seconds=round(seconds, 1), seed=cfg.seed, workers=cfg.workers, vms=cfg.vms, note=note, work=str(work)
    )
    print(report(result, seconds, cfg, note))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    ok = not (tally.corrupt or tally.lost or tally.problems) and tally.started >= 1
    if ok and args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work directory kept: {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
