"""The soak's judges: sha256 against saved copies, ``qemu-img compare``, and the replica's own map.

The agents' code is not trusted to judge itself: equality is sha256 (hashlib) of the replica's flat
extent against a copy of the source saved when that state was committed, and ``qemu-img compare``
reading the replica through its VMDK descriptor. Only after a pass whose source changed under it is
there no copy to compare with; then each block of the replica must hash to its entry in the
committed ``.vzmap`` (a map that disagrees with the data would make the next pass skip a block).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from vzcommon.blockhash import UNKNOWN_HASH, hash_block
from vzcommon.vzmap import MapFile

#: files that exist only while a pass runs or commits; none may be left when the target is idle
TRANSIENT = (".vzundo", "vzundo-script", ".vzpass", ".next")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def qemu_img() -> str:
    path = shutil.which("qemu-img")
    if path is None:
        raise SystemExit("soak: qemu-img is missing: run `make sysdeps`")
    return path


def qemu_compare(raw: Path, descriptor: Path) -> str:
    """'' when qemu-img finds the raw image and the VMDK replica equal, else what it said."""
    res = subprocess.run(
        [qemu_img(), "compare", "-q", "-f", "raw", "-F", "vmdk", str(raw), str(descriptor)],
        capture_output=True,
        text=True,
    )
    return (
        ""
        if res.returncode == 0
        else f"qemu-img compare exit {res.returncode}: {res.stdout}{res.stderr}".strip()
    )


def map_mismatches(flat: Path, vzmap: Path) -> list[int]:
    """Blocks of the replica whose hash differs from the committed map's entry (unknown entries skipped)."""
    with MapFile.open(vzmap) as m, open(flat, "rb") as f:
        bs, n = m.header.block_size, m.header.entries
        entries = m.read_entries(0, n)
        if f.seek(0, 2) != m.header.disk_size:
            return [-1]  # the extent's size is not the map's
        bad = []
        f.seek(0)
        for i in range(n):
            block = f.read(bs)
            entry = entries[i * 32 : (i + 1) * 32]
            if entry != UNKNOWN_HASH and hash_block(block) != entry:
                bad.append(i)
        return bad


def leftovers(vdir: Path) -> list[str]:
    return sorted(p.name for p in vdir.iterdir() if p.name.endswith(TRANSIENT))
