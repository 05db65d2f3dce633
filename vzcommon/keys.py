"""SSH keys for the tunnel: generate, load, fingerprint (the asyncssh key adapter)."""

from __future__ import annotations

from pathlib import Path

from .durable import atomic_write
from .errors import InputError
from .ssh import asyncssh


def generate(path: Path, comment: str = "vzrep") -> tuple[str, str]:
    """Write an Ed25519 key pair (``path`` and ``path.pub``); returns (public line, SHA256 fingerprint)."""
    if path.exists():
        raise InputError(f"{path} already exists; remove it first or choose another path")
    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, key.export_private_key(), mode=0o600)
    pub = key.export_public_key().decode().strip()
    atomic_write(path.with_name(path.name + ".pub"), (pub + "\n").encode(), mode=0o644)
    return pub, key.get_fingerprint("sha256")


def known_hosts_line(host: str, port: int, public_line: str) -> str:
    """A known_hosts line pinning ``public_line`` for ``host:port``."""
    keytype, b64 = public_line.split()[:2]
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {keytype} {b64}\n"
