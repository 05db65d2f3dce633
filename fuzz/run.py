"""Fuzz every target in turn and report the inputs each ran: ``python -m fuzz.run`` (``make fuzz``).

Each target runs in its own atheris process (:mod:`fuzz.worker`) from the seeds (:mod:`fuzz.seeds`)
and the kept corpus ``fuzz/corpus/<target>/``, for its share of ``--inputs``, one after the other (the
machine is shared: one core at a time). libFuzzer bounds each input (``-timeout``, ``-rss_limit_mb``)
and the run as a whole is bounded by ``--max-minutes`` per target. Afterwards the inputs that found
coverage the kept corpus lacks are merged into it (``-merge=1``): commit them, and the replay test
(tests/fuzz) runs them in ``make test`` from then on.

A crash, hang or memory blow-up stops that target; its input is copied to ``fuzz/crashes/`` and the
run exits 1 after the others have run.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from fuzz.seeds import write_seeds
from fuzz.targets import TARGETS

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "fuzz" / "corpus"
CRASHES = REPO / "fuzz" / "crashes"
#: each target's share of the inputs: the slow ones (whole disk images) get fewer
WEIGHTS = {
    "frame": 32,
    "message": 28,
    "vmdk": 20,
    "ovfenv": 20,
    "record": 20,
    "vzmap": 12,
    "vztemp": 12,
    "partitions": 12,
    "ntfs": 10,
    "ext": 10,
    "lvm": 10,
    "swap": 10,
    "xfs": 1,  # 10-40 inputs/s: a log without a record header is read 4096 blocks back, instrumented
}
#: bytes of corpus kept per target (crash-* regression inputs aside): disk images, and the rest
BUDGET_IMAGE = 40 * 1024
BUDGET = 16 * 1024
IMAGE_TARGETS = frozenset({"partitions", "ntfs", "ext", "xfs", "lvm", "swap"})
_EXECUTED = re.compile(rb"stat::number_of_executed_units:\s*(\d+)")


@dataclass
class Outcome:
    target: str
    inputs: int
    seconds: float
    corpus_added: int
    failure: str | None


def _wrapper(tmp: Path, name: str) -> Path:
    """libFuzzer re-runs its own argv[0] to merge: give it a script that starts this target's worker."""
    path = tmp / f"worker-{name}"
    path.write_text(
        f'#!/bin/sh\ncd "{REPO}" && VZREP_FUZZ_SELF="$0" exec "{sys.executable}" -m fuzz.worker {name} "$@"\n'
    )
    path.chmod(0o755)
    return path


def fuzz_one(name: str, runs: int, tmp: Path, seeds: Path, args: argparse.Namespace) -> Outcome:
    work, artifacts, kept = tmp / "work" / name, tmp / "artifacts" / name, CORPUS / name
    for d in (work, artifacts, kept):
        d.mkdir(parents=True, exist_ok=True)
    worker = str(_wrapper(tmp, name))
    opts = [
        f"-max_len={TARGETS[name].max_len}",
        f"-timeout={args.timeout}",
        f"-rss_limit_mb={args.rss_mb}",
        f"-artifact_prefix={artifacts}/",
        f"-max_total_time={args.max_minutes * 60}",
        "-print_final_stats=1",
    ]
    dirs = [str(work), str(kept)] + ([str(seeds / name)] if (seeds / name).is_dir() else [])
    start = time.monotonic()
    res = subprocess.run([worker, f"-runs={runs}", *opts, *dirs], capture_output=True, check=False)
    seconds = time.monotonic() - start
    m = _EXECUTED.search(res.stderr)
    inputs = int(m.group(1)) if m else 0
    failure = None
    if res.returncode != 0:
        found = sorted(artifacts.iterdir())
        CRASHES.mkdir(exist_ok=True)
        for f in found:
            shutil.copy(f, CRASHES / f"{name}-{f.name}")
        tail = res.stderr.decode("utf-8", "replace").strip().splitlines()[-30:]
        failure = "\n".join(tail) + f"\n(inputs: {', '.join(f'fuzz/crashes/{name}-{f.name}' for f in found)})"
    before = len(list(kept.iterdir()))
    if args.merge and failure is None:
        subprocess.run(
            [worker, "-merge=1", f"-max_len={TARGETS[name].max_len}", str(kept), str(work)],
            capture_output=True,
            check=True,
        )
        prune(kept, BUDGET_IMAGE if name in IMAGE_TARGETS else BUDGET)
    added = len(list(kept.iterdir())) - before
    return Outcome(name, inputs, seconds, added, failure)


def prune(kept: Path, budget: int) -> None:
    """Keep the corpus small: drop the largest inputs until the rest fit ``budget`` bytes.

    ``crash-*`` inputs (regressions) always stay, and so does the smallest other input. libFuzzer's
    merge already took the smallest input for each feature, so what goes is rare, large coverage.
    """
    found = sorted(
        (f for f in kept.iterdir() if not f.name.startswith("crash-")), key=lambda f: f.stat().st_size
    )
    total = 0
    for i, f in enumerate(found):
        total += f.stat().st_size
        if total > budget and i > 0:
            f.unlink()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__.splitlines()[0])
    p.add_argument("--inputs", type=int, default=1_040_000, help="inputs in total, shared by WEIGHTS")
    p.add_argument("targets", nargs="*", default=list(TARGETS), help="targets to run (default: all)")
    p.add_argument("--timeout", type=int, default=10, help="seconds one input may take")
    p.add_argument("--rss-mb", type=int, default=1024, help="memory the fuzzing process may use")
    p.add_argument("--max-minutes", type=int, default=20, help="wall-clock bound of each target")
    p.add_argument("--no-merge", dest="merge", action="store_false", help="leave fuzz/corpus alone")
    args = p.parse_args(argv)
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        p.error(f"unknown targets {sorted(unknown)}; the targets are: {', '.join(TARGETS)}")
    total_weight = sum(WEIGHTS[t] for t in args.targets)
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="vzrep-fuzz-") as t:
        tmp = Path(t)
        write_seeds(tmp / "seeds")
        for name in args.targets:
            runs = -(-args.inputs * WEIGHTS[name] // total_weight)
            out = fuzz_one(name, runs, tmp, tmp / "seeds", args)
            outcomes.append(out)
            rate = out.inputs / out.seconds if out.seconds else 0.0
            status = "ok" if out.failure is None else "FAILED"
            print(
                f"{name:11} {out.inputs:>9} inputs {out.seconds:7.1f} s {rate:7.0f}/s "
                f"corpus +{out.corpus_added:<3} {status}",
                flush=True,
            )
    total = sum(o.inputs for o in outcomes)
    print(f"{'total':11} {total:>9} inputs {sum(o.seconds for o in outcomes):7.1f} s")
    for o in outcomes:
        if o.failure:
            print(f"\n== {o.target} failed:\n{o.failure}", file=sys.stderr)
    if any(o.failure for o in outcomes):
        return 1
    if total < args.inputs:  # --max-minutes stopped a target early: the count is not reached
        print(f"only {total} of {args.inputs} inputs ran within --max-minutes", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
