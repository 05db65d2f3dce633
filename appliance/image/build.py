"""``make appliance``: build the appliance image with no ISO and no VM.

Steps: stage the project's wheel and its dependencies' wheels (as locked in requirements/runtime.txt); mmdebstrap a Debian bookworm root
(systemd, python3, open-vm-tools, the kernel) whose customize hook runs the same provision script as
the packer builds; assemble a raw disk (:mod:`appliance.image.disk`); convert it and pack the OVA
(:mod:`appliance.image.ovf`). Outputs go to ``build/appliance/`` (ignored by git).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from appliance.image import disk, ovf

PACKAGES = (
    "systemd,systemd-sysv,systemd-resolved,systemd-timesyncd,udev,dbus,linux-image-amd64,"
    "initramfs-tools,python3,python3-venv,open-vm-tools,openssh-server,iproute2,less,kmod,passwd,"
    # sudo: vzadmin administers the appliance (job files, units, logs); see provision.sh
    "sudo,"
    # qemu-img and qemu-io: failover deltas and their commit (target_agent/storage/failover.py)
    "qemu-utils"
)
REPO = Path(__file__).resolve().parents[2]
RUNTIME_LOCK = REPO / "requirements" / "runtime.txt"


def log(msg: str) -> None:
    print(f"[appliance] {msg}", flush=True)


def stage(stage_dir: Path, python: str) -> None:
    """Everything the provision script needs, in one directory copied into the root."""
    if stage_dir.exists():
        shutil.rmtree(stage_dir)
    wheels = stage_dir / "wheels"
    wheels.mkdir(parents=True)
    # Our wheel, built by the locked setuptools of the venv that runs this (no build isolation).
    subprocess.run(
        [python, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPO)],
        check=True,
    )
    # Its dependencies exactly as locked (requirements/runtime.txt, hashes checked), as wheels for the
    # appliance's python3 (bookworm: CPython 3.11, x86_64 glibc). Our own wheel is tagged linux_x86_64
    # (it holds the scan kernel, compiled here for any x86-64 CPU); the image installs from these
    # files only (provision.sh: --no-index), so it gets what the test suite ran with.
    subprocess.run(
        [python, "-m", "pip", "download", "-q", "-d", str(wheels), "--only-binary=:all:", "--no-deps",
         "--require-hashes", "-r", str(RUNTIME_LOCK),
         "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", "--abi", "abi3",
         "--abi", "none", "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64",
         "--platform", "manylinux_2_28_x86_64", "--platform", "linux_x86_64", "--platform", "any"],
        check=True,
    )  # fmt: skip
    shutil.copytree(REPO / "appliance" / "systemd", stage_dir / "systemd")
    shutil.copytree(REPO / "appliance" / "rootfs", stage_dir / "rootfs")
    shutil.copy2(REPO / "appliance" / "rootfs" / "provision.sh", stage_dir / "provision.sh")


def build_base(base: Path, mirror: str | None) -> None:
    """The Debian root before provisioning, cached: it depends only on PACKAGES."""
    stamp = base / ".vzrep-packages"
    if stamp.exists() and stamp.read_text() == PACKAGES:
        return
    if base.exists():
        shutil.rmtree(base)
    cmd = ["mmdebstrap", "--quiet", "--variant=apt", f"--include={PACKAGES}", "bookworm", str(base)]
    if mirror:
        cmd.append(mirror)
    subprocess.run(cmd, check=True)
    stamp.write_text(PACKAGES)


def provision(base: Path, stage_dir: Path, rootdir: Path) -> None:
    """Copy the base root and run the provision script in it (the same script packer runs)."""
    if rootdir.exists():
        shutil.rmtree(rootdir)
    subprocess.run(["cp", "-a", str(base), str(rootdir)], check=True)
    (rootdir / ".vzrep-packages").unlink()
    inside = Path("/tmp") / stage_dir.name
    shutil.copytree(stage_dir, rootdir / inside.relative_to("/"))
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
    subprocess.run(["chroot", str(rootdir), "sh", f"{inside}/provision.sh", str(inside)], check=True, env=env)
    shutil.rmtree(rootdir / inside.relative_to("/"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m appliance.image.build", description=__doc__)
    ap.add_argument("--out", type=Path, default=REPO / "build" / "appliance")
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--mirror", default=os.environ.get("VZREP_DEBIAN_MIRROR"))
    ap.add_argument("--python", default=sys.executable, help="python whose pip stages the wheels")
    ap.add_argument("--stage-only", action="store_true", help="only stage wheels and scripts (for packer)")
    args = ap.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    rootdir, raw = out / "rootfs", out / "vzrep.raw"
    t0 = time.monotonic()
    log("staging wheels")
    stage(out / "vzrep-stage", args.python)
    if args.stage_only:
        log(f"staged {out / 'vzrep-stage'}")
        return 0
    log(f"mmdebstrap bookworm -> {out / 'base'} (reused when its package list is unchanged)")
    build_base(out / "base", args.mirror)
    log(f"provisioning {rootdir} ({time.monotonic() - t0:.0f}s)")
    provision(out / "base", out / "vzrep-stage", rootdir)
    log(f"assembling {raw} ({time.monotonic() - t0:.0f}s)")
    layout = disk.assemble(rootdir, raw, args.size_mib * disk.MiB)
    log(f"root filesystem UUID {layout.root_uuid}; converting to streamOptimized VMDK")
    ova = ovf.make_ova(raw, out / "ova")
    log(f"done in {time.monotonic() - t0:.0f}s: {ova} ({ova.stat().st_size // disk.MiB} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
