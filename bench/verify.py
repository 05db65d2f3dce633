"""Scenario (e): a clean verify of the whole image, against ``rsync --checksum --dry-run`` over OpenSSH.

Both read every byte on both sides and carry only checksums: ``vzrep-source verify`` compares every
block's hash with the replica's bytes on disk (the target re-hashes them; the link carries 32 bytes
a block), rsync compares whole-file checksums. The replica is first brought equal to the image by an
ordinary pass (not measured), so the verify finds nothing, as on a healthy day.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from .context import Context, prepare
from .peers import VzrepTarget, rsync, run_measured, tool


def verify(ctx: Context, image: Path, vm: str) -> dict[str, Any]:
    # The failback scenario wrote into the replica's flat file behind its map's back (as a VM running
    # at the DR site would), so a pass that trusts the map leaves those blocks: a repair (not
    # measured) puts the source's bytes back, found by the replica's bytes, not its map.
    target = VzrepTarget(ctx.data_dir, ctx.keys, ctx.work / "verify-target.log")
    target.port = ctx._port
    target.start()
    try:
        subprocess.run([*_verify_cmd(ctx, target, image, vm), "--repair"], check=True, capture_output=True)
    finally:
        target.stop()
    peer_copy = ctx.work / "verify-rsync.img"
    subprocess.run([tool("cp"), "--sparse=always", str(image), str(peer_copy)], check=True)
    try:
        prepare(image)
        peer = rsync(ctx.sshd, image, peer_copy, ("--checksum", "--dry-run"))
    finally:
        peer_copy.unlink(missing_ok=True)
    target = VzrepTarget(ctx.data_dir, ctx.keys, ctx.work / "verify-target.log")
    target.port = ctx._port
    prepare(image)
    target.start()
    try:
        done = run_measured(_verify_cmd(ctx, target, image, vm))
        rss_target = target.peak_rss()
    finally:
        target.stop()
    if done.returncode:
        raise RuntimeError(f"vzrep verify failed ({done.returncode}): {done.stderr.decode(errors='replace')[-1500:]}")
    report = json.loads(done.stdout)
    differing = sum(len(d["differing"]) for d in report["disks"])
    if differing:
        raise RuntimeError(f"the clean verify found {differing} differing range(s): the benchmark's replica is wrong")
    vz = {
        "seconds": done.seconds,
        "disk_bytes": image.stat().st_size,
        "app_bytes_sent": report["wire_bytes_sent"],
        "app_bytes_received": report["wire_bytes_received"],
        "rss_source": done.max_rss,
        "rss_target": rss_target,
    }
    vz_bytes = vz["app_bytes_sent"] + vz["app_bytes_received"]
    peer_bytes = peer["app_bytes_sent"] + peer["app_bytes_received"]
    return {
        "vzrep": vz,
        "rsync": peer,
        "ratio": {"speedup": peer["seconds"] / vz["seconds"], "vzrep_wire": vz_bytes, "rsync_wire": peer_bytes},
    }


def _verify_cmd(ctx: Context, target: VzrepTarget, image: Path, vm: str) -> list[str]:
    return [
        sys.executable, "-m", "bench.agent", "source", "verify",
        "--target", f"127.0.0.1:{target.port}", "--identity", str(ctx.keys.client_key),
        "--known-hosts", str(ctx.keys.known_hosts(target.port)), "--vm", vm, "--disk", str(image),
        "--json", "--no-progress", "--state-dir", str(ctx.state_dir),
    ]  # fmt: skip
