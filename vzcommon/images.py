"""A disk image of any format, as one virtual disk: size, where the data is, positioned reads.

Both agents read images: the target restores seeds (``target_agent.storage.seed``), the source
replicates images that are not flat (``source_agent.disks.qemu``). A raw file is read directly
(``pread``, holes found with ``SEEK_DATA``); everything else goes through qemu (``vzcommon.qemu``):
inspected and checked first, then read over NBD from a private qemu-nbd, one connection per thread.

An OVA is a tar: ``web.ova`` (one disk in it) or ``web.ova/disk1.vmdk`` (a member by name) is read in
place, qemu opening the member as a byte range of the tar, nothing extracted.
"""

from __future__ import annotations

import os
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

from .errors import ImageError
from .nbd import NbdClient
from .qemu import ImageInfo, NbdServer, allocated, check, inspect
from .sparse import data_segments

DISK_SUFFIXES = (".vmdk", ".qcow2", ".vhdx", ".vhd", ".img", ".raw")


def _ova_member(path: Path) -> tuple[Path, tarfile.TarInfo] | None:
    """``(ova, member)`` when ``path`` is an OVA or names a member inside one; None for a plain file."""
    if path.is_file():
        if path.suffix.lower() != ".ova" and not (path.suffix.lower() == ".tar"):
            return None
        ova, wanted = path, None
    elif path.parent.is_file() and path.parent.suffix.lower() in (".ova", ".tar"):
        ova, wanted = path.parent, path.name
    else:
        return None
    try:
        with tarfile.open(ova, "r:") as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.lower().endswith(DISK_SUFFIXES)]
    except (tarfile.TarError, OSError) as exc:
        raise ImageError(f"{ova}: not a readable OVA (tar) archive ({exc})") from None
    if wanted is not None:
        found = [m for m in members if m.name == wanted or Path(m.name).name == wanted]
        if not found:
            names = ", ".join(m.name for m in members) or "none"
            raise ImageError(f"{ova} has no disk member {wanted!r}; its disks: {names}")
        return ova, found[0]
    if len(members) != 1:
        names = ", ".join(m.name for m in members) or "none"
        raise ImageError(f"{ova} holds {len(members)} disks ({names}): name one as {ova}/MEMBER")
    return ova, members[0]


class Image:
    """One virtual disk, read-only. ``pread_into`` may be called from several threads at once."""

    def __init__(self, path: str | os.PathLike[str], *, verify: bool = True) -> None:
        self.path = Path(path)
        self._fd = -1
        self._server: NbdServer | None = None
        self._clients: list[NbdClient] = []
        self._local = threading.local()
        self._lock = threading.Lock()
        member = _ova_member(self.path)
        if member is not None:
            ova, m = member
            where = f"{ova}/{m.name}"
            fmt = {".vmdk": "vmdk", ".qcow2": "qcow2", ".vhdx": "vhdx", ".vhd": "vpc"}.get(
                Path(m.name).suffix.lower(), "raw"
            )
            spec = (
                f'json:{{"driver":"{fmt}","file":{{"driver":"raw","offset":{m.offset_data},"size":{m.size},'
                f'"file":{{"driver":"file","filename":{_json_str(str(ova.resolve()))}}}}}}}'
            )
            self.info = inspect(spec, where, name_hint=m.name)
        else:
            if not self.path.exists():
                raise ImageError(f"{self.path}: no such file")
            self.info = inspect(str(self.path), str(self.path))
        if verify:
            check(self.info)
        self.size = self.info.size
        self.format = self.info.format
        self._extents: list[tuple[int, int]] | None = None
        if self.format == "raw" and member is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise ImageError(f"cannot open {self.path}: {exc.strerror}") from None

    def _qemu(self) -> NbdServer:
        """qemu-nbd and the allocation map, started at the first read (a seed restored by
        ``qemu-img convert`` needs neither)."""
        self._map()
        with self._lock:
            if self._server is None:
                self._server = NbdServer(self.info)
            return self._server

    def _map(self) -> list[tuple[int, int]]:
        with self._lock:
            if self._extents is None:
                self._extents = allocated(self.info)
            return self._extents

    def allocated(self) -> list[tuple[int, int]]:
        """``(offset, length)`` of every range that may hold data, in order (``data_extents`` whole)."""
        return list(self.data_extents())

    def start(self) -> None:
        """Get ready to read now (qemu-nbd started, the map read), so a failure shows at open."""
        if self._fd < 0:
            self._qemu()

    @property
    def where(self) -> str:
        return self.info.where

    def data_extents(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int]]:
        """``(offset, length)`` of the ranges that may hold data; the rest reads as zeros."""
        stop = self.size if end is None else min(end, self.size)
        if self._fd >= 0:
            yield from data_segments(self._fd, start, stop)
            return
        for off, n in self._map():
            lo, hi = max(off, start), min(off + n, stop)
            if lo < hi:
                yield lo, hi - lo

    def _client(self) -> NbdClient:
        client: NbdClient | None = getattr(self._local, "client", None)
        if client is None:
            client = NbdClient(self._qemu().socket, self.where)
            with self._lock:
                self._clients.append(client)
            self._local.client = client
        return client

    def pread_into(self, offset: int, view: memoryview) -> int:
        """Read into ``view``; short only at the end of the disk."""
        n = max(0, min(len(view), self.size - offset))
        if n == 0:
            return 0
        if self._fd >= 0:
            done = 0
            while done < n:
                r = os.preadv(self._fd, [view[done:n]], offset + done)
                if r <= 0:
                    raise ImageError(f"{self.where}: the file ends before its {self.size} bytes (truncated?)")
                done += r
            return n
        self._client().read_into(offset, view[:n])
        return n

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        with self._lock:
            clients, self._clients = self._clients, []
        for c in clients:
            c.close()
        if self._server is not None:
            self._server.close()
            self._server = None

    def __enter__(self) -> Image:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _json_str(s: str) -> str:
    import json

    return json.dumps(s)


__all__ = ["Image", "ImageInfo"]
