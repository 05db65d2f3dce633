"""What a source disk reader offers: the whole contract, stated once.

Two levels. :class:`VolumeReader` is what the filesystem parsers (``source_agent.filters``) need: a
size, positioned reads and where the data is. :class:`DiskReader` is what a pass needs on top of it
(``source_agent.pipeline``, ``session``, ``native.ahead``): reads into a caller's buffer, a mapping
of a range when the disk allows one, the disk as one fd region for hash-ahead, and the check that
the disk did not shrink. Every method is in the type: the pipeline never probes with ``getattr``,
and a reader that cannot map or has no single region says so by returning None.

Readers are synchronous on purpose: they run in worker threads of the pipeline, and filesystem
parsers use them directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from source_agent.native.ahead import Region

    from .mapping import Mapped


class VolumeReader(Protocol):
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


class DiskReader(VolumeReader, Protocol):
    def pread_into(self, offset: int, view: memoryview) -> int:
        """Read into ``view`` without an intermediate copy; the bytes read (short only at the end)."""
        ...

    def map_range(self, offset: int, length: int) -> Mapped | None:
        """The range mapped read-only, or None where mapping does not apply (read it instead)."""
        ...

    def region(self) -> Region | None:
        """The whole disk as one region of one fd (for hash-ahead), or None if it is not one."""
        ...

    def check_size(self) -> None:
        """Raise InputError if the disk is now smaller than when it was opened."""
        ...

    def close(self) -> None: ...
