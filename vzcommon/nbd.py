"""A minimal NBD client (read-only) for images that qemu-nbd exports on a unix socket.

Why our own: the NBD wire protocol is small (fixed newstyle handshake, ``NBD_OPT_GO``, then
``NBD_CMD_READ`` with simple replies) and Debian's libnbd binding is not in the lock. Only what a
reader needs is here: one export, reads, a clean disconnect. Nothing listens on TCP: the socket is a
private file (``vzcommon.qemu``). Reference: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md

A :class:`NbdClient` is one connection and is not thread-safe; readers keep one per thread.
"""

from __future__ import annotations

import socket
import struct

from .errors import ImageError

_NBDMAGIC = b"NBDMAGIC"
_IHAVEOPT = 0x49484156454F5054
_REPLY_MAGIC = 0x3E889045565A9
_REQUEST_MAGIC = 0x25609513
_SIMPLE_REPLY_MAGIC = 0x67446698
_FLAG_FIXED_NEWSTYLE = 1
_FLAG_NO_ZEROES = 2
_OPT_GO = 7
_REP_ACK = 1
_REP_INFO = 3
_INFO_EXPORT = 0
_CMD_READ = 0
_CMD_DISC = 2
#: qemu-nbd serves reads of up to 32 MiB; stay well below
MAX_READ = 8 << 20


class NbdClient:
    """One read-only connection to an NBD export on a unix socket."""

    def __init__(self, path: str, where: str) -> None:
        self.where = where
        self._handle = 0
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.connect(path)
            self.size = self._handshake()
        except OSError as exc:
            self._sock.close()
            raise ImageError(f"{where}: cannot talk to qemu-nbd ({exc.strerror or exc})") from None
        except BaseException:
            self._sock.close()
            raise

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray(n)
        self._recv_into(memoryview(buf))
        return bytes(buf)

    def _recv_into(self, view: memoryview) -> None:
        got = 0
        while got < len(view):
            r = self._sock.recv_into(view[got:])
            if r == 0:
                raise ImageError(
                    f"{self.where}: qemu-nbd closed the connection (did it fail to read the image?)"
                )
            got += r

    def _handshake(self) -> int:
        head = self._recv_exact(18)
        if head[:8] != _NBDMAGIC or struct.unpack(">Q", head[8:16])[0] != _IHAVEOPT:
            raise ImageError(f"{self.where}: not an NBD fixed-newstyle server")
        self._sock.sendall(struct.pack(">I", _FLAG_FIXED_NEWSTYLE | _FLAG_NO_ZEROES))
        payload = struct.pack(">I", 0) + struct.pack(">H", 0)  # export "" (the default), no info requests
        self._sock.sendall(struct.pack(">QII", _IHAVEOPT, _OPT_GO, len(payload)) + payload)
        size = -1
        while True:
            magic, _opt, rtype, length = struct.unpack(">QIII", self._recv_exact(20))
            data = self._recv_exact(length) if length else b""
            if magic != _REPLY_MAGIC:
                raise ImageError(f"{self.where}: bad NBD option reply")
            if rtype & 0x80000000:
                raise ImageError(
                    f"{self.where}: qemu-nbd refused the export: {data.decode('utf-8', 'replace')}"
                )
            if rtype == _REP_INFO and len(data) >= 12 and struct.unpack(">H", data[:2])[0] == _INFO_EXPORT:
                size = struct.unpack(">Q", data[2:10])[0]
            elif rtype == _REP_ACK:
                break
        if size < 0:
            raise ImageError(f"{self.where}: qemu-nbd did not say the export's size")
        return int(size)

    def read_into(self, offset: int, view: memoryview) -> None:
        """Fill ``view`` with the export's bytes at ``offset`` (inside the export)."""
        pos = 0
        while pos < len(view):
            n = min(MAX_READ, len(view) - pos)
            self._handle += 1
            try:
                self._sock.sendall(
                    struct.pack(">IHHQQI", _REQUEST_MAGIC, 0, _CMD_READ, self._handle, offset + pos, n)
                )
                magic, error, handle = struct.unpack(">IIQ", self._recv_exact(16))
                if magic != _SIMPLE_REPLY_MAGIC or handle != self._handle:
                    raise ImageError(f"{self.where}: bad NBD reply")
                if error:
                    raise ImageError(
                        f"{self.where}: reading {n} bytes at offset {offset + pos} failed"
                        f" ({_errno_name(error)}): the image is damaged or truncated"
                    )
                self._recv_into(view[pos : pos + n])
            except OSError as exc:
                raise ImageError(f"{self.where}: lost qemu-nbd ({exc.strerror or exc})") from None
            pos += n

    def close(self) -> None:
        try:
            self._handle += 1
            self._sock.sendall(struct.pack(">IHHQQI", _REQUEST_MAGIC, 0, _CMD_DISC, self._handle, 0, 0))
        except OSError:
            pass
        self._sock.close()


def _errno_name(code: int) -> str:
    return {1: "EPERM", 5: "EIO", 12: "ENOMEM", 22: "EINVAL", 28: "ENOSPC", 75: "EOVERFLOW"}.get(
        code, f"error {code}"
    )
