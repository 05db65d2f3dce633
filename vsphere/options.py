"""How to reach vCenter/ESXi: credentials, session token, and the TLS policy.

TLS is verified against the system CAs (or ``cafile``) by default. A self-signed host is trusted by
pinning the SHA-256 thumbprint of its certificate; the pin is checked on every TLS connection the
client opens (pyVmomi opens several), not once. ``insecure`` turns verification off and logs a
warning every time it is used.

pyVmomi's own default skips verification for ``localhost``/``127.0.0.1``; we always hand it an explicit
context, so that default never applies.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

from vzcommon.errors import InputError, VSphereError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Credentials:
    host: str | None
    user: str
    password: str
    port: int | None = None

    def __repr__(self) -> str:  # never print the password
        return f"Credentials(host={self.host!r}, user={self.user!r}, port={self.port!r})"


@dataclass(frozen=True)
class ConnectOptions:
    host: str
    port: int = 443
    credentials: Credentials | None = None
    session_token: str | None = None  # a vmware_soap_session id of an existing session
    thumbprint: str | None = None  # SHA-256 of the server certificate (hex, colons allowed)
    cafile: str | None = None
    insecure: bool = False
    task_timeout: float = 600.0
    connect_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.credentials is None and not self.session_token:
            raise InputError("vSphere: give a credentials file (--credentials) or a session token")
        if self.thumbprint is not None:
            normalise_thumbprint(self.thumbprint)  # validate early
        if self.insecure and self.thumbprint:
            raise InputError("vSphere: --insecure and --thumbprint exclude each other; pin the thumbprint")


def load_credentials(path: str | os.PathLike[str]) -> Credentials:
    """Read ``key = value`` lines (host, port, user, password); refuse a file others can read."""
    p = Path(path)
    try:
        st = p.stat()
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot read the vSphere credentials file {p}: {e.strerror}") from e
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise InputError(
            f"the vSphere credentials file {p} is readable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {p}"
        )
    values: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise InputError(f"{p} line {n}: expected 'key = value'")
        values[key.strip().lower()] = value.strip()
    missing = [k for k in ("user", "password") if not values.get(k)]
    if missing:
        raise InputError(f"the vSphere credentials file {p} has no {' or '.join(missing)}")
    port = values.get("port")
    if port is not None and not port.isdigit():
        raise InputError(f"{p}: port must be a number, not {port!r}")
    return Credentials(
        host=values.get("host") or None,
        user=values["user"],
        password=values["password"],
        port=int(port) if port else None,
    )


def normalise_thumbprint(value: str) -> str:
    t = value.replace(":", "").strip().lower()
    if len(t) != 64 or any(c not in "0123456789abcdef" for c in t):
        raise InputError(
            f"vSphere thumbprint {value!r} is not a SHA-256 fingerprint (64 hex digits, colons allowed)"
        )
    return t


def sha256_thumbprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


class _PinnedSocket(ssl.SSLSocket):
    """An SSLSocket that checks the peer certificate's SHA-256 against the pin after each handshake."""

    pin: str = ""

    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        der = self.getpeercert(binary_form=True)
        actual = sha256_thumbprint(der) if der else "(no certificate)"
        if actual != self.pin:
            self.close()
            raise ssl.SSLCertVerificationError(
                f"certificate thumbprint mismatch: pinned {self.pin}, the server presented {actual}"
            )


def ssl_context(opts: ConnectOptions) -> ssl.SSLContext:
    if opts.thumbprint:
        pin = normalise_thumbprint(opts.thumbprint)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # replaced by the pin check in _PinnedSocket
        sock_class = type("PinnedSocket", (_PinnedSocket,), {"pin": pin})
        ctx.sslsocket_class = sock_class
        return ctx
    if opts.insecure:
        log.warning(
            "TLS certificate verification of vSphere host %s is OFF (--insecure): anyone on the path "
            "can read the vSphere password; pin the certificate with --thumbprint instead",
            opts.host,
        )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=opts.cafile)


def server_thumbprint(host: str, port: int, timeout: float = 10.0) -> str:
    """The SHA-256 thumbprint the server presents (unverified: for error messages and for the user to
    compare with the host's console, never as trust by itself)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=host) as tls:
                der = tls.getpeercert(binary_form=True)
    except OSError as e:
        raise VSphereError(f"cannot reach vSphere host {host}:{port}: {e}") from e
    if not der:
        raise VSphereError(f"vSphere host {host}:{port} presented no certificate")
    return sha256_thumbprint(der)
