"""Assemble a bootable raw disk from a root directory without loop devices or mounts.

Layout (MBR): partition 1 is a small FAT boot partition holding syslinux, the kernel and the
initramfs; partition 2 is the ext4 root, written with ``mke2fs -d`` straight at its offset in the
image file. Nothing here needs a loop device, device-mapper or a mount, so it runs in containers
and CI.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from vzcommon.errors import InputError

SECTOR = 512
MiB = 1024 * 1024
BOOT_START = 1 * MiB
BOOT_SIZE = 64 * MiB
ROOT_START = BOOT_START + BOOT_SIZE
MBR_CODE = Path("/usr/lib/syslinux/mbr/mbr.bin")


@dataclass(frozen=True)
class DiskLayout:
    size: int
    root_uuid: str

    @property
    def root_size(self) -> int:
        return self.size - ROOT_START


def sfdisk_script(layout: DiskLayout) -> str:
    """The partition table: a bootable FAT boot partition, then the Linux root to the end."""
    return (
        "label: dos\n"
        f"start={BOOT_START // SECTOR}, size={BOOT_SIZE // SECTOR}, type=c, bootable\n"
        f"start={ROOT_START // SECTOR}, size={layout.root_size // SECTOR}, type=83\n"
    )


def syslinux_cfg(root_uuid: str) -> str:
    # The serial console comes last so that /dev/console (and boot messages) go to ttyS0, which the
    # smoke test logs; tty1 keeps the vzrep console through the getty override.
    return (
        "SERIAL 0 115200\nDEFAULT vzrep\nPROMPT 0\nTIMEOUT 0\n"
        "LABEL vzrep\n"
        "  LINUX /vmlinuz\n"
        "  INITRD /initrd.img\n"
        f"  APPEND root=UUID={root_uuid} ro quiet systemd.show_status=1 console=tty0 console=ttyS0,115200n8\n"
    )


def fstab(root_uuid: str) -> str:
    return f"UUID={root_uuid} / ext4 errors=remount-ro 0 1\n"


def _run(*cmd: str | Path) -> None:
    subprocess.run([str(c) for c in cmd], check=True, stdout=subprocess.DEVNULL)


def _newest(root: Path, pattern: str) -> Path:
    found = sorted((root / "boot").glob(pattern))
    if not found:
        raise InputError(f"no {pattern} in {root}/boot: the root has no kernel; install linux-image-amd64")
    return found[-1]


def assemble(rootdir: Path, raw: Path, size: int = 2048 * MiB, root_uuid: str | None = None) -> DiskLayout:
    """Write ``raw``: MBR + syslinux boot partition + ext4 root made from ``rootdir``."""
    if not MBR_CODE.exists():
        raise InputError(f"{MBR_CODE} is missing: install syslinux-common (syslinux only recommends it)")
    layout = DiskLayout(size=size, root_uuid=root_uuid or str(uuid.uuid4()))
    (rootdir / "etc" / "fstab").write_text(fstab(layout.root_uuid))
    kernel = _newest(rootdir, "vmlinuz-*")
    initrd = _newest(rootdir, "initrd.img-*")

    raw.unlink(missing_ok=True)
    with raw.open("wb") as f:
        f.truncate(size)
    subprocess.run(["sfdisk", "--quiet", str(raw)], input=sfdisk_script(layout).encode(), check=True)
    with raw.open("r+b") as f:
        f.write(MBR_CODE.read_bytes()[:440])

    boot = raw.with_suffix(".boot.img")
    boot.unlink(missing_ok=True)
    _run("mkfs.vfat", "-n", "VZBOOT", "-C", boot, str(BOOT_SIZE // 1024))
    _run("syslinux", "--install", boot)
    cfg = raw.with_suffix(".syslinux.cfg")
    cfg.write_text(syslinux_cfg(layout.root_uuid))
    for src, name in ((kernel, "vmlinuz"), (initrd, "initrd.img"), (cfg, "syslinux.cfg")):
        _run("mcopy", "-o", "-i", boot, src, f"::/{name}")
    with boot.open("rb") as src_f, raw.open("r+b") as dst_f:
        dst_f.seek(BOOT_START)
        shutil.copyfileobj(src_f, dst_f, 4 * MiB)
    boot.unlink()
    cfg.unlink()

    _run(
        "mke2fs", "-q", "-t", "ext4", "-L", "vzroot", "-U", layout.root_uuid,
        "-d", rootdir, "-E", f"offset={ROOT_START}", raw, f"{layout.root_size // 1024}k",
    )  # fmt: skip
    return layout
