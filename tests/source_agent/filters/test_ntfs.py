"""NTFS against ntfs-3g: ntfscluster finds no file in the clusters we skip, and a replica made of the
active extents only passes ntfsfix and gives back every file through ntfscat."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from source_agent.filters.extents import ExtentList
from source_agent.filters.ntfs import Ntfs
from source_agent.filters.volume import Volume
from tests.source_agent.filters.helpers import FileReader, MiB, abm, make_files, replicate, run, write_at

SIZE = 96 * MiB
FILES = {f"f{i}.bin": (i * 7919 + 1) * 997 % (4 * MiB) + 1 for i in range(14)}
TRUNCATE = [n for i, n in enumerate(FILES) if i % 3 == 0]


def make_ntfs(tmp: Path, extra: dict[str, int] | None = None) -> tuple[Path, dict[str, bytes]]:
    img = tmp / "ntfs.img"
    with open(img, "wb") as f:
        f.truncate(SIZE)
    run("mkntfs", "-F", "-f", "-q", img)
    src = tmp / "files"
    content = make_files(src, {**FILES, **(extra or {})}, seed=3)
    for name in content:
        run("ntfscp", img, src / name, f"/{name}")
    listing = run("ntfsls", "-i", img).stdout.decode()
    inodes = {name: ino for ino, name in re.findall(r"^\s*(\d+)\s+(\S+)$", listing, re.M)}
    for name in TRUNCATE:  # ntfs-3g has no rm tool: truncating to zero frees the clusters just the same
        run("ntfstruncate", img, inodes[name], "0")
        content[name] = b""
    return img, content


def files_in_clusters(img: Path, first: int, last: int) -> list[str]:
    out = run("ntfscluster", "-c", f"{first}-{last}", img, check=False).stdout.decode()
    return re.findall(r"^Inode \d+ (\S+)", out, re.M)


def cluster_size(img: Path) -> int:
    out = run("ntfscluster", "-i", img).stdout.decode()
    return int(re.search(r"bytes per cluster\s*:\s*(\d+)", out).group(1))  # type: ignore[union-attr]


def check_replica(tmp: Path, img: Path, active: ExtentList, content: dict[str, bytes]) -> Path:
    dst = tmp / "replica.img"
    replicate(img, dst, active)
    res = run("ntfsfix", "-n", dst, check=False)
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()
    for name, data in content.items():
        assert run("ntfscat", dst, f"/{name}").stdout == data, name
    return dst


def test_ntfs_replica_from_active_clusters_only(tmp_path: Path) -> None:
    img, content = make_ntfs(tmp_path)
    active = abm(img)
    assert active.total < 0.6 * SIZE
    cs = cluster_size(img)
    inactive = ExtentList.full(SIZE).subtract(active)
    assert inactive.total > 0.4 * SIZE
    for s, e in inactive:
        first, last = -(-s // cs), e // cs - 1
        if first <= last:
            assert files_in_clusters(img, first, last) == [], f"clusters {first}-{last} are used"
    check_replica(tmp_path, img, active, content)


def test_pagefile_skipped_only_on_request(tmp_path: Path) -> None:
    img, content = make_ntfs(tmp_path, {"pagefile.sys": 6 * MiB})
    keep = abm(img)
    skip = abm(img, skip_pagefile=True)
    assert 5 * MiB < keep.total - skip.total <= 6 * MiB - 64 * 1024
    pagefile = content.pop("pagefile.sys")
    dst = check_replica(tmp_path, img, skip, content)
    replica_pf = run("ntfscat", dst, "/pagefile.sys").stdout
    assert replica_pf[: 64 * 1024] == pagefile[: 64 * 1024]  # the header is kept


def test_dirty_logfile_is_fully_active(tmp_path: Path) -> None:
    img, _ = make_ntfs(tmp_path)
    reader = FileReader(img)
    fs = Ntfs(Volume.whole(reader))
    log_lcn = fs._unnamed_data_runs(fs.record(2), "$LogFile")[0][1]
    reader.close()
    assert log_lcn is not None
    page = bytearray(4096)
    page[:4] = b"RSTR"
    write_at(img, log_lcn * fs.cluster, bytes(page))  # a restart page that is not clean
    assert abm(img) == ExtentList.full(SIZE)


@pytest.mark.parametrize("where", ["bitmap-record", "boot"])
def test_corrupt_ntfs_is_fully_active(tmp_path: Path, where: str) -> None:
    img, _ = make_ntfs(tmp_path)
    reader = FileReader(img)
    fs = Ntfs(Volume.whole(reader))
    mft = fs.mft_runs[0][1]
    reader.close()
    assert mft is not None
    if where == "boot":
        write_at(img, 11, b"\x00\x03")  # 768 bytes per sector: impossible
    else:
        write_at(img, mft * fs.cluster + 6 * fs.rec_size + 100, b"\xde\xad" * 40)
    assert abm(img) == ExtentList.full(SIZE)
