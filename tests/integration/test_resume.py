"""A pass whose link is lost goes on where it stopped (``target_agent/resume.py``).

The link is a TCP proxy that cuts the connection once, at a chosen byte; the source reconnects
through it, says which pass it resumes, and sends only what the target does not have. The replica is
judged by ``qemu-img compare``; what crossed the link by the bytes each connection carried.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from source_agent.tunnel import TargetSpec
from target_agent.storage import points as rp
from tests.support.agents import Keys, Target, replicate, snapshot, wait_idle
from tests.support.proxy import CutProxy
from tests.support.tools import change_blocks, make_image, qemu_compare
from vzcommon.errors import VzrepError

MiB = 1 << 20


async def cut_once(proxy: CutProxy) -> None:
    await proxy.cut.wait()
    proxy.rearm()  # the link comes back


def through(proxy: CutProxy, t: Target) -> TargetSpec:
    return TargetSpec("127.0.0.1", proxy.port, t.keys.client_key, t.keys.known_hosts(proxy.port, f"kh-{proxy.port}"))


async def test_a_full_pass_cut_at_60_percent_resumes_and_sends_the_rest(tmp_path: Path, session_keys: Keys) -> None:
    t = await Target(tmp_path / "data", session_keys, resume_window=60).start()
    src = make_image(tmp_path / "d.img", 48 * MiB, data_blocks=768, seed=11)  # 48 MiB of random data
    proxy = await CutProxy(t.port, cut_after=int(48 * MiB * 0.6)).start()
    watcher = asyncio.ensure_future(cut_once(proxy))
    try:
        report = await replicate(through(proxy, t), "r", {"d": src}, tmp_path / "state", compress="none")
    finally:
        await proxy.stop()
        watcher.cancel()
        await t.stop()
    assert report.ok and report.resumed == 1
    qemu_compare(src, t.vm("r") / "d.vmdk")
    assert len(rp.load(t.vm("r"))) == 1  # one pass, one restore point
    # The proxy's count, not ours: what crossed the link after the cut (the resumed connection, its
    # SSH handshake included). A pass without the cut would have sent about 48 MiB.
    sent_again = proxy.c2s - int(48 * MiB * 0.6)
    print(f"\nresume: {sent_again} bytes crossed the link after the cut at 60 % of a 48 MiB pass"
          f" ({sent_again / (48 * MiB):.0%}); the source wrote {report.wire_bytes_sent} in all")  # fmt: skip
    assert sent_again <= 0.45 * 48 * MiB, sent_again


async def test_a_suspended_pass_is_rolled_back_when_no_source_comes_back(tmp_path: Path, session_keys: Keys) -> None:
    t = await Target(tmp_path / "data", session_keys, resume_window=1.5).start()
    src = make_image(tmp_path / "d.img", 32 * MiB, data_blocks=256, seed=12)
    try:
        assert (await replicate(t.spec(), "w", {"d": src}, tmp_path / "state")).ok
        before = snapshot(t.vm("w"))
        src.write_bytes(make_image(tmp_path / "e.img", 32 * MiB, data_blocks=400, seed=13).read_bytes())
        proxy = await CutProxy(t.port, cut_after=8 * MiB).start()
        try:
            with pytest.raises(VzrepError):  # the source does not try to resume (window 0)
                await replicate(through(proxy, t), "w", {"d": src}, tmp_path / "state", compress="none",
                                resume_window=0)  # fmt: skip
        finally:
            await proxy.stop()
        await asyncio.sleep(0.3)
        assert t.suspended is not None and "w" in t.suspended._parked  # waiting for its source
        await wait_idle(t.vm("w"), limit=10)  # the window ends: rolled back as a failed pass is
        assert snapshot(t.vm("w")) == before
        assert (await replicate(t.spec(), "w", {"d": src}, tmp_path / "state")).ok
        qemu_compare(src, t.vm("w") / "d.vmdk")
    finally:
        await t.stop()


async def test_a_new_pass_rolls_the_suspended_one_back_first(tmp_path: Path, session_keys: Keys) -> None:
    """A source that died cannot resume; when it starts again its pass is not kept waiting (exit 10):
    the suspended pass is rolled back and the new one runs."""
    t = await Target(tmp_path / "data", session_keys, resume_window=300).start()
    src = make_image(tmp_path / "d.img", 32 * MiB, data_blocks=256, seed=14)
    try:
        proxy = await CutProxy(t.port, cut_after=6 * MiB).start()
        try:
            with pytest.raises(VzrepError):
                await replicate(through(proxy, t), "n", {"d": src}, tmp_path / "state", compress="none",
                                resume_window=0)  # fmt: skip
        finally:
            await proxy.stop()
        await asyncio.sleep(0.3)
        report = await replicate(t.spec(), "n", {"d": src}, tmp_path / "state2")
        assert report.ok and report.resumed == 0
        qemu_compare(src, t.vm("n") / "d.vmdk")
        assert len(rp.load(t.vm("n"))) == 1
    finally:
        await t.stop()


async def test_a_target_killed_mid_pass_and_restarted_gets_the_pass_again(tmp_path: Path, session_keys: Keys) -> None:
    """SIGKILL of the target agent: the restarted agent rolls the pass back at start-up, the source
    (still within its window) reconnects, finds its pass gone and sends it again -- one command, no
    exit 4, the replica whole (``vzrep-source pass`` and ``vzrep-target serve`` as processes)."""
    import json
    import subprocess

    from tests.integration.test_faults import start_pass_mid_write
    from tests.support.agents import TargetProcess

    data = tmp_path / "data"
    src = make_image(tmp_path / "d.img", 64 * MiB, data_blocks=600, seed=15)
    tp = TargetProcess(data, session_keys, tmp_path / "target.log").start()
    cmd = tp.source_cmd("k", src, tmp_path / "state", "--compress", "none", "--json")
    subprocess.run(cmd, check=True, capture_output=True)
    change_blocks(src, 800, seed=16)  # ~50 MiB to overwrite: undo records of the old bytes pile up
    proc = start_pass_mid_write(cmd, data / "k" / "d-flat.vmdk.vzundo", 4 * MiB)
    tp.kill()
    await asyncio.sleep(1.0)
    tp2 = TargetProcess(data, session_keys, tmp_path / "target2.log", port=tp.port).start()
    try:
        out, err = await asyncio.to_thread(proc.communicate, timeout=90)
        assert proc.returncode == 0, err.decode()
        report = json.loads(out)
        assert report["restarted"] == 1 and report["resumed"] == 0
        qemu_compare(src, data / "k" / "d.vmdk")
        assert "startup_recovery" in (tmp_path / "target2.log").read_text()
    finally:
        tp2.stop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
