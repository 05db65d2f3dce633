"""Small JSON state files with a magic, a version and a checksum.

Used for the target's pass journal and status files. A file that fails its checksum or has another
magic is reported as corrupt, never half-trusted.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

from .durable import atomic_write
from .errors import IntegrityError

#: the record layout written by :func:`dump_record`; a file of a newer version is refused, not guessed at
RECORD_VERSION = 1


def dump_record(magic: str, body: dict[str, Any], version: int = RECORD_VERSION) -> bytes:
    payload = json.dumps(body, sort_keys=True, separators=(",", ":"))
    crc = zlib.crc32(f"{magic}:{version}:{payload}".encode())
    return (
        json.dumps({"magic": magic, "version": version, "body": body, "crc32": crc}, indent=1) + "\n"
    ).encode()


def load_record(data: bytes, magic: str, where: str) -> dict[str, Any]:
    try:
        outer = json.loads(data)
        body = outer["body"]
        version = outer["version"]
        crc = outer["crc32"]
        ok = outer["magic"] == magic and isinstance(body, dict)
    except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: "[[[[...", deeply nested
        ok = False
    if not ok:
        raise IntegrityError(f"{where} is not a valid {magic} file")
    payload = json.dumps(body, sort_keys=True, separators=(",", ":"))
    if zlib.crc32(f"{magic}:{version}:{payload}".encode()) != crc:
        raise IntegrityError(f"{where} fails its checksum")
    if version != RECORD_VERSION:
        raise IntegrityError(
            f"{where} is a {magic} file of version {version}; this vzrep reads version {RECORD_VERSION}"
            " (was it written by a newer vzrep? upgrade this agent)"
        )
    return dict(body)


def write_record(path: str | os.PathLike[str], magic: str, body: dict[str, Any], mode: int = 0o600) -> None:
    """Atomically replace ``path`` with the record; private by default (the target's state files)."""
    atomic_write(path, dump_record(magic, body), mode)


def read_record(path: str | os.PathLike[str], magic: str) -> dict[str, Any]:
    return load_record(Path(path).read_bytes(), magic, str(path))
