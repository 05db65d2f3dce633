"""A throwaway OpenSSH server on 127.0.0.1, for the tests and the benchmarks alike.

It makes everything it needs itself: its keys, its config, and sshd's privilege-separation directory
(``/run/sshd`` in Debian's build), which a fresh machine or a fresh ``/run`` does not have. Without it
sshd exits 255 at start with "Missing privilege separation directory"; a test that leaned on a
directory left behind by an earlier run once passed on our machine and failed on a new one.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

#: sshd's compiled-in privilege-separation directory (Debian: _PATH_PRIVSEP_CHROOT_DIR)
PRIVSEP_DIR = Path("/run/sshd")
AES256_GCM = "aes256-gcm@openssh.com"


def tool(name: str) -> str:
    """A program from openssh-client/-server or rsync, with one line saying how to get it."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
    if path is None:
        raise SystemExit(f"{name} is missing: run `make sysdeps` (apt-get install -y openssh-server rsync)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """Until something accepts on 127.0.0.1:port; fails at once if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def ensure_privsep_dir() -> None:
    """sshd refuses to start without it; root-owned and not group/world-writable, as sshd checks."""
    PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)


@dataclass
class Sshd:
    """sshd with its own host key, one client key (root logs in with it) and the given ciphers."""

    dir: Path
    ciphers: str = AES256_GCM
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def host_key(self) -> Path:
        return self.dir / "host_key"

    @property
    def client_key(self) -> Path:
        return self.dir / "client_key"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def log_path(self) -> Path:
        return self.dir / "sshd.log"

    def start(self, authorized_keys: Path | None = None) -> Sshd:
        """Start it and wait until it listens; ``authorized_keys`` defaults to our client key."""
        self.dir.mkdir(parents=True, exist_ok=True)
        keygen = tool("ssh-keygen")
        for key in (self.host_key, self.client_key):
            if not key.exists():
                subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        if authorized_keys is None:
            authorized_keys = self.dir / "authorized_keys"
            authorized_keys.write_text(self.client_key.with_suffix(".pub").read_text())
        self.port = free_port()
        config = self.dir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key}",
                    f"AuthorizedKeysFile {authorized_keys}",
                    f"PidFile {self.dir / 'sshd.pid'}",
                    f"Ciphers {self.ciphers}",
                    "UsePAM no",
                    "StrictModes no",
                    "PermitRootLogin prohibit-password",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "Compression no",
                    "PrintMotd no",
                    "AcceptEnv none",
                    "",
                ]
            )
        )
        host_pub = self.host_key.with_suffix(".pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        ensure_privsep_dir()
        self.log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [tool("sshd"), "-D", "-e", "-f", str(config)], stdout=self.log, stderr=self.log
        )
        try:
            wait_port(self.port, self.proc)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(
                f"sshd did not start: {exc}; its log: {self.log_path.read_text()[-2000:]}"
            ) from None
        return self

    def ssh_args(self) -> list[str]:
        """The ssh command line (without the remote command); VERBOSE logs the bytes transferred."""
        return [
            tool("ssh"),
            "-c",
            self.ciphers,
            "-p",
            str(self.port),
            "-i",
            str(self.client_key),
            "-F",
            "/dev/null",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "Compression=no",
            "-o",
            "LogLevel=VERBOSE",
            "-l",
            "root",
        ]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log:
            self.log.close()
            self.log = None

    def __enter__(self) -> Sshd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
