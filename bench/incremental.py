"""Scenario (b): an incremental pass after 2 % of the 64 KiB blocks changed, vzrep against rsync.

rsync runs as ``rsync --inplace --no-whole-file -e 'ssh -c aes256-gcm@openssh.com'`` onto a copy of
the previous version; vzrep onto the replica of the previous version (its map cached on the
source). Bytes on the wire are application bytes for both: rsync's ``--stats`` totals and vzrep's
``wire_bytes_sent/received`` (SSH-layer bytes for rsync are recorded too). Repeats restore the
previous version first, outside the timing: rsync's copy by writing the old blocks back, vzrep's
replica by an unmeasured pass of the old image.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from .context import Context, best, prepare
from .images import ChangeSet
from .peers import rsync, tool


def baseline_copy(ctx: Context, image: Path) -> Path:
    """rsync's destination: the previous version of the image (call before the change is applied)."""
    dest = ctx.work / "rsync-copy.img"
    subprocess.run([tool("cp"), "--sparse=always", str(image), str(dest)], check=True)
    # An hour older than the image: the change may land within the same second as this copy, and
    # rsync's quick check (size and whole-second mtime) would then skip the file.
    mtime = image.stat().st_mtime - 3600
    os.utime(dest, (mtime, mtime))
    return dest


def rsync_runs(ctx: Context, image: Path, dest: Path, changes: ChangeSet) -> dict[str, Any]:
    runs = []
    for r in range(ctx.repeat):
        if r:
            changes.restore(dest)
        prepare(image)
        runs.append(rsync(ctx.sshd, image, dest))
    return best(runs)


def vzrep(
    ctx: Context, image: Path, vm: str, changes: ChangeSet, block_size: str = "64K", repeat: int = 1
) -> dict[str, Any]:
    """Incremental passes; the image must hold the changed version and the replica the previous one."""
    runs = [ctx.vzrep(vm, image, block_size)]
    for _ in range(1, repeat):
        changes.undo()
        ctx.vzrep(vm, image, block_size)  # replica back to the previous version (not measured)
        changes.apply()
        runs.append(ctx.vzrep(vm, image, block_size))
    return best(runs)


def compare(vz: dict[str, Any], peer: dict[str, Any]) -> dict[str, Any]:
    vz_bytes = vz["app_bytes_sent"] + vz["app_bytes_received"]
    peer_bytes = peer["app_bytes_sent"] + peer["app_bytes_received"]
    return {
        "speedup": peer["seconds"] / vz["seconds"],
        "wire_ratio": vz_bytes / peer_bytes,
        "vzrep_wire": vz_bytes,
        "rsync_wire": peer_bytes,
    }
