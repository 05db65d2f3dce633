"""SSH keys for the tunnel and for pairing: make, load, check, fingerprint, pin (the asyncssh key adapter).

Private keys are OpenSSH-format files (mode 0600, created atomically, never through a symlink); public keys travel as
OpenSSH one-line strings (``ssh-ed25519 AAAA... comment``); fingerprints are OpenSSH's SHA256 form.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from .durable import atomic_write, create_durable
from .errors import InputError, PairingError
from .ssh import asyncssh

MAX_PUBLIC_LINE = 8192


def _refuse_symlink(path: Path) -> bool:
    """Whether something is at ``path``; a symlink there is refused (a private key is never written or
    trusted through one: it may point anywhere)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise InputError(f"cannot check the key path {path}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise InputError(
            f"{path} is a symbolic link: refusing to use it as a private key; remove it or give the real path"
        )
    return True


def generate(path: Path, comment: str = "vzrep") -> tuple[str, str]:
    """Write an Ed25519 key pair (``path`` and ``path.pub``); returns (public line, SHA256 fingerprint).

    The private key is created with mode 0600 whatever the umask, only if nothing is at ``path`` and
    never through a symlink (:func:`vzcommon.durable.create_durable`)."""
    exists = f"{path} already exists; remove it first or choose another path"
    if _refuse_symlink(path):
        raise InputError(exists)
    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    path.parent.mkdir(parents=True, exist_ok=True)
    # What an interrupted keygen of an earlier version left (its atomic_write's temporary file, maybe
    # a private key, maybe readable by all): removed, never reused (a symlink there: the link only).
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path.with_name(f".{path.name}.tmp"))
    try:
        create_durable(path, key.export_private_key("openssh"), mode=0o600)
    except FileExistsError:  # appeared meanwhile: a symlink or a file, either way not ours
        _refuse_symlink(path)
        raise InputError(exists) from None
    except OSError as exc:
        raise InputError(f"cannot write the private key {path}: {exc.strerror or exc}") from None
    pub = key.export_public_key("openssh").decode().strip()
    atomic_write(path.with_name(path.name + ".pub"), (pub + "\n").encode(), mode=0o644)
    return pub, key.get_fingerprint("sha256")


def ensure(private_path: Path, comment: str) -> str:
    """The public line of ``private_path``, generating the pair if it does not exist yet (a symlink
    there is refused, as by :func:`generate`)."""
    if not _refuse_symlink(private_path):
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
