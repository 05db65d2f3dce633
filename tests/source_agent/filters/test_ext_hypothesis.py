"""Hypothesis: random create/delete sequences on ext4 (through debugfs), then a replica made of the
active extents only. The replica must pass e2fsck and hold every surviving file byte for byte.

Examples are few on purpose: each one runs mkfs, debugfs, e2fsck and a dump on a shared 2-core box.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.source_agent.filters.extfs import debugfs_script, dump_files, fsck_clean, used_ranges
from tests.source_agent.filters.helpers import MiB, abm, covers, replicate, run

ops = st.lists(
    st.one_of(
        st.tuples(st.just("create"), st.integers(1, 48 * 1024), st.integers(0, 2**16)),
        st.tuples(st.just("delete"), st.integers(0, 30), st.just(0)),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, flex=st.booleans(), block=st.sampled_from([1024, 4096]))
def test_random_create_delete_replicates(ops: list[tuple[str, int, int]], flex: bool, block: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        img = tmp / "fs.img"
        with open(img, "wb") as f:
            f.truncate(24 * MiB)
        features = "flex_bg" if flex else "^flex_bg"
        run("mkfs.ext4", "-F", "-q", "-b", str(block), "-g", str(block * 2), "-O", features, img)
        live: dict[str, bytes] = {}
        commands, counter = [], 0
        for op, a, seed in ops:
            if op == "create":
                name = f"f{counter}"
                counter += 1
                data = random.Random(seed).randbytes(a * 16)
                (tmp / name).write_bytes(data)
                commands.append(f"write {tmp / name} {name}")
                live[name] = data
            elif live:
                victim = sorted(live)[a % len(live)]
                commands.append(f"rm {victim}")
                del live[victim]
        debugfs_script(img, commands)
        active = abm(img)
        assert covers(active, used_ranges(img)) == []
        replica = tmp / "replica.img"
        replicate(img, replica, active, block=block)
        fsck_clean(replica)
        assert dump_files(replica, list(live)) == live
