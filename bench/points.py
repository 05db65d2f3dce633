"""Scenario (d): restore points and the way back, on the replica that (b) left behind.

* **Export** of the point before (b)'s last pass (the image's previous version) as a thin
  monolithicFlat VMDK, against ``qemu-img convert -O vmdk -o subformat=monolithicFlat`` of that same
  version from a raw copy: both write the same bytes in the same format; vzrep rebuilds them from the
  live replica and its reverse increments.
* **Failback** after 2 % of the blocks changed on the replica (the failed-over VM's writes) onto a
  copy of the original image (the previous version): a vzrep pass from the replica to a target that
  writes into the original in place (``serve --map``), against rsync over OpenSSH onto another copy.
  Both sides hash what they have; only differences cross.

Each result is checked with ``qemu-img compare`` outside the timing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from .context import Context, prepare
from .images import ChangeSet
from .peers import VzrepTarget, rsync, run_measured, tool, vzrep_pass


def _compare(a: Path, b: Path) -> None:
    res = subprocess.run([tool("qemu-img"), "compare", str(a), str(b)], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"qemu-img compare {a} {b}: {res.stdout}{res.stderr}")


def _points(ctx: Context, vm: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "target_agent.cli", "points", "--data-dir", str(ctx.data_dir), "--vm", vm, "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [p["id"] for p in json.loads(out.stdout)["points"]]


def export(ctx: Context, image: Path, vm: str) -> dict[str, Any]:
    """``image`` holds the previous version, the replica's newest point the changed one."""
    point = _points(ctx, vm)[1]  # the second-newest: the previous version
    out = ctx.work / "export-vzrep"
    prepare(ctx.data_dir / vm / f"{image.stem}-flat.vmdk")
    vz = run_measured(
        [sys.executable, "-m", "target_agent.cli", "export", "--data-dir", str(ctx.data_dir), "--vm", vm,
         "--point", point, "--to", str(out)]
    )  # fmt: skip
    if vz.returncode:
        raise RuntimeError(f"vzrep export failed: {vz.stderr.decode(errors='replace')[-800:]}")
    peer_out = ctx.work / "export-qemu.vmdk"
    prepare(image)
    # then `sync` of its output: qemu-img does not make what it wrote durable, vzrep's export does
    flat = peer_out.with_name("export-qemu-flat.vmdk")
    convert = [
        tool("qemu-img"),
        "convert",
        "-O",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        str(image),
        str(peer_out),
    ]
    peer = run_measured(["sh", "-c", f'{" ".join(convert)} && {tool("sync")} "{flat}"'])
    if peer.returncode:
        raise RuntimeError(f"qemu-img convert failed: {peer.stderr.decode(errors='replace')[-800:]}")
    _compare(image, out / f"{image.stem}.vmdk")
    _compare(image, peer_out)
    shutil.rmtree(out)
    peer_out.unlink()
    flat.unlink(missing_ok=True)
    return {
        "vzrep": {"seconds": vz.seconds, "rss": vz.max_rss},
        "qemu_img_convert": {"seconds": peer.seconds, "rss": peer.max_rss},
        "ratio": peer.seconds / vz.seconds,
    }


def failback(ctx: Context, image: Path, vm: str) -> dict[str, Any]:
    """The replica changed by 2 % (the failed-over VM), sent back onto copies of ``image``."""
    replica_flat = ctx.data_dir / vm / f"{image.stem}-flat.vmdk"
    writes = ChangeSet(replica_flat, seed=7)
    n = writes.apply()
    original = ctx.work / "original.img"
    peer_copy = ctx.work / "original-rsync.img"
    for dest in (original, peer_copy):
        subprocess.run([tool("cp"), "--sparse=always", str(image), str(dest)], check=True)
    # older than the replica by an hour: rsync's quick check (size and whole-second mtime) must not skip it
    mtime = replica_flat.stat().st_mtime - 3600
    os.utime(peer_copy, (mtime, mtime))
    try:
        prepare(replica_flat)
        peer = rsync(ctx.sshd, replica_flat, peer_copy)
        home = VzrepTarget(ctx.work / "failback-data", ctx.keys, ctx.work / "failback-target.log")
        home.extra = ["--map", f"{vm}/{image.stem}={original}"]
        home.start()
        try:
            prepare(replica_flat)
            vz = vzrep_pass(home, vm, ctx.data_dir / vm / f"{image.stem}.vmdk", ctx.work / "failback-state")
        finally:
            home.stop()
        _compare(replica_flat, original)
        _compare(replica_flat, peer_copy)
    finally:
        original.unlink(missing_ok=True)
        peer_copy.unlink(missing_ok=True)
    vz_bytes = vz["app_bytes_sent"] + vz["app_bytes_received"]
    peer_bytes = peer["app_bytes_sent"] + peer["app_bytes_received"]
    return {
        "changed_blocks": n,
        "vzrep": vz,
        "rsync": peer,
        "ratio": {"speedup": peer["seconds"] / vz["seconds"], "wire_ratio": vz_bytes / peer_bytes,
                  "vzrep_wire": vz_bytes, "rsync_wire": peer_bytes},
    }  # fmt: skip
