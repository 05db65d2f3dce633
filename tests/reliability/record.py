"""Record what the target does to one directory tree, as logical file-system operations.

Files are named by *node* (an id given when the file is created, or ``init:<path>`` for a file that
was there when recording started), not by path, so a write to a file that is later renamed (an undo
log becoming a restore point's increment) stays attached to the right bytes, as an inode would.

Operations (``Op.kind``):

* metadata: ``create`` (path, node), ``mkdir``, ``rmdir``, ``unlink`` (path), ``rename``/``link``
  (path -> path2; a rename may move a directory), ``exchange`` (path <-> path2, files or
  directories); made durable by a ``dirsync`` of every directory they change;
* data: ``write`` (node, offset, data), ``trunc`` (node, size), ``punch`` (node, offset, size); made
  durable by a ``fsync`` of their node (fdatasync counts as fsync: every size change here is one a
  later read needs, which fdatasync also persists). Bytes another process wrote (``fsio.wrote``) are
  read back and recorded as writes, in pieces of ``EXTERNAL_PIECE`` (holes are left out).

Only paths under the recorded root are recorded; everything else passes through untouched.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vzcommon import fsio
from vzcommon.sparse import data_segments

META = frozenset({"create", "mkdir", "rmdir", "unlink", "rename", "link", "exchange"})
#: bytes per write op recorded for what another process wrote (each may be lost or torn on its own)
EXTERNAL_PIECE = 256 * 1024
DATA = frozenset({"write", "trunc", "punch"})
SYNC = frozenset({"fsync", "dirsync"})


@dataclass(frozen=True)
class Op:
    kind: str
    path: str = ""  # relative to the root (metadata ops, dirsync)
    path2: str = ""  # rename / link destination
    node: str = ""  # data ops, create, fsync
    offset: int = 0
    size: int = 0  # trunc: the new size; punch: the length
    data: bytes = b""

    def dirs(self) -> set[str]:
        """The directories whose entries a metadata op changes (a link: only the new name's)."""
        if self.kind == "link":
            return {os.path.dirname(self.path2) or "."}
        out = {os.path.dirname(self.path) or "."}  # the root is "." (as a dirsync of it names it)
        if self.path2:
            out.add(os.path.dirname(self.path2) or ".")
        return out

    def __repr__(self) -> str:
        extra = f" {len(self.data)}B" if self.data else ""
        where = f" {self.path}" + (f" -> {self.path2}" if self.path2 else "")
        return f"<{self.kind}{where if self.path else ''} {self.node} @{self.offset} size={self.size}{extra}>"


class Recorder:
    """Wraps the calls of ``vzcommon.fsio`` while installed; ``ops`` is the log, in call order."""

    def __init__(self, root: Path) -> None:
        self.root = os.path.abspath(root)
        self.ops: list[Op] = []
        self._lock = threading.Lock()
        self._ino: dict[tuple[int, int], str] = {}  # (st_dev, st_ino) -> node
        self._fds: dict[int, tuple[str, bool]] = {}  # fd -> (node, O_APPEND)
        self._dir_fds: dict[int, str] = {}  # fd -> directory path (relative)
        self._created = 0
        for dirpath, _dirs, files in os.walk(self.root):
            for f in files:
                p = os.path.join(dirpath, f)
                st = os.lstat(p)
                if stat.S_ISREG(st.st_mode):  # a hard link: the node of its first path (``Model.snapshot``)
                    self._ino.setdefault((st.st_dev, st.st_ino), "init:" + os.path.relpath(p, self.root))

    def _rel(self, path: Any) -> str | None:
        p = os.path.abspath(os.fspath(path))
        if p == self.root or p.startswith(self.root + os.sep):
            return os.path.relpath(p, self.root)
        return None

    def _emit(self, op: Op) -> None:
        with self._lock:
            self.ops.append(op)

    # -- the wrappers --------------------------------------------------------------------------

    def open(self, path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
        real = fsio.original("open")
        rel = self._rel(path)
        if rel is None:
            return int(real(path, flags, mode, **kw))
        existed = os.path.lexists(path)
        fd = int(real(path, flags, mode, **kw))
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            self._dir_fds[fd] = rel
            return fd
        key = (st.st_dev, st.st_ino)
        if not existed:
            with self._lock:
                self._created += 1
                node = f"n{self._created}:{rel}"
            self._ino[key] = node
            self._emit(Op("create", path=rel, node=node))
        else:
            node = self._ino.setdefault(key, f"unknown:{rel}")
            if flags & os.O_TRUNC and flags & (os.O_WRONLY | os.O_RDWR):
                self._emit(Op("trunc", node=node, size=0))
        self._fds[fd] = (node, bool(flags & os.O_APPEND))
        return fd

    def close(self, fd: int) -> None:
        self._fds.pop(fd, None)
        self._dir_fds.pop(fd, None)
        fsio.original("close")(fd)

    def write(self, fd: int, data: Any) -> int:
        tracked = self._fds.get(fd)
        if tracked is None:
            return int(fsio.original("write")(fd, data))
        node, append = tracked
        offset = os.fstat(fd).st_size if append else os.lseek(fd, 0, os.SEEK_CUR)
        n = int(fsio.original("write")(fd, data))
        self._emit(Op("write", node=node, offset=offset, data=bytes(memoryview(data)[:n])))
        return n

    def pwrite(self, fd: int, data: Any, offset: int) -> int:
        n = int(fsio.original("pwrite")(fd, data, offset))
        tracked = self._fds.get(fd)
        if tracked is not None:
            self._emit(Op("write", node=tracked[0], offset=offset, data=bytes(memoryview(data)[:n])))
        return n

    def ftruncate(self, fd: int, size: int) -> None:
        fsio.original("ftruncate")(fd, size)
        tracked = self._fds.get(fd)
        if tracked is not None:
            self._emit(Op("trunc", node=tracked[0], size=size))

    def copy_file_range(self, src: int, dst: int, count: int, offset_src: int, offset_dst: int) -> int:
        n = int(fsio.original("copy_file_range")(src, dst, count, offset_src, offset_dst))
        tracked = self._fds.get(dst)
        if tracked is not None and n > 0:
            self._emit(Op("write", node=tracked[0], offset=offset_dst, data=os.pread(src, n, offset_src)))
        return n

    def punch_hole(self, fd: int, offset: int, length: int) -> None:
        fsio.original("punch_hole")(fd, offset, length)
        tracked = self._fds.get(fd)
        if tracked is not None and length > 0:
            self._emit(Op("punch", node=tracked[0], offset=offset, size=length))

    def _sync(self, name: str, fd: int) -> None:
        fsio.original(name)(fd)
        if fd in self._dir_fds:
            self._emit(Op("dirsync", path=self._dir_fds[fd]))
        elif fd in self._fds:
            self._emit(Op("fsync", node=self._fds[fd][0]))

    def fsync(self, fd: int) -> None:
        self._sync("fsync", fd)

    def fdatasync(self, fd: int) -> None:
        self._sync("fdatasync", fd)

    def replace(self, src: Any, dst: Any) -> None:
        fsio.original("replace")(src, dst)
        a, b = self._rel(src), self._rel(dst)
        if a is not None and b is not None:
            self._emit(Op("rename", path=a, path2=b))

    def exchange(self, a: Any, b: Any) -> None:
        fsio.original("exchange")(a, b)
        ra, rb = self._rel(a), self._rel(b)
        if ra is not None and rb is not None:
            self._emit(Op("exchange", path=ra, path2=rb))

    def wrote(self, fd: int, offset: int, length: int) -> None:
        tracked = self._fds.get(fd)
        if tracked is None:
            return
        for off, n in data_segments(fd, offset, offset + length):
            for pos in range(off, off + n, EXTERNAL_PIECE):
                data = os.pread(fd, min(EXTERNAL_PIECE, off + n - pos), pos)
                self._emit(Op("write", node=tracked[0], offset=pos, data=data))

    def link(self, src: Any, dst: Any, **kw: Any) -> None:
        fsio.original("link")(src, dst, **kw)
        a, b = self._rel(src), self._rel(dst)
        if a is not None and b is not None:
            self._emit(Op("link", path=a, path2=b))

    def _name_op(self, name: str, path: Any, *args: Any) -> None:
        fsio.original(name)(path, *args)
        rel = self._rel(path)
        if rel is not None:
            self._emit(Op(name, path=rel))

    def unlink(self, path: Any) -> None:
        self._name_op("unlink", path)

    def mkdir(self, path: Any, mode: int = 0o777) -> None:
        self._name_op("mkdir", path, mode)

    def rmdir(self, path: Any) -> None:
        self._name_op("rmdir", path)

    def wrappers(self) -> dict[str, Callable[..., Any]]:
        return {name: getattr(self, name) for name in fsio.NAMES}


@contextmanager
def recording(root: Path) -> Iterator[Recorder]:
    """Record every seam call under ``root`` for the duration of the block."""
    rec = Recorder(root)
    uninstall = fsio.install(rec.wrappers())
    try:
        yield rec
    finally:
        uninstall()
