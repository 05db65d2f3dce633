"""Restore points of a file replica: reverse increments kept from the undo logs of committed passes.

A pass's ``.vzundo`` holds the original bytes of every block it overwrote (or "was a hole"), so
after the pass commits it is exactly the way back from the new state to the one before: a reverse
increment, kept at no extra read. The newest point is always the live replica; point *k* is the live
replica with the increments of every newer point applied, newest first (``export``).

Files in ``DATA_DIR/<vm>/points/``::

    index                 the points, oldest first (a record: magic, version, checksum)
    <id>/<disk>.vzundo    the increment of point <id>: from it back to the point before it

Only points after the oldest kept one have an increment directory (there is nothing to go back to
from the oldest). Each increment's size and SHA-256 are in the index, so a truncated or altered
increment is refused before anything is applied, never half-used.

Retention (``--restore-points N``) keeps the newest N points; the commit (``transaction``) writes the
new index and moves or removes increments in an order that recovery can finish from the journal:
1. the pass's undo logs are renamed into ``points/<id>/`` (or removed when N is 1); 2. the new index
is written atomically; 3. directories the index no longer names are removed. Each step is
idempotent; :func:`finish` runs steps 2-3 (and 1 for whatever is left) again after a crash.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from protocol.messages import valid_name
from vzcommon import fsio
from vzcommon.durable import fsync_dir, unlink_durable
from vzcommon.errors import InputError, IntegrityError
from vzcommon.records import read_record, write_record


def sha256_of(path: Path) -> str:
    """The file's SHA-256, hex: how an increment is checked before it is applied (and a mapped copy's
    descriptor recognised)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


POINTS = "points"
INDEX = "index"
INDEX_MAGIC = "vzrep-restore-points"
DEFAULT_RETENTION = 7


@dataclass(frozen=True)
class Increment:
    """One disk's reverse increment kept by a point: back to the point before it."""

    bytes: int
    sha256: str
    old_size: int  # the disk's size at the point before (0 when this pass created the disk)
    created: bool  # the disk did not exist at the point before


@dataclass(frozen=True)
class Point:
    id: str  # the generation the pass committed
    time: str  # when it committed (UTC, ISO 8601)
    pass_id: str
    disks: dict[str, int]  # disk name -> size at this point
    change_ids: dict[str, str] = field(default_factory=dict)  # what the source stored (vSphere changeId)
    job: str = ""  # the job that made it ("" for a pass run without a job)
    origin: str = "pass"  # pass | seed | mapped | upgrade
    increments: dict[str, Increment] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Point:
        try:
            incs = {k: Increment(**v) for k, v in d.get("increments", {}).items()}
            return cls(
                id=str(d["id"]),
                time=str(d["time"]),
                pass_id=str(d.get("pass_id", "")),
                disks={str(k): int(v) for k, v in d["disks"].items()},
                change_ids={str(k): str(v) for k, v in d.get("change_ids", {}).items()},
                job=str(d.get("job", "")),
                origin=str(d.get("origin", "pass")),
                increments=incs,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"restore point index: malformed point ({exc})") from None

    @property
    def held_bytes(self) -> int:
        """What keeping the point before this one costs: the size of this point's increments."""
        return sum(i.bytes for i in self.increments.values())


def points_dir(vdir: Path) -> Path:
    return vdir / POINTS


def increment_path(vdir: Path, point_id: str, disk: str) -> Path:
    return points_dir(vdir) / point_id / f"{disk}.vzundo"


def load(vdir: Path) -> list[Point]:
    """The VM's points, oldest first; [] for a replica that has none yet."""
    path = points_dir(vdir) / INDEX
    try:
        body = read_record(path, INDEX_MAGIC)
    except FileNotFoundError:
        return []
    raw = body.get("points")
    if not isinstance(raw, list):
        raise IntegrityError(f"{path}: no list of points")
    return [Point.from_json(p) for p in raw]


def index_body(points: list[Point]) -> dict[str, Any]:
    return {"points": [p.to_json() for p in points]}


def retain(points: list[Point], keep: int) -> list[Point]:
    """The newest ``keep`` points; the oldest kept one loses its increments (nothing is before it)."""
    if keep < 1:
        raise InputError(f"--restore-points must be at least 1, not {keep}")
    kept = points[-keep:]
    if kept and kept[0].increments:
        kept[0] = Point(**{**kept[0].__dict__, "increments": {}})
    return kept


def write_index(vdir: Path, points: list[Point]) -> None:
    d = points_dir(vdir)
    if not d.exists():
        fsio.mkdir(d, 0o700)
        fsync_dir(vdir)
    write_record(d / INDEX, INDEX_MAGIC, index_body(points))


def keep_increment(vdir: Path, point_id: str, disk: str, undo: Path) -> None:
    """Step 1 for one disk: the committed pass's undo log becomes the point's increment (a rename)."""
    target = increment_path(vdir, point_id, disk)
    if not undo.exists():
        return  # already moved (recovery runs this again)
    if not target.parent.exists():
        if not points_dir(vdir).exists():
            fsio.mkdir(points_dir(vdir), 0o700)
            fsync_dir(vdir)
        fsio.mkdir(target.parent, 0o700)
        fsync_dir(points_dir(vdir))
    fsio.replace(undo, target)
    fsync_dir(target.parent)
    fsync_dir(undo.parent)


def prune(vdir: Path, points: list[Point]) -> list[str]:
    """Step 3: remove increment directories (and leftovers) the index does not name. Idempotent."""
    d = points_dir(vdir)
    if not d.is_dir():
        return []
    wanted = {p.id for p in points if p.increments}
    removed = []
    for entry in sorted(d.iterdir()):
        if entry.name == INDEX or entry.name in wanted:
            continue
        if entry.is_dir():
            unlink_durable(*entry.iterdir())
            with contextlib.suppress(FileNotFoundError):
                fsio.rmdir(entry)
            removed.append(entry.name)
        elif entry.name.startswith("."):  # the index's temporary file, from a crash mid-write
            unlink_durable(entry)
    if removed:
        fsync_dir(d)
    return removed


def find(points: list[Point], point_id: str, vm: str) -> int:
    """The position of ``point_id``; a clear error for an id that is not (or no longer) kept."""
    for i, p in enumerate(points):
        if p.id == point_id:
            return i
    kept = ", ".join(p.id for p in points) or "none"
    raise InputError(
        f"VM {vm!r} has no restore point {point_id!r} (it may be older than the retention kept);"
        f" its points: {kept}"
    )


def check_ids(points: list[Point]) -> None:
    for p in points:
        if not valid_name(p.id) or any(not valid_name(d) for d in p.disks):
            raise IntegrityError(f"restore point index: invalid id or disk name in point {p.id!r}")
