"""vzcommon.durable's write helper against a really full filesystem."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tests.support.smallfs import fill, small_tmpfs
from vzcommon.durable import pwrite_all


def test_pwrite_all_raises_where_pwrite_would_write_part(tmp_path: Path) -> None:
    """tmpfs takes what it can of a write into a hole and returns the count; pwrite_all goes on
    and gets ENOSPC instead of leaving the rest unwritten without a word."""
    with small_tmpfs(tmp_path / "fs", "1m") as mnt:
        path = mnt / "f"
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, 256 * 1024)
            fill(mnt, leave=4096)
            assert os.pwrite(fd, b"x" * 65536, 0) == 4096  # what os.pwrite alone does here
            with pytest.raises(OSError) as exc:
                pwrite_all(fd, b"y" * 65536, 65536)
            assert exc.value.errno == errno.ENOSPC
            (mnt / "filler").unlink()
            pwrite_all(fd, b"z" * 65536, 131072)
            assert os.pread(fd, 65536, 131072) == b"z" * 65536
        finally:
            os.close(fd)
