"""SSH keys for the tunnel and for pairing: make, load, check, fingerprint, pin (the asyncssh key adapter).

Private keys are OpenSSH-format files (mode 0600, written atomically); public keys travel as
OpenSSH one-line strings (``ssh-ed25519 AAAA... comment``); fingerprints are OpenSSH's SHA256 form.
"""

from __future__ import annotations

import os
from pathlib import Path

from .durable import atomic_write
from .errors import InputError, PairingError
from .ssh import asyncssh

MAX_PUBLIC_LINE = 8192


def generate(path: Path, comment: str = "vzrep") -> tuple[str, str]:
    """Write an Ed25519 key pair (``path`` and ``path.pub``); returns (public line, SHA256 fingerprint)."""
    if path.exists():
        raise InputError(f"{path} already exists; remove it first or choose another path")
    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, key.export_private_key("openssh"), mode=0o600)
    pub = key.export_public_key("openssh").decode().strip()
    atomic_write(path.with_name(path.name + ".pub"), (pub + "\n").encode(), mode=0o644)
    return pub, key.get_fingerprint("sha256")


def ensure(private_path: Path, comment: str) -> str:
    """The public line of ``private_path``, generating the pair if it does not exist yet."""
    if not private_path.exists():
        return generate(private_path, comment)[0]
    return public_line(private_path)


def public_line(private_path: Path) -> str:
    try:
        key = asyncssh.read_private_key(os.fspath(private_path))
    except (OSError, asyncssh.KeyImportError) as exc:
        raise InputError(f"cannot read the private key {private_path}: {exc}") from None
    return key.export_public_key("openssh").decode().strip()


def check_public(line: str) -> str:
    """Validate a peer's public key line (untrusted); returns it without its comment."""
    if len(line) > MAX_PUBLIC_LINE or not line.isprintable():
        raise PairingError("the peer sent a malformed public key")
    try:
        key = asyncssh.import_public_key(line)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise PairingError(f"the peer sent an unusable public key: {exc}") from None
    return key.export_public_key("openssh").decode().strip()


def fingerprint(line: str) -> str:
    """OpenSSH SHA256 fingerprint of a public key line."""
    try:
        return str(asyncssh.import_public_key(line).get_fingerprint("sha256"))
    except (asyncssh.KeyImportError, ValueError):
        return "(unreadable key)"


def known_hosts_line(host: str, port: int, public: str) -> str:
    """A known_hosts line (no newline) pinning the public key line ``public`` for ``host:port``.

    ``[host]:port keytype base64`` as OpenSSH writes it; port 22 is written without brackets.
    """
    keytype, b64 = public.split()[:2]
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {keytype} {b64}"
