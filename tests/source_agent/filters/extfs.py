"""ext2/3/4 judges built on e2fsprogs: what dumpe2fs says is in use, e2fsck, and files dumped back."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from tests.source_agent.filters.helpers import MiB, make_files, parse_free_list, run


def make_ext(img: Path, size: int, mkfs_args: list[str], files: dict[str, int], delete: list[str],
             seed: int = 1, fstype: str = "ext4") -> dict[str, bytes]:
    """Build an ext image holding ``files`` (via ``mkfs -d``), then delete ``delete`` with debugfs."""
    with tempfile.TemporaryDirectory() as d:
        content = make_files(Path(d), files, seed)
        with open(img, "wb") as f:
            f.truncate(size)
        run(f"mkfs.{fstype}", "-F", "-q", *mkfs_args, "-d", d, img)
    if delete:
        debugfs_script(img, [f"rm /{name}" for name in delete])
    return {k: v for k, v in content.items() if k not in delete}


def debugfs_script(img: Path, commands: list[str]) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs") as f:
        f.write("\n".join(commands) + "\n")
        f.flush()
        return run("debugfs", "-w", "-f", f.name, img).stdout.decode()


def used_ranges(img: Path, offset: int = 0) -> list[tuple[int, int]]:
    """Byte ranges dumpe2fs reports in use: every group's blocks minus its free list."""
    out = run("dumpe2fs", img).stdout.decode()
    bs = int(re.search(r"^Block size:\s+(\d+)", out, re.M).group(1))  # type: ignore[union-attr]
    cs = re.search(r"^Cluster size:\s+(\d+)", out, re.M)
    ratio = int(cs.group(1)) // bs if cs else 1  # bigalloc lists free clusters by their first block
    used: list[tuple[int, int]] = []
    for m in re.finditer(r"^Group \d+: \(Blocks (\d+)-(\d+)\)(.*?)\n  Free blocks: ([^\n]*)", out, re.M | re.S):
        first, last = int(m.group(1)), int(m.group(2))
        pos = first
        for a, b in parse_free_list(m.group(4)):
            b += ratio - 1
            if a > pos:
                used.append((pos, a))
            pos = max(pos, b)
        if pos <= last:
            used.append((pos, last + 1))
    assert used, "dumpe2fs printed no groups"
    return [(offset + a * bs, offset + b * bs) for a, b in used]


def fsck_clean(img: Path) -> None:
    res = run("e2fsck", "-fn", img, check=False)
    assert res.returncode == 0, f"e2fsck -fn on the replica: {res.returncode}\n{res.stdout.decode()}"


def dump_files(img: Path, names: list[str]) -> dict[str, bytes]:
    out = {}
    with tempfile.TemporaryDirectory() as d:
        run("debugfs", "-R", f"rdump / {d}", img)
        for name in names:
            p = Path(d) / name
            out[name] = p.read_bytes() if p.exists() else b"<missing>"
    return out


FILES = {f"dir{i % 3}/file{i}.bin": (i * 977 + 1) * 1531 % (3 * MiB) + 1 for i in range(24)}
DELETE = [name for i, name in enumerate(FILES) if i % 2]
