"""Seeds and sources in every disk format, made by the real tools (qemu-img, qemu-io, tar) from a raw image.

Each :func:`make_seed` result holds exactly the raw image's bytes (its merged view, for chains), so
``qemu-img compare`` against the raw image judges any reader of it. Chains are real chains: the parent
holds an older state (some blocks differ, some are data where the newer state has zeros) and the child,
made by ``qemu-img create -b``, holds the writes since, made with ``qemu-io``.
"""

from __future__ import annotations

import random
import shutil
import struct
import tarfile
from pathlib import Path

from tests.support.tools import BS, need, run

#: every kind :func:`make_seed` makes
KINDS = (
    "raw",
    "monolithicFlat",
    "monolithicSparse",
    "streamOptimized",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
    "ova",
    "qcow2",
    "qcow2-backing",
    "vmdk-chain",
    "vhdx",
)


def _older(raw: Path, out: Path, seed: int) -> list[int]:
    """A copy of ``raw`` as it was earlier: 6 blocks differ, 3 zero blocks held data. Returns them."""
    rng = random.Random(seed)
    shutil.copyfile(raw, out)
    blocks = raw.stat().st_size // BS
    idxs = rng.sample(range(blocks), 9)
    with open(out, "r+b") as f:
        for idx in idxs:
            f.seek(idx * BS)
            f.write(rng.randbytes(BS))
    return idxs


def _chain(raw: Path, d: Path, fmt: str, seed: int) -> Path:
    old = d / "older.raw"
    idxs = _older(raw, old, seed)
    ext = "vmdk" if fmt == "vmdk" else "qcow2"
    parent, child = d / f"parent.{ext}", d / f"child.{ext}"
    opts = ["-o", "subformat=monolithicSparse"] if fmt == "vmdk" else []
    run("qemu-img", "convert", "-q", "-O", fmt, *opts, old, parent)
    old.unlink()
    run("qemu-img", "create", "-q", "-f", fmt, "-b", parent.name, "-F", fmt, child)
    cmds: list[str] = []
    with open(raw, "rb") as f:
        for n, idx in enumerate(idxs):
            f.seek(idx * BS)
            data = f.read(BS)
            if data == bytes(BS):
                cmds += ["-c", f"write -q -z {idx * BS} {BS}"]
            else:
                (d / f"blk{n}").write_bytes(data)
                cmds += ["-c", f"write -q -s {d / f'blk{n}'} {idx * BS} {BS}"]
    run(need("qemu-io"), "-f", fmt, *cmds, child)
    for p in d.glob("blk*"):
        p.unlink()
    return child


def make_seed(kind: str, raw: Path, d: Path, *, seed: int = 7) -> Path:
    """A backup of ``raw`` as ``kind`` (:data:`KINDS`) in the new directory ``d``; returns the path to give."""
    d.mkdir(parents=True, exist_ok=False)
    if kind == "raw":
        out = d / "disk.img"
        run("cp", "--sparse=always", raw, out)
        return out
    if kind in (
        "monolithicFlat",
        "monolithicSparse",
        "streamOptimized",
        "twoGbMaxExtentSparse",
        "twoGbMaxExtentFlat",
    ):
        out = d / "disk.vmdk"
        run("qemu-img", "convert", "-q", "-O", "vmdk", "-o", f"subformat={kind}", raw, out)
        return out
    if kind == "ova":
        disk = d / "web-disk1.vmdk"
        run("qemu-img", "convert", "-q", "-O", "vmdk", "-o", "subformat=streamOptimized", raw, disk)
        (d / "web.ovf").write_text('<?xml version="1.0"?><Envelope/>\n')
        out = d / "web.ova"
        with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as tar:  # OVF first, as the spec says
            tar.add(d / "web.ovf", arcname="web.ovf")
            tar.add(disk, arcname=disk.name)
        disk.unlink()
        return out
    if kind in ("qcow2", "vhdx"):
        out = d / f"disk.{kind}"
        run("qemu-img", "convert", "-q", "-O", kind, raw, out)
        return out
    if kind == "qcow2-backing":
        return _chain(raw, d, "qcow2", seed)
    if kind == "vmdk-chain":
        return _chain(raw, d, "vmdk", seed)
    raise ValueError(kind)


def break_grain_table(vmdk: Path) -> None:
    """Point the first used grain table entry of a monolithicSparse VMDK past the end of the file."""
    with open(vmdk, "r+b") as f:
        head = f.read(512)
        assert head[:4] == b"KDMV"
        gd_offset = struct.unpack_from("<Q", head, 56)[0]  # sectors; the primary grain directory
        f.seek(gd_offset * 512)
        gt_sector = struct.unpack("<I", f.read(4))[0]
        f.seek(gt_sector * 512)
        table = f.read(512 * 4)
        for i in range(0, len(table), 4):
            if struct.unpack_from("<I", table, i)[0]:
                f.seek(gt_sector * 512 + i)
                f.write(struct.pack("<I", 0x0FFFFFFF))
                return
    raise AssertionError(f"{vmdk}: no grain table entry in use")
