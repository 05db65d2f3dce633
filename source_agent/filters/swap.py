"""Linux swap: only the header page is active (the rest is scratch the guest rewrites after boot).

A swap area holding a hibernation image (``S1SUSPEND`` and friends) is fully active: resuming from it
needs every page. The job option ``skip_swap=False`` keeps any swap area fully active.
"""

from __future__ import annotations

from source_agent.filters.volume import NotParsed, Range, Volume

PAGE_SIZES = (4096, 8192, 16384, 65536)
_HIBERNATED = (b"S1SUSPEND\0", b"S2SUSPEND\0", b"ULSUSPEND\0", b"LINHIB0001", b"S1SUSPEND", b"S2SUSPEND")


def signature(vol: Volume) -> tuple[int, bytes] | None:
    """``(page size, 10-byte magic)`` if the volume starts with a swap header."""
    for page in PAGE_SIZES:
        if page > vol.size:
            break
        magic = vol.pread(page - 10, 10)
        if magic in (b"SWAPSPACE2", b"SWAP-SPACE") or magic.startswith(_HIBERNATED):
            return page, magic
    return None


def active_ranges(vol: Volume, *, skip_swap: bool) -> tuple[list[Range], list[str]]:
    found = signature(vol)
    if found is None:
        raise NotParsed(f"{vol.label}: no swap signature")
    page, magic = found
    if magic != b"SWAPSPACE2" or not skip_swap:
        reason = "swap kept (job option)" if magic == b"SWAPSPACE2" else "swap holds a hibernation image"
        return [(0, vol.size)], [reason]
    return [(0, page)], [f"swap area: {vol.size - page} bytes skipped"]
