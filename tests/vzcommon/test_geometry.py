"""Block geometry: counted against a plain walk over the disk's bytes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vzcommon.geometry import Geometry, block_count


@given(st.integers(0, 1 << 40), st.sampled_from([512, 4096, 65536, 1 << 20, 4 << 20]))
def test_blocks_cover_the_disk_and_only_the_last_may_be_short(size: int, bs: int) -> None:
    g = Geometry(size, bs)
    assert g.blocks == block_count(size, bs)
    assert g.blocks * bs >= size > (g.blocks - 1) * bs or size == g.blocks == 0
    if size:
        assert 0 < g.tail <= bs and (g.blocks - 1) * bs + g.tail == size
        assert g.length((g.blocks - 1) * bs) == g.tail
        assert g.full_blocks == g.blocks - (g.tail != bs)
    else:
        assert (g.tail, g.full_blocks) == (0, 0)


def test_a_small_disk_walked_byte_by_byte() -> None:
    for size in range(0, 40):
        g = Geometry(size, 8)
        lengths = [min(8, size - off) for off in range(0, size, 8)]
        assert [g.length(off) for off in range(0, size, 8)] == lengths
        assert g.blocks == len(lengths) and g.tail == (lengths[-1] if lengths else 0)
