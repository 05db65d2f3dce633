"""Boot a built appliance disk in QEMU the way ESXi would run it (pvscsi disk, vmxnet3 NIC).

Used by the smoke test (``make appliance-test``) and by hand: ``python -m appliance.image.boot
build/appliance/ova/vzrep-disk1.vmdk --ovf-env env.xml``. The OVF environment reaches the guest through
QEMU's fw_cfg (first boot reads ``opt/vzrep/ovfenv``); the disk is opened with ``snapshot=on`` so the
image itself is never modified. QEMU runs under TCG unless ``VZREP_QEMU_ACCEL=kvm``.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accelerator() -> str:
    """TCG unless ``VZREP_QEMU_ACCEL=kvm``: on the build machines /dev/kvm opens but hangs guests."""
    return "kvm" if os.environ.get("VZREP_QEMU_ACCEL") == "kvm" else "tcg"


@dataclass
class BootedVM:
    disk: Path
    serial_log: Path
    ovf_env: Path | None = None
    memory_mib: int = 1024
    forwards: dict[str, int] = field(default_factory=lambda: {"ssh": 22, "agent": 2222, "pairing": 2223})
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0

    def command(self) -> list[str]:
        self.ports = {name: free_port() for name in self.forwards}
        fwd = ",".join(
            f"hostfwd=tcp:127.0.0.1:{self.ports[n]}-:{guest}" for n, guest in self.forwards.items()
        )
        fmt = "vmdk" if self.disk.suffix == ".vmdk" else "raw"
        accel = accelerator()
        cmd = [
            "qemu-system-x86_64", "-machine", f"pc,accel={accel}", "-m", str(self.memory_mib), "-smp", "2",
            "-display", "none", "-no-reboot", "-serial", f"file:{self.serial_log}",
            "-device", "pvscsi,id=scsi0",
            "-drive", f"file={self.disk},format={fmt},if=none,id=disk0,snapshot=on",
            "-device", "scsi-hd,drive=disk0,bus=scsi0.0",
            "-netdev", f"user,id=net0,{fwd}", "-device", "vmxnet3,netdev=net0",
        ]  # fmt: skip
        if self.ovf_env is not None:
            cmd += ["-fw_cfg", f"name=opt/vzrep/ovfenv,file={self.ovf_env}"]
        return cmd

    def __enter__(self) -> BootedVM:
        self.started = time.monotonic()
        with self.qemu_log.open("wb") as err:  # qemu's own messages; a pipe could fill and stall it
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    @property
    def qemu_log(self) -> Path:
        return self.serial_log.with_suffix(".qemu.log")

    def serial(self) -> str:
        try:
            return self.serial_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_banner(self, name: str, timeout: float) -> bytes:
        """Wait until the forwarded port ``name`` answers with an SSH banner; returns it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                err = self.qemu_log.read_text(errors="replace")
                raise RuntimeError(f"qemu exited with {self.process.returncode}: {err}")
            try:
                with socket.create_connection(("127.0.0.1", self.ports[name]), timeout=5) as s:
                    s.settimeout(5)
                    banner = s.recv(256)
                    if banner.startswith(b"SSH-"):
                        return banner
            except OSError:
                pass
            time.sleep(2)
        raise TimeoutError(f"nothing answered on the {name} port within {timeout:.0f}s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m appliance.image.boot", description=__doc__.splitlines()[0])
    ap.add_argument("disk", type=Path)
    ap.add_argument("--ovf-env", type=Path)
    ap.add_argument("--serial-log", type=Path, default=Path("build/appliance/serial.log"))
    args = ap.parse_args(argv)
    with BootedVM(args.disk, args.serial_log, args.ovf_env) as vm:
        print(f"booting; ports {vm.ports}; serial log {args.serial_log}; Ctrl-C stops", flush=True)
        assert vm.process is not None
        try:
            vm.process.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
