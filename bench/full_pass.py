"""Scenario (a): a full pass of the mixed image, vzrep against ``dd bs=1M | ssh -c aes256-gcm 'cat > file'``.

Both read the same warm page cache (the image is read once before each run) and start with no
dirty pages to write back. Throughput is disk bytes replicated per second, end to end (reading,
zero detection, hashing, encryption, writing on the far side). vzrep's target makes the replica
durable at commit (fsync); ``cat > file`` does not, which favours OpenSSH.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .context import Context, best, prepare
from .peers import dd_ssh


def openssh(ctx: Context, image: Path) -> dict[str, Any]:
    dest = ctx.work / "openssh-copy.img"
    runs = []
    for _ in range(ctx.repeat):
        prepare(image)
        runs.append(dd_ssh(ctx.sshd, image, dest))
        dest.unlink(missing_ok=True)
    return best(runs)


def vzrep(ctx: Context, image: Path, vm: str, block_size: str = "64K", repeat: int = 1, **kw: Any) -> dict[str, Any]:
    """Full passes into an empty replica (the replica is kept after the last run)."""
    runs = []
    for r in range(repeat):
        if r:
            ctx.forget(vm)
        runs.append(ctx.vzrep(vm, image, block_size, **kw))
    return best(runs)


def compare(vz: dict[str, Any], peer: dict[str, Any]) -> dict[str, Any]:
    mbps = lambda r: r["disk_bytes"] / r["seconds"] / 1e6  # noqa: E731
    return {
        "vzrep_mb_s": mbps(vz),
        "openssh_mb_s": mbps(peer),
        "throughput_ratio": mbps(vz) / mbps(peer),
        "wire_ratio": (vz["app_bytes_sent"] + vz["app_bytes_received"])
        / (peer["app_bytes_sent"] + peer["app_bytes_received"]),
    }
