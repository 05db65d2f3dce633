"""The event loop: both agents on uvloop (the default) against asyncio's own loop, in alternated pairs.

Each round runs, on each loop in turn (the order alternates between rounds, so a drift of the
machine's speed falls on both alike): a full pass of a 4 GiB mixed image into an empty replica, then
the incremental pass after 2 % of its 64 KiB blocks changed (scenario (b)'s change), each against a
freshly started target. Medians of the rounds, the rounds themselves, and the target's peak RSS
in the full passes are printed and written to ``build/loops.json``.

Run: ``python -m bench.loops [--rounds N]`` (``make bench-loops``; not part of ``make bench``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from .context import Context
from .images import ChangeSet, build_mixed
from .peers import GiB, MiB
from .run import byte_compile

LOOPS = {"uvloop": {"uvloop": 1}, "asyncio": {"uvloop": 0}}


def rounds(ctx: Context, image: Path, count: int) -> dict[str, dict[str, list[float]]]:
    runs: dict[str, dict[str, list[float]]] = {
        k: {"full": [], "incremental": [], "rss_target": []} for k in LOOPS
    }
    changes = ChangeSet(image)
    for r in range(count):
        order = list(LOOPS) if r % 2 == 0 else list(reversed(LOOPS))
        for name in order:
            knobs = LOOPS[name]
            ctx.forget("loops")
            full = ctx.vzrep("loops", image, knobs=knobs)
            changes.apply()
            try:
                incr = ctx.vzrep("loops", image, knobs=knobs)
            finally:
                changes.undo()
            runs[name]["full"].append(round(full["seconds"], 3))
            runs[name]["incremental"].append(round(incr["seconds"], 3))
            runs[name]["rss_target"].append(full["rss_target"])
            print(
                f"round {r + 1} {name:8} full {full['seconds']:6.2f} s  incremental {incr['seconds']:5.2f} s"
                f"  target peak {full['rss_target'] / MiB:5.0f} MiB",
                flush=True,
            )
    return runs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.loops", description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6, help="alternated pairs per loop (default 6)")
    ap.add_argument("--size-gib", type=float, default=4.0)
    ap.add_argument("--json", type=Path, default=Path("build/loops.json"))
    args = ap.parse_args(argv)
    byte_compile()  # as `make bench` does: agents start as an installed package would
    work = Path(tempfile.mkdtemp(prefix="vzrep-loops-"))
    ctx = Context(work).start()
    try:
        image = work / "mixed.img"
        print(f"building a {args.size_gib:g} GiB mixed image in {work} ...", flush=True)
        build_mixed(image, int(args.size_gib * GiB))
        runs = rounds(ctx, image, args.rounds)
    finally:
        ctx.stop()
        shutil.rmtree(work, ignore_errors=True)
    summary: dict[str, Any] = {}
    print()
    for name, r in runs.items():
        summary[name] = {
            "full_median": statistics.median(r["full"]),
            "incremental_median": statistics.median(r["incremental"]),
            "rss_target_max": max(r["rss_target"]),
            "runs": r,
        }
        print(
            f"{name:8} full median {summary[name]['full_median']:.2f} s, incremental median"
            f" {summary[name]['incremental_median']:.2f} s, target peak <= {summary[name]['rss_target_max'] / MiB:.0f} MiB"
        )
    for kind in ("full", "incremental"):
        wins = sum(u < a for u, a in zip(runs["uvloop"][kind], runs["asyncio"][kind], strict=True))
        print(f"uvloop faster in {wins} of {args.rounds} {kind} pairs")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
