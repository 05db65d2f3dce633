"""A pass under a bandwidth limit, over a real SSH connection: it sends no faster than the limit
(checked from below only -- a loaded machine can be slower, never faster) and the replica is whole."""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.agents import Keys, Target, replicate
from tests.support.tools import make_image, qemu_compare

MiB = 1 << 20


async def test_a_limited_pass_keeps_to_its_rate(tmp_path: Path, session_keys: Keys) -> None:
    t = await Target(tmp_path / "data", session_keys).start()
    try:
        src = make_image(tmp_path / "d.img", 16 * MiB, data_blocks=96, seed=9)  # 6 MiB of random data
        t0 = time.monotonic()
        report = await replicate(t.spec(), "bw", {"d": src}, tmp_path / "state", limit=("2MB/s",), compress="none")
        elapsed = time.monotonic() - t0
    finally:
        await t.stop()
    assert report.ok
    qemu_compare(src, t.vm("bw") / "d.vmdk")
    floor = (report.wire_bytes_sent - 256 * 1024) / 2e6  # the bucket may start with one burst
    assert elapsed >= floor > 2.5, (elapsed, report.wire_bytes_sent)
    assert report.seconds_limited > 1.5
