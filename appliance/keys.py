"""SSH key files of the appliance: the one place in appliance/ that imports asyncssh.

Private keys are OpenSSH-format files (mode 0600, written atomically); public keys travel as
OpenSSH one-line strings (``ssh-ed25519 AAAA... comment``); fingerprints are OpenSSH's SHA256 form.
"""

from __future__ import annotations

import os
from pathlib import Path

from vzcommon.durable import atomic_write
from vzcommon.errors import InputError, PairingError
from vzcommon.ssh import asyncssh

MAX_PUBLIC_LINE = 8192


def generate(private_path: Path, comment: str) -> str:
    """Create an Ed25519 key pair (``private_path`` and ``.pub``); returns the public line."""
    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    private_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(private_path, key.export_private_key("openssh"), mode=0o600)
    public = key.export_public_key("openssh").decode().strip()
    atomic_write(private_path.with_name(private_path.name + ".pub"), (public + "\n").encode(), mode=0o644)
    return public


def ensure(private_path: Path, comment: str) -> str:
    """The public line of ``private_path``, generating the pair if it does not exist yet."""
    if not private_path.exists():
        return generate(private_path, comment)
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
    """``[host]:port keytype base64`` as OpenSSH writes it for non-default ports."""
    keytype, b64 = public.split()[:2]
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {keytype} {b64}"
