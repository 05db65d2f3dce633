"""DISK_END's totals are the sender's own count, checked by whoever did not produce them.

The source counts what its scanner emitted; its connection compares that with the frames it framed.
The target's connection compares it with the frames it parsed, and the target session with what the
replica writer applied. A message lost between any two of them fails the pass (rolled back).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from source_agent import pipeline
from target_agent import session as target_session
from tests.support.agents import Target, replicate, snapshot, wait_idle
from tests.support.tools import change_blocks, make_image
from vzcommon.errors import ExitCode, VzrepError

MiB = 1 << 20


async def first_pass(target: Target, tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    src = make_image(tmp_path / "d.img", 16 * MiB, data_blocks=60)
    state = tmp_path / "state"
    await replicate(target.spec(), "de", [src], state)
    change_blocks(src, 20, seed=4)
    change_blocks(src, 6, seed=5, zero=True)
    return src, state, snapshot(target.vm("de"))


async def test_a_block_the_writer_never_applied_fails_the_pass(
    target: Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, state, before = await first_pass(target, tmp_path)
    real = target_session._apply_batch
    dropped: list[object] = []

    def lossy(ops: list) -> None:
        if not dropped and len(ops) > 1:
            dropped.append(ops.pop())  # a message lost between the session and the writer
        real(ops)

    monkeypatch.setattr(target_session, "_apply_batch", lossy)
    with pytest.raises(VzrepError, match="replica writer applied") as exc:
        await replicate(target.spec(), "de", [src], state)
    assert dropped and exc.value.exit_code == ExitCode.INTEGRITY
    await wait_idle(target.vm("de"))
    assert snapshot(target.vm("de")) == before


async def test_a_chunk_lost_before_the_tunnel_is_caught_by_the_source(
    target: Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, state, before = await first_pass(target, tmp_path)
    real = pipeline.DiskScanner.scan

    def scan(self: pipeline.DiskScanner, *args: object, **kwargs: object) -> pipeline.Chunk:
        chunk = real(self, *args, **kwargs)
        if chunk.messages:  # counted by the scanner, never framed
            chunk.messages.pop()
        return chunk

    monkeypatch.setattr(pipeline.DiskScanner, "scan", scan)
    monkeypatch.setenv("VZREP_HASH_AHEAD", "0")
    with pytest.raises(VzrepError, match="DISK_END counts") as exc:
        await replicate(target.spec(), "de", [src], state)
    assert exc.value.exit_code == ExitCode.INTERNAL  # a bug on our side: the source's own check
    await wait_idle(target.vm("de"))
    assert snapshot(target.vm("de")) == before
