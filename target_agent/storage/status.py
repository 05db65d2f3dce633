"""What ``vzrep-target status`` and the console show of a replica; read-only (nothing is created)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vzcommon.errors import IntegrityError
from vzcommon.vzmap import MapFile

from . import points
from .failover import read_state
from .lock import VmLock
from .paths import ReplicaPaths
from .transaction import _read_status, pending_disks, read_journal


def vm_status(vdir: Path) -> dict[str, Any]:
    """What ``vzrep-target status`` shows for one VM (read-only)."""
    status = _read_status(vdir)
    journal = read_journal(vdir)
    disks = {}
    for flat in sorted(vdir.glob("*-flat.vmdk")):
        name = flat.name[: -len("-flat.vmdk")]
        st = flat.stat()
        disks[name] = {
            "size": st.st_size,
            "allocated": st.st_blocks * 512,
            "has_map": ReplicaPaths(vdir, name).map.exists(),
            "backing": "file",
        }
    # Device-backed replicas (vSphere: the bytes live in the replica VM's disk) have only a map here.
    for vzmap in sorted(vdir.glob("*-flat.vmdk.vzmap")):
        name = vzmap.name[: -len("-flat.vmdk.vzmap")]
        if name in disks:
            continue
        try:
            with MapFile.open(vzmap, verify=False) as m:
                size = m.header.disk_size
        except (IntegrityError, OSError):
            size = 0
        disks[name] = {"size": size, "allocated": None, "has_map": True, "backing": "vSphere replica disk"}
    pending = pending_disks(vdir)
    try:
        kept = [p.id for p in points.load(vdir)]
        failover = read_state(vdir)
    except IntegrityError as exc:
        kept, failover = [], {"state": "unknown", "error": str(exc)}
    return {
        "vm": vdir.name,
        "disks": disks,
        "last_pass": status.get("last_pass"),
        "last_failure": status.get("last_failure"),
        "last_verify": status.get("last_verify"),
        "pending_rollback": bool(journal) or bool(pending),
        "pass_running": VmLock.is_held(vdir),
        "restore_points": kept,
        "failover": failover,
    }
