"""The crash states a recorded op log allows, and how to lay one out on disk.

The persistence model (the one ALICE assumes for ext4 in its default ``data=ordered`` mode, made
stricter where POSIX allows it):

* a crash can happen after any operation (every prefix of the log);
* metadata operations (create, rename, unlink, link, mkdir, rmdir) reach the disk in the order they
  were made, but any suffix of them not yet made durable by an fsync of the directory they changed may
  be lost;
* data operations (write, truncate, punch) that no fsync of their file has made durable may each be
  lost, independently of the others and of the metadata: this covers every reordering of the
  un-synced writes within a barrier;
* the last write before the crash may be torn: only some of its 512-byte sectors reached the disk.

For one crash point the lost-data subsets are too many to try them all; :func:`crash_states` tries
every subset that loses one pending data op, plus ``samples`` random subsets, and every sector
prefix of a torn last write up to ``torn_limit`` (all of them for the small writes state files do).
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .record import DATA, META, Op

SECTOR = 512


@dataclass
class Model:
    """Files as nodes (bytes) and names (path -> node), and the directories."""

    nodes: dict[str, bytearray] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)

    @classmethod
    def snapshot(cls, root: Path) -> Model:
        m = cls()
        inodes: dict[tuple[int, int], str] = {}
        for dirpath, dirs, files in os.walk(root):
            for d in dirs:
                m.dirs.add(os.path.relpath(os.path.join(dirpath, d), root))
            for f in files:  # hard links: one node, named (as the recorder names it) by its first path
                p = os.path.join(dirpath, f)
                rel = os.path.relpath(p, root)
                st = os.lstat(p)
                node = inodes.setdefault((st.st_dev, st.st_ino), "init:" + rel)
                m.names[rel] = node
                if node not in m.nodes:
                    m.nodes[node] = bytearray(Path(p).read_bytes())
        return m

    def copy(self) -> Model:
        return Model({k: bytearray(v) for k, v in self.nodes.items()}, dict(self.names), set(self.dirs))

    def apply(self, op: Op) -> None:
        k = op.kind
        if k == "create":
            self.names[op.path] = op.node
            self.nodes.setdefault(op.node, bytearray())
        elif k == "mkdir":
            self.dirs.add(op.path)
        elif k == "rmdir":
            self.dirs.discard(op.path)
        elif k == "unlink":
            self.names.pop(op.path, None)
        elif k == "rename":
            if op.path in self.names:
                self.names[op.path2] = self.names.pop(op.path)
            elif op.path in self.dirs:
                self._move_dir(op.path, op.path2)
        elif k == "exchange":
            a, b, tmp = op.path, op.path2, "\0exchange"
            if a in self.names and b in self.names:
                self.names[a], self.names[b] = self.names[b], self.names[a]
            elif a in self.dirs and b in self.dirs:
                self._move_dir(a, tmp)
                self._move_dir(b, a)
                self._move_dir(tmp, b)
        elif k == "link":
            if op.path in self.names:
                self.names[op.path2] = self.names[op.path]
        elif k == "write":
            buf = self.nodes.setdefault(op.node, bytearray())
            data = op.data
            if len(buf) < op.offset:
                buf.extend(bytes(op.offset - len(buf)))
            buf[op.offset : op.offset + len(data)] = data
        elif k == "trunc":
            buf = self.nodes.setdefault(op.node, bytearray())
            if op.size < len(buf):
                del buf[op.size :]
            else:
                buf.extend(bytes(op.size - len(buf)))
        elif k == "punch":
            buf = self.nodes.setdefault(op.node, bytearray())
            end = min(len(buf), op.offset + op.size)
            if end > op.offset:
                buf[op.offset : end] = bytes(end - op.offset)

    def _move_dir(self, src: str, dst: str) -> None:
        """A directory renamed: everything under it moves (over ``dst``, which must be empty)."""
        self._drop_dir(dst)

        def moved(p: str) -> str | None:
            return dst + p[len(src) :] if p == src or p.startswith(src + "/") else None

        self.dirs = {moved(d) or d for d in self.dirs}
        self.names = {(moved(n) or n): node for n, node in self.names.items()}

    def _drop_dir(self, path: str) -> None:
        self.dirs = {d for d in self.dirs if d != path and not d.startswith(path + "/")}
        self.names = {n: node for n, node in self.names.items() if not n.startswith(path + "/")}

    def digest(self) -> str:
        h = hashlib.sha256()
        for d in sorted(self.dirs):
            h.update(b"D" + d.encode() + b"\0")
        for name in sorted(self.names):
            h.update(b"F" + name.encode() + b"\0")
            h.update(hashlib.sha256(self.nodes.get(self.names[name], b"")).digest())
        return h.hexdigest()

    def write_out(self, root: Path) -> None:
        """Lay the state out under ``root`` (sparse: 4 KiB runs of zeros are holes; names of one node
        are hard links, as on the disk)."""
        root.mkdir(parents=True, exist_ok=True)
        made = {"."}
        for d in sorted(self.dirs, key=lambda s: s.count("/")):
            if (os.path.dirname(d) or ".") in made:  # else its parent's creation was lost
                (root / d).mkdir(mode=0o700, exist_ok=True)
                made.add(d)
        written: dict[str, str] = {}
        for name, node in sorted(self.names.items()):
            if (os.path.dirname(name) or ".") not in made:
                continue  # a name in a directory whose creation was lost: never reachable
            if node in written:
                os.link(root / written[node], root / name)
                continue
            written[node] = name
            data = self.nodes.get(node, bytearray())
            fd = os.open(root / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                zero = bytes(4096)
                for pos in range(0, len(data), 4096):
                    chunk = data[pos : pos + 4096]
                    if chunk != zero[: len(chunk)]:
                        os.pwrite(fd, chunk, pos)
                os.ftruncate(fd, len(data))
            finally:
                os.close(fd)


@dataclass(frozen=True)
class CrashState:
    """Ops ``[0, point)`` were issued; ``lost`` of them never reached the disk; ``torn`` tears op
    ``point - 1`` (a write) to the sectors it names."""

    point: int
    lost: frozenset[int] = frozenset()
    torn: tuple[int, ...] | None = None
    how: str = "prefix"

    def build(self, start: Model, ops: list[Op]) -> Model:
        m = start.copy()
        for i in range(self.point):
            if i in self.lost:
                continue
            op = ops[i]
            if self.torn is not None and i == self.point - 1:
                torn: list[int | None] = [None] * len(op.data)
                for s in self.torn:
                    for j in range(s * SECTOR, min(len(op.data), (s + 1) * SECTOR)):
                        torn[j] = op.data[j]
                _apply_torn(m, op, torn)
            else:
                m.apply(op)
        return m


def _apply_torn(m: Model, op: Op, torn: list[int | None]) -> None:
    buf = m.nodes.setdefault(op.node, bytearray())
    if len(buf) < op.offset + len(op.data) and torn and torn[-1] is not None:
        buf.extend(bytes(op.offset + len(op.data) - len(buf)))  # the last sector made it: the file grew
    for j, b in enumerate(torn):
        if b is not None:
            if op.offset + j >= len(buf):
                buf.extend(bytes(op.offset + j + 1 - len(buf)))
            buf[op.offset + j] = b


def pending(ops: list[Op], point: int, *, ordered: bool = True) -> tuple[list[int], list[int]]:
    """The metadata ops and the data ops issued before ``point`` that no barrier has made durable yet.

    ``ordered``: metadata reaches the disk in order, so a durable one makes all before it durable."""
    synced_nodes: set[str] = set()
    synced_dirs: set[str] = set()
    meta: list[int] = []
    data: list[int] = []
    meta_durable = False
    for i in range(point - 1, -1, -1):  # walk back: a barrier covers the ops before it
        op = ops[i]
        if op.kind == "fsync":
            synced_nodes.add(op.node)
        elif op.kind == "dirsync":
            synced_dirs.add(op.path)
        elif op.kind in META:
            covered = op.dirs() <= synced_dirs
            if ordered and covered:
                meta_durable = True  # in-order metadata: this one and all before it are durable
            if not meta_durable and not covered:
                meta.append(i)
        elif op.kind in DATA and op.node not in synced_nodes:
            data.append(i)
    return sorted(meta), sorted(data)


def crash_states(
    ops: list[Op],
    *,
    samples: int = 4,
    torn_limit: int = 8,
    seed: int = 0,
    points: list[int] | None = None,
    metadata: str = "ordered",
) -> Iterator[CrashState]:
    """Every crash state of the model above (sampled where it explodes; module docstring).

    ``metadata="any"``: stricter than ext4, as POSIX allows: un-synced metadata ops may also be lost
    each on its own (a later rename kept while an earlier create is lost), like data ops."""
    rng = random.Random(seed)
    for point in points if points is not None else range(len(ops) + 1):
        yield CrashState(point)
        meta, data = pending(ops, point, ordered=metadata == "ordered")
        for k in range(len(meta)):  # a suffix of the pending metadata is lost
            yield CrashState(point, frozenset(meta[k:]), how="metadata suffix lost")
        if metadata == "any":
            for i in meta:
                yield CrashState(point, frozenset({i}), how="one unsynced metadata op lost")
            for _ in range(samples if meta else 0):
                lost = {i for i in meta + data if rng.random() < 0.5}
                yield CrashState(point, frozenset(lost), how="random unsynced ops lost (metadata too)")
        for i in data:
            yield CrashState(point, frozenset({i}), how="one unsynced write lost")
        if data:
            yield CrashState(point, frozenset(data) | frozenset(meta), how="only the durable ops")
            for _ in range(samples):
                lost = {i for i in data if rng.random() < 0.5}
                cut = rng.randint(0, len(meta))
                yield CrashState(
                    point, frozenset(lost) | frozenset(meta[cut:]), how="random unsynced subset lost"
                )
        last = ops[point - 1] if point > 0 else None
        if torn_limit > 0 and last is not None and last.kind == "write" and len(last.data) > SECTOR:
            sectors = -(-len(last.data) // SECTOR)
            cuts = list(range(1, sectors))
            if len(cuts) > torn_limit:
                cuts = sorted(rng.sample(cuts, torn_limit))
            for c in cuts:
                yield CrashState(point, torn=tuple(range(c)), how="torn last write (first sectors)")
            picked = tuple(s for s in range(sectors) if rng.random() < 0.5)
            if 0 < len(picked) < sectors:
                yield CrashState(point, torn=picked, how="torn last write (random sectors)")
