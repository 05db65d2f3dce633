"""Scenario (c): the sweeps behind vzrep's defaults.

* block size for the full and the incremental pass (the 2 % change is always in 64 KiB units, so
  larger blocks send more of the unchanged data around each change);
* channel window and packet size (``tunnel_policy.WINDOW`` / ``MAX_PKTSIZE``, patched by
  ``bench.agent``), asyncio's own loop against the default, uvloop: full passes of the mixed image;
* compression none / zstd / auto on a compressible ext4 image of text files, and zstd levels on
  mixed data (compression speed per core against the ratio it buys).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import zstandard

from . import full_pass, incremental
from .context import Context
from .images import BLOCK, ChangeSet, build_text_ext4, mixed_sample, real_text
from .peers import MiB

# asyncssh's own defaults are 2 MiB / 32 KiB; vzrep ships 16 MiB / 256 KiB (tunnel_policy).
WINDOWS = [(2 << 20, 32 << 10), (16 << 20, 32 << 10), (16 << 20, 256 << 10), (64 << 20, 256 << 10)]
WINDOWS_QUICK = [(2 << 20, 32 << 10), (16 << 20, 256 << 10)]
BLOCK_SIZES = ["64K", "256K", "1M", "4M"]


def block_sizes(ctx: Context, image: Path, done: dict[str, dict[str, Any]], changes: ChangeSet) -> dict[str, Any]:
    """Full then incremental pass per block size; ``done`` holds sizes measured already (64K by (a)/(b))."""
    rows: dict[str, Any] = {}
    for bs in BLOCK_SIZES:
        if bs in done:
            rows[bs] = done[bs]
            continue
        vm = f"bs-{bs}"
        full = full_pass.vzrep(ctx, image, vm, bs)
        changes.apply()
        try:
            incr = incremental.vzrep(ctx, image, vm, changes, bs)
        finally:
            changes.undo()
        ctx.forget(vm)
        rows[bs] = {"full": full, "incremental": incr}
    return rows


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(runs, key=lambda r: r["seconds"])
    mid = dict(ordered[len(ordered) // 2])
    mid["all_seconds"] = [round(r["seconds"], 3) for r in runs]
    return mid


def link(ctx: Context, image: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Window / packet sizes and the event loop, as interleaved rounds (median of 3, 1 with --quick).

    Single runs on a shared machine move by 1.5x; rounds that visit every setting in turn spread
    the load over all of them alike.
    """
    configs: dict[str, dict[str, Any]] = {
        f"{w >> 20} MiB / {p >> 10} KiB": {"window": w, "pktsize": p} for w, p in (WINDOWS_QUICK if ctx.quick else WINDOWS)
    }
    configs["asyncio"] = {"uvloop": 0}  # default window / packet, on asyncio's own loop
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in configs}
    for _ in range(1 if ctx.quick else 3):
        for label, knobs in configs.items():
            vm = "link-" + "".join(c for c in label if c.isalnum())
            runs[label].append(ctx.vzrep(vm, image, knobs=knobs))
            ctx.forget(vm)
    windows = {k: _median(v) for k, v in runs.items() if k != "asyncio"}
    loops = {"uvloop": windows["16 MiB / 256 KiB"], "asyncio": _median(runs["asyncio"])}
    return windows, loops


def compression(ctx: Context, size: int) -> dict[str, Any]:
    """Full passes of an ext4 image of text files with each compression mode (and zstd level 3)."""
    img = ctx.work / "text-ext4.img"
    text = build_text_ext4(img, size, int(size * 0.45), ctx.work)
    rows: dict[str, Any] = {"image": {"size": size, "text_bytes": text}}
    cases = [("none", "none", None), ("zstd-1", "zstd", 1), ("zstd-3", "zstd", 3), ("auto", "auto", None)]
    for label, mode, level in cases:
        vm = f"zstd-{label}"
        rows[label] = ctx.vzrep(vm, img, compress=mode, knobs={"zstd_level": level})
        ctx.forget(vm)
    img.unlink()
    return rows


def zstd_levels(levels: tuple[int, ...] = (-1, 1, 3), size: int = 48 * MiB) -> dict[str, Any]:
    """zstd per 64 KiB block, as the pipeline compresses: MB/s of input on one core, and the ratio."""
    data = mixed_sample(size, real_text(16 * MiB))
    blocks = [data[i : i + BLOCK] for i in range(0, len(data), BLOCK)]
    rows: dict[str, Any] = {}
    for level in levels:
        cctx = zstandard.ZstdCompressor(level=level)
        t0 = time.perf_counter()
        packed = 0
        for b in blocks:
            out = cctx.compress(b)
            packed += min(len(out), len(b))  # the pipeline sends a block raw when zstd does not shrink it
        seconds = time.perf_counter() - t0
        rows[str(level)] = {"mb_s": len(data) / seconds / 1e6, "ratio": len(data) / packed}
    return rows
