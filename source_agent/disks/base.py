"""What every source disk reader offers: a size, positioned reads, and where the data is.

Readers are synchronous on purpose: they run in worker threads of the pipeline, and filesystem
parsers (``source_agent.filters``) use them directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol


class DiskReader(Protocol):
    #: stable disk name within the VM (the replica is ``<name>.vmdk`` + ``<name>-flat.vmdk``)
    name: str
    #: virtual size in bytes (a multiple of 512)
    size: int

    def pread(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset``; short only at the end of the disk."""
        ...

    def data_extents(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int]]:
        """Yield ``(offset, length)`` of ranges that may hold data; holes outside them read as zeros.

        A reader that cannot tell (a block device) yields the whole range.
        """
        ...

    def close(self) -> None: ...
