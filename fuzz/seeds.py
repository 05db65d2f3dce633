"""Build the seed inputs of each target: valid conversations, files our own writers produce, and disk
images made by the real tools (mkfs.ext4, mkfs.xfs, mkntfs, mkswap, sfdisk; LVM by hand, as no loop
device may be at hand). ``python -m fuzz.seeds DIR`` writes ``DIR/<target>/seed-*``.

The fuzzer starts from these; what it finds beyond them is kept in ``fuzz/corpus``. Seeds are rebuilt
each run (they are not committed), so the real tools' current output is always among the inputs.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from fuzz.image import encode
from fuzz.targets import HELLO, MAP, OPEN, WELCOME, _frame_of
from protocol import codec
from protocol.messages import (
    Block,
    Commit,
    Committed,
    DiskEnd,
    Error,
    KeepAlive,
    Message,
    ReplicaState,
    Request,
    ZeroRange,
)
from source_agent.filters.extents import ExtentList, FilterKind
from source_agent.filters.lvm import lvm_crc
from vzcommon import records, vmdk, vzmap

MiB = 1 << 20
REPO = Path(__file__).resolve().parents[1]

_DATA: tuple[Message, ...] = (
    Block(0, 0, 65536, b"h" * 32, 1, b"(\xb5/\xfd compressed"),
    ZeroRange(0, 65536, 2 * 65536),
    DiskEnd(0, 1, 2 * 65536),
    Commit(1, False),
)


def _protocol() -> Iterator[tuple[str, bytes]]:
    convs: dict[int, list[Message]] = {
        0: [HELLO],
        1: [WELCOME],
        2: list(MAP),
        3: list(_DATA),
        32: [OPEN],  # state 4 (bit 5): the target after the handshake
    }
    for start, msgs in convs.items():
        stream = b"".join(_frame_of(m) for m in msgs)
        for step in range(4):
            yield "frame", bytes([start | 4 | step << 3]) + stream
    yield "frame", bytes([0]) + _frame_of(Error(8, "bad"))
    for msg in (
        HELLO,
        WELCOME,
        OPEN,
        *MAP,
        *_DATA,
        Committed("g2", False, ""),
        Error(8, "giving up"),
        KeepAlive(),
        Request("test-failover", "g1"),
        ReplicaState(
            "file", (("g2", "t", "pass", "j", True, 0),), 0, "test", "g2", "t", "exported", False, ""
        ),
    ):
        yield "message", bytes([msg.TYPE]) + codec.pack(msg.to_fields())


def _files(tmp: Path) -> Iterator[tuple[str, bytes]]:
    flat = vmdk.render_flat_descriptor("disk-flat.vmdk", 8 * MiB, 0x1234ABCD)
    yield "vmdk", flat.encode()
    yield (
        "vmdk",
        (
            b'# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="twoGbMaxExtentFlat"\n'
            b'RW 4192256 FLAT "d-f001.vmdk" 0\nRW 2048 FLAT "d-f002.vmdk" 0\nRDONLY 100 ZERO\n'
            b'RW 8 VMFS "d-flat.vmdk" 16\nddb.adapterType = "lsilogic"\nddb.uuid = "60 00 C2 9a"\n'
        ),
    )
    env = (REPO / "tests" / "appliance" / "data" / "ovfenv-vsphere.xml").read_bytes()
    yield "ovfenv", b"\0" + env
    props = (
        "vzrep.role=source\nvzrep.hostname=dr-1\nvzrep.ip_mode=static\nvzrep.address=10.0.0.5/24\n"
        "vzrep.gateway=10.0.0.1\nvzrep.dns=10.0.0.2, ::1\nvzrep.ntp=pool.ntp.org\nvzrep.peer=[fe80::1]:2222\n"
        "vzrep.pairing_token=abcdefgh12\nvzrep.vcenter=vc.example.com\nvzrep.admin_password=pw\n"
        "vzrep.admin_ssh_key=ssh-ed25519 AAAAC3Nza admin@x\nvzrep.unknown=1"
    )
    yield "ovfenv", b"\1" + props.encode()
    for body in ({}, {"pass": 3, "disks": ["d0", "d1"], "state": "writing", "sizes": {"d0": 1 << 40}}):
        rec = records.dump_record("vzrep-journal", body)
        yield "record", b"\0" + rec
        yield "record", b"\1" + rec
    for size in (3 * 65536 + 512, 0, 65536):
        builder = vzmap.MapBuilder(tmp / "m.vzmap", 65536, size, None)
        builder.fill(0, builder.entries, b"\x11" * 32)
        builder.finish(generation="g1", cid=7, change_id="52 aa/9")
        raw = (tmp / "m.vzmap").read_bytes()
        for ctl in range(4):
            yield "vzmap", bytes([ctl]) + (raw if ctl < 2 else raw[:-32])
    ext = ExtentList([(0, 4096), (65536, 1 << 20), (1 << 30, (1 << 30) + 512)])
    for kind in FilterKind:
        raw = ext.to_bytes(kind, 2 << 30)
        yield "vztemp", b"\0" + raw
        yield "vztemp", b"\1" + raw


def _tool(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for d in ("/usr/sbin", "/sbin") if os.access(p := f"{d}/{name}", os.X_OK)), None
    )


def _image(tmp: Path, size: int, *cmd: str, stdin: bytes | None = None) -> bytes | None:
    """A fresh sparse image of ``size`` bytes after running ``cmd`` on it (``{}`` is its path); None
    if the tool is missing (a seed less, not a failure: the corpus still holds earlier finds)."""
    img = tmp / "img"
    img.unlink(missing_ok=True)
    with open(img, "wb") as f:
        f.truncate(size)
    tool = _tool(cmd[0])
    if tool is None:
        print(f"seeds: {cmd[0]} not installed, its seeds are skipped", file=sys.stderr)
        return None
    argv = [tool, *(str(img) if a == "{}" else a for a in cmd[1:])]
    subprocess.run(argv, input=stdin, capture_output=True, check=True)
    return img.read_bytes()


def _pv(size: int, text: str) -> bytes:
    """An LVM2 physical volume, as pvcreate lays it out: label in sector 1, metadata area at 4 KiB."""
    img = bytearray(size)
    uuid = b"Fz0aBcDeFgHiJkLmNoPqRsTuVwXyZ012"
    pvh = uuid + struct.pack("<Q", size) + struct.pack("<QQQQ", 1 * MiB, 0, 0, 0)
    pvh += struct.pack("<QQQQ", 4096, MiB - 4096, 0, 0)
    label = bytearray(b"LABELONE" + struct.pack("<Q", 1) + b"\0\0\0\0" + struct.pack("<I", 32) + b"LVM2 001")
    label += pvh
    label = label.ljust(512, b"\0")
    struct.pack_into("<I", label, 16, lvm_crc(bytes(label[20:])))
    img[512:1024] = label
    raw = text.encode()
    mh = bytearray(512)
    mh[4:20] = b" LVM2 x[5A%r0N*>"
    struct.pack_into("<IQQ", mh, 20, 1, 4096, MiB - 4096)
    struct.pack_into("<QQII", mh, 40, 512, len(raw), lvm_crc(raw), 0)
    struct.pack_into("<I", mh, 0, lvm_crc(bytes(mh[4:])))
    img[4096:4608] = mh
    img[4096 + 512 : 4096 + 512 + len(raw)] = raw
    return bytes(img)


_LVM_TEXT = """vg0 {
id = "abc"
seqno = 3
status = ["RESIZEABLE", "READ", "WRITE"]
extent_size = 8192
physical_volumes {
pv0 {
id = "Fz0aBc-DeFg-HiJk-LmNo-PqRs-TuVw-XyZ012"
device = "/dev/sdb"
pe_start = 2048
pe_count = 6
}
}
logical_volumes {
data {
id = "x"
status = ["READ", "WRITE", "VISIBLE"]
segment_count = 2
segment1 {
start_extent = 0
extent_count = 2
type = "striped"
stripe_count = 1
stripes = ["pv0", 0]
}
segment2 {
start_extent = 2
extent_count = 1
type = "striped"
stripe_count = 1
stripes = ["pv0", 4]
}
}
thin {
status = ["VISIBLE"]
segment1 {
start_extent = 0
extent_count = 1
type = "thin-pool"
}
}
}
}
contents = "Text Format Volume Group"
version = 1
"""


def _images(tmp: Path) -> Iterator[tuple[str, bytes | None]]:
    mbr = "label: dos\n,4MiB,83\n,12MiB,5\n,4MiB,83\n,4MiB,82\n"
    yield "partitions", _image(tmp, 32 * MiB, "sfdisk", "-q", "{}", stdin=mbr.encode())
    gpt = "label: gpt\n,4MiB,L\n,8MiB,L\n,,L\n"
    yield "partitions", _image(tmp, 32 * MiB, "sfdisk", "-q", "{}", stdin=gpt.encode())
    yield "ntfs", _image(tmp, 8 * MiB, "mkntfs", "-q", "-F", "-Q", "{}")  # its log head: see _RUN_LIMITS
    yield "ext", _image(tmp, 8 * MiB, "mkfs.ext4", "-q", "-F", "{}")
    yield (
        "ext",
        _image(tmp, 8 * MiB, "mkfs.ext4", "-q", "-F", "-O", "^has_journal,64bit,^metadata_csum", "{}"),
    )
    yield "ext", _image(tmp, 4 * MiB, "mkfs.ext2", "-q", "-F", "-b", "1024", "{}")
    yield "xfs", _image(tmp, 300 * MiB, "mkfs.xfs", "-q", "-f", "{}")
    yield "swap", _image(tmp, 1 * MiB, "mkswap", "{}")
    yield "lvm", _pv(32 * MiB, _LVM_TEXT)


#: how much of each run of non-zero sectors a seed keeps (fuzz.image.encode), where 8 KiB is too little:
#: NTFS's $LogFile is clean only if its first 8 KiB are all 0xFF, and it starts inside a longer run
_RUN_LIMITS = {"ntfs": 16 * 1024}

Maker = Callable[[Path], Iterator[tuple[str, bytes | None]]]


def write_seeds(out: Path) -> dict[str, int]:
    """Write every seed under ``out/<target>/``; returns the count per target."""
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="vzrep-seeds-") as t:
        tmp = Path(t)
        makers: list[Maker] = [lambda _: _protocol(), _files, _images]
        for make in makers:
            for target, data in make(tmp):
                if data is None:
                    continue
                if make is _images:
                    data = encode(data, run_limit=_RUN_LIMITS.get(target, 8 * 1024))
                n = counts.get(target, 0)
                counts[target] = n + 1
                (out / target).mkdir(parents=True, exist_ok=True)
                (out / target / f"seed-{n:02d}").write_bytes(data)
    return counts


if __name__ == "__main__":
    print(write_seeds(Path(sys.argv[1])))
