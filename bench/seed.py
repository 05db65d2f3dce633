"""Seeding: ``vzrep-target seed`` of a 4 GiB image against ``qemu-img convert -O raw`` of the same seed.

Both restore the same seed (streamOptimized VMDK, then qcow2, made from the mixed image of
``bench.images``) into the same directory, and both end with the bytes durable: vzrep fsyncs what it
wrote; ``qemu-img convert`` does not, so its run ends with ``sync FILE``. vzrep does more in that time:
it hashes every block into the replica's ``.vzmap``, writes the descriptor and restore point 1, and
checks the seed with ``qemu-img check`` first. Each result is judged with ``qemu-img compare`` outside
the timing. The seed is read once before each run (warm page cache for both).

    python -m bench.seed [--size-gib 4] [--repeat 1]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .images import build_mixed
from .peers import GiB, MiB, drop_writeback, run_measured, tool, warm

FORMATS = {
    "streamOptimized": ["-O", "vmdk", "-o", "subformat=streamOptimized"],
    "qcow2": ["-O", "qcow2"],
}


def _compare(a: Path, b: Path) -> None:
    res = subprocess.run([tool("qemu-img"), "compare", str(a), str(b)], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"qemu-img compare {a} {b}: {res.stdout}{res.stderr}")


def _one(work: Path, image: Path, seed: Path, label: str, repeat: int) -> dict[str, Any]:
    data = work / "data"
    best_vz: dict[str, Any] | None = None
    best_peer: dict[str, Any] | None = None
    for _ in range(repeat):
        shutil.rmtree(data, ignore_errors=True)
        drop_writeback()
        warm(seed)
        vz = run_measured(
            [sys.executable, "-m", "target_agent.cli", "seed", "--data-dir", str(data), "--vm", "bench",
             "--disk", f"disk={seed}"]
        )  # fmt: skip
        if vz.returncode:
            raise RuntimeError(f"vzrep seed failed: {vz.stderr.decode(errors='replace')[-800:]}")
        flat = data / "bench" / "disk-flat.vmdk"
        r_vz = {"seconds": vz.seconds, "rss": vz.max_rss, "allocated": flat.stat().st_blocks * 512}
        _compare(image, data / "bench" / "disk.vmdk")
        shutil.rmtree(data)
        data.mkdir()
        out = data / "disk.raw"
        drop_writeback()
        warm(seed)
        convert = f'{tool("qemu-img")} convert -O raw "{seed}" "{out}" && {tool("sync")} "{out}"'
        peer = run_measured(["sh", "-c", convert])
        if peer.returncode:
            raise RuntimeError(f"qemu-img convert failed: {peer.stderr.decode(errors='replace')[-800:]}")
        r_peer = {"seconds": peer.seconds, "rss": peer.max_rss, "allocated": out.stat().st_blocks * 512}
        _compare(image, out)
        out.unlink()
        if best_vz is None or r_vz["seconds"] < best_vz["seconds"]:
            best_vz = r_vz
        if best_peer is None or r_peer["seconds"] < best_peer["seconds"]:
            best_peer = r_peer
    assert best_vz is not None and best_peer is not None
    print(f"  {label}: vzrep {best_vz['seconds']:.2f} s, qemu-img {best_peer['seconds']:.2f} s", flush=True)
    return {
        "seed_bytes": seed.stat().st_size,
        "vzrep": best_vz,
        "qemu_img_convert": best_peer,
        "ratio": best_peer["seconds"] / best_vz["seconds"],
    }


def run(report: dict[str, Any], *, size: int = 4 * GiB, workdir: Path | None = None, repeat: int = 1) -> None:
    """Build the image and its seeds, time both restores of each; figures into ``report['seed']``."""
    wd = Path(tempfile.mkdtemp(prefix="vzrep-bench-seed-")) if workdir is None else workdir
    try:
        image = wd / "source.img"
        lay = build_mixed(image, size)
        rows: dict[str, Any] = {}
        for label, opts in FORMATS.items():
            seed = wd / f"seed-{label}"
            t0 = time.perf_counter()
            subprocess.run([tool("qemu-img"), "convert", *opts, str(image), str(seed)], check=True)
            print(f"  {label} seed made in {time.perf_counter() - t0:.0f} s", flush=True)
            rows[label] = _one(wd, image, seed, label, repeat)
            seed.unlink()
        report["seed"] = {"size": size, "data_share": lay.data / size, "formats": rows}
    finally:
        shutil.rmtree(wd, ignore_errors=True)


def print_table(report: dict[str, Any]) -> None:
    r = report["seed"]
    print(f"seeding a {r['size'] / GiB:.0f} GiB image ({r['data_share']:.0%} random data, rest zeros and holes),"
          " durable, judged by qemu-img compare")  # fmt: skip
    print(f"  {'seed':<16} | {'seed file':>10} | {'vzrep-target seed':>18} | {'qemu-img convert -O raw + sync':>31} |"
          f" {'ratio':>14} | {'RSS vzrep':>9} | {'allocated':>9}")  # fmt: skip
    for label, row in r["formats"].items():
        vz, peer = row["vzrep"], row["qemu_img_convert"]
        print(
            f"  {label:<16} | {row['seed_bytes'] / MiB:>6,.0f} MiB | {vz['seconds']:>16.2f} s |"
            f" {peer['seconds']:>29.2f} s | {row['ratio']:>5.2f}x qemu-img | {vz['rss'] / MiB:>5.0f} MiB |"
            f" {vz['allocated'] / MiB:>5.0f} MiB"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gib", type=float, default=4.0)
    ap.add_argument("--repeat", type=int, default=1, help="runs per side, best kept")
    ap.add_argument("--workdir", type=Path, help="parent for the temporary directory")
    args = ap.parse_args()
    report: dict[str, Any] = {}
    wd = Path(tempfile.mkdtemp(prefix="vzrep-bench-seed-", dir=args.workdir))
    run(report, size=int(args.size_gib * GiB) // MiB * MiB, workdir=wd, repeat=args.repeat)
    print_table(report)


if __name__ == "__main__":
    main()
