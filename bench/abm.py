"""ABM benchmark: an 8 GiB ext4 disk filled to 60 %, then 70 % of that data deleted.

The image stays sparse: files get their blocks from debugfs ``fallocate`` (allocated, never written),
so the benchmark needs seconds and little disk space, yet the bitmaps are exactly those of a disk
that held the data. It reports the bytes a pass reads with ABM off (the whole disk) and on (active
extents aligned to the pass block size), their ratio, and the time to compute the active map.

Run: ``python -m bench.abm [--size-gib 8] [--keep DIR]``. :func:`run` fills a report dict for
``bench.run``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from source_agent.filters.abm import active_extents

GiB = 1 << 30
MiB = 1 << 20
NFILES = 100


class _Reader:
    """A read-only image reader (the bench does not depend on the pass's disk readers)."""

    def __init__(self, path: Path) -> None:
        self.name = path.stem
        self._fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self._fd).st_size
        self.reads = 0
        self.read_bytes = 0

    def pread(self, offset: int, length: int) -> bytes:
        self.reads += 1
        data = os.pread(self._fd, length, offset)
        self.read_bytes += len(data)
        return data

    def data_extents(self, start: int = 0, end: int | None = None):  # type: ignore[no-untyped-def]
        yield start, (self.size if end is None else end) - start

    def close(self) -> None:
        os.close(self._fd)


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise SystemExit(f"{name} is missing: run `make sysdeps`")
    return path


def build_image(path: Path, size: int, fill: float = 0.60, delete: float = 0.70) -> dict[str, int]:
    """mkfs.ext4 a sparse image, allocate ``fill`` of it in files, delete ``delete`` of those files."""
    with open(path, "wb") as f:
        f.truncate(size)
    subprocess.run([_tool("mkfs.ext4"), "-F", "-q", "-b", "4096", str(path)], check=True)
    file_size = int(size * fill) // NFILES // MiB * MiB
    nfiles, blocks = NFILES, file_size // 4096
    cmds = []
    for i in range(nfiles):
        cmds += [f"write /dev/null f{i}", f"fallocate f{i} 0 {blocks - 1}"]
    # delete spread over the disk, not a contiguous tail: every third file survives, and so on
    doomed = [i for i in range(nfiles) if (i * 7) % 10 < round(delete * 10)]
    cmds += [f"rm f{i}" for i in doomed]
    script = path.with_suffix(".debugfs")
    script.write_text("\n".join(cmds) + "\n")
    subprocess.run([_tool("debugfs"), "-w", "-f", str(script), str(path)], check=True, capture_output=True)
    return {"files": nfiles, "file_size": file_size, "deleted": len(doomed),
            "allocated": (nfiles - len(doomed)) * file_size}


def run(report: dict[str, Any], *, size: int = 8 * GiB, workdir: Path | None = None) -> None:
    """Build the image, compute the active map, and put the figures into ``report['abm']``."""
    own = workdir is None
    wd = Path(tempfile.mkdtemp(prefix="vzrep-bench-abm-")) if workdir is None else workdir
    try:
        img = wd / "disk0.img"
        t0 = time.perf_counter()
        built = build_image(img, size)
        t_build = time.perf_counter() - t0
        reader = _Reader(img)
        try:
            t0 = time.perf_counter()
            active = active_extents(reader)
            t_map = time.perf_counter() - t0
        finally:
            reader.close()
        rows = {}
        for block in (64 * 1024, 1 * MiB):
            on = active.align(block).clip(size).total
            rows[block] = {"abm_off": size, "abm_on": on, "ratio": size / on if on else float("inf")}
        report["abm"] = {
            "disk_size": size,
            **built,
            "active_bytes": active.total,
            "extents": len(active),
            "map_seconds": t_map,
            "metadata_reads": reader.reads,
            "metadata_bytes_read": reader.read_bytes,
            "build_seconds": t_build,
            "by_block_size": rows,
        }
    finally:
        if own:
            shutil.rmtree(wd, ignore_errors=True)


def print_table(report: dict[str, Any]) -> None:
    r = report["abm"]
    print(f"ABM on an {r['disk_size'] / GiB:.0f} GiB ext4 disk: {r['files']} files of "
          f"{r['file_size'] // MiB} MiB (60 %), {r['deleted']} deleted (70 %)")
    print(f"  active map: {r['active_bytes'] / GiB:.2f} GiB in {r['extents']} extents, computed in "
          f"{r['map_seconds']:.3f} s ({r['metadata_reads']} reads, {r['metadata_bytes_read'] / MiB:.1f} MiB of metadata)")
    print(f"  {'pass block':>10} | {'read, ABM off':>14} | {'read, ABM on':>13} | {'off/on':>7}")
    for block, row in r["by_block_size"].items():
        print(f"  {block // 1024:>7} KiB | {row['abm_off'] / GiB:>10.2f} GiB | {row['abm_on'] / GiB:>9.2f} GiB |"
              f" {row['ratio']:>6.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gib", type=float, default=8.0)
    ap.add_argument("--keep", type=Path, help="build the image in this directory and keep it")
    args = ap.parse_args()
    report: dict[str, Any] = {}
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    run(report, size=int(args.size_gib * GiB) // MiB * MiB, workdir=args.keep)
    print_table(report)


if __name__ == "__main__":
    main()
