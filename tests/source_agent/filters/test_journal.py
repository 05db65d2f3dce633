"""A snapshot of a mounted ext4: the newest bitmap lives only in the journal (needs_recovery).

Built honestly with e2fsprogs: image A, then B = A plus a new file (debugfs write). C holds B's data
blocks, A's metadata on disk, and B's metadata in a committed journal transaction (debugfs
``jo``/``jw``/``jc``), which is what a crash-consistent snapshot looks like. The on-disk bitmap says
the new file's blocks are free; ABM must keep them, and e2fsck's journal replay on the replica must
give the file back.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

from tests.source_agent.filters.extfs import used_ranges
from tests.source_agent.filters.helpers import MiB, abm, covers, replicate, run

BS = 1024


def _blocks(img: Path) -> list[bytes]:
    data = img.read_bytes()
    return [data[i : i + BS] for i in range(0, len(data), BS)]


def test_bitmaps_only_in_the_journal_are_honoured(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.img", tmp_path / "b.img", tmp_path / "c.img"
    with open(a, "wb") as f:
        f.truncate(32 * MiB)
    run("mkfs.ext4", "-F", "-q", "-b", str(BS), a)
    shutil.copy(a, b)
    new = tmp_path / "new.bin"
    new.write_bytes(random.Random(11).randbytes(300_000))
    run("debugfs", "-w", "-R", f"write {new} new.bin", b)
    stat = run("debugfs", "-R", "ex new.bin", b).stdout.decode()
    data_blocks = set()
    for line in stat.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 8 and parts[-4].isdigit() and parts[-2].isdigit():
            first, last = int(parts[-4]), int(parts[-2])
            data_blocks |= set(range(first, last + 1))
    assert data_blocks, stat
    old, newer = _blocks(a), _blocks(b)
    meta = [i for i in range(len(old)) if old[i] != newer[i] and i not in data_blocks and i != 1]
    assert meta, "writing a file changed no metadata block"
    shutil.copy(b, c)
    (tmp_path / "meta.bin").write_bytes(b"".join(newer[i] for i in meta))
    script = tmp_path / "jw.debugfs"
    script.write_text(f"jo\njw -b {','.join(map(str, meta))} {tmp_path / 'meta.bin'}\njc\n")
    run("debugfs", "-w", "-f", script, c)
    with open(c, "r+b") as f:  # the metadata on disk goes back to before the write
        for i in meta:
            f.seek(i * BS)
            f.write(old[i])
    assert "needs_recovery" in run("dumpe2fs", "-h", c).stdout.decode()
    file_ranges = [(blk * BS, (blk + 1) * BS) for blk in sorted(data_blocks)]
    assert covers_any_missing(used_ranges(c), file_ranges), "the on-disk bitmap already has the file"

    active = abm(c)
    assert covers(active, file_ranges) == [], "blocks allocated in the journal were skipped"
    replica = tmp_path / "replica.img"
    replicate(c, replica, active, block=4096)
    res = run("e2fsck", "-fy", replica, check=False)
    assert res.returncode in (0, 1), res.stdout.decode()  # 1: journal replayed, fixed
    out = tmp_path / "out.bin"
    run("debugfs", "-R", f"dump new.bin {out}", replica)
    assert out.read_bytes() == new.read_bytes()


def covers_any_missing(used: list[tuple[int, int]], ranges: list[tuple[int, int]]) -> bool:
    from source_agent.filters.extents import ExtentList

    return bool(covers(ExtentList(used), ranges))
