"""The source's cache of each target map, so an unchanged map never crosses the link twice.

``STATE_DIR/maps/<target>/<vm>/<disk>.vzmap`` holds the map as of the last pass that committed,
in the same format as the target's ``.vzmap``. During a pass a ``.next`` copy is updated with every
block sent; when the target confirms the commit, it is renamed over the cached map.
"""

from __future__ import annotations

import re
from pathlib import Path

from vzcommon.durable import replace_durable
from vzcommon.errors import IntegrityError
from vzcommon.vzmap import MapBuilder, MapFile


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", part)


def target_label(host: str, port: int) -> str:
    """How a target is named in the cache (and in reports)."""
    return f"{host}:{port}"


class MapCache:
    def __init__(self, state_dir: Path, target: str, vm: str) -> None:
        self.dir = state_dir / "maps" / _safe(target) / _safe(vm)

    def path(self, disk: str) -> Path:
        return self.dir / f"{_safe(disk)}.vzmap"

    def cached(self, disk: str, block_size: int, size: int) -> MapFile | None:
        """The verified cached map for a disk, if it fits this pass; a bad cache is just ignored."""
        p = self.path(disk)
        if not p.exists():
            return None
        try:
            m = MapFile.open(p)
        except (IntegrityError, OSError):
            p.unlink(missing_ok=True)
            return None
        if m.header.block_size != block_size or m.header.disk_size > size:
            m.close()
            return None
        return m

    def builder(self, disk: str, block_size: int, size: int, base: MapFile | None) -> MapBuilder:
        self.dir.mkdir(parents=True, exist_ok=True)
        return MapBuilder(self.path(disk).with_suffix(".vzmap.next"), block_size, size, base)

    def commit(self, disk: str, builder: MapBuilder, generation: str) -> None:
        builder.finish(generation=generation)
        replace_durable(builder.path, self.path(disk))

    def forget(self, disk: str) -> None:
        self.path(disk).unlink(missing_ok=True)
