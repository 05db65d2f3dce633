"""asyncssh, imported without its probes for native libraries the tunnel never uses.

When imported, asyncssh looks for liboqs (sntrup761 key exchange) and nettle (UMAC MACs) with
``ctypes.util.find_library``, which runs ``ldconfig`` and then ``gcc`` for each name it misses: about
50 ms at every start of an agent or of a CLI command. :mod:`vzcommon.tunnel_policy` offers neither
algorithm family (ML-KEM, when wanted, comes from ``cryptography``, not liboqs), so while asyncssh
is imported those names are answered "not installed". Import asyncssh from here, first::

    from vzcommon.ssh import asyncssh

cryptography 51 deprecated DSA, and asyncssh 2.24 names DSA classes in annotations it evaluates at
import: a screen of ``CryptographyDeprecationWarning`` on every start. The tunnel never offers or
accepts DSA (:mod:`vzcommon.tunnel_policy`), so that one warning, raised from asyncssh's modules while
they load, is ignored here, and nothing else is.
"""

from __future__ import annotations

import ctypes.util
import sys
import warnings

#: the names asyncssh 2.x asks ``find_library`` for (crypto/pq.py, crypto/umac.py)
UNUSED_NATIVE_LIBS = frozenset({"oqs", "liboqs", "nettle", "libnettle", "libnettle-6"})


def _import_asyncssh() -> None:
    if "asyncssh" in sys.modules:
        return
    real = ctypes.util.find_library

    def find_library(name: str) -> str | None:
        return None if name in UNUSED_NATIVE_LIBS else real(name)

    ctypes.util.find_library = find_library
    try:
        with warnings.catch_warnings():
            _ignore_dsa_deprecation()
            import asyncssh  # noqa: F401
    finally:
        ctypes.util.find_library = real


def _ignore_dsa_deprecation() -> None:
    """Ignore cryptography's DSA deprecation where asyncssh's own modules trigger it (and only there)."""
    try:
        from cryptography.utils import CryptographyDeprecationWarning
    except ImportError:  # a cryptography without the class warns about nothing here
        return
    warnings.filterwarnings(
        "ignore", message="DSA is deprecated", category=CryptographyDeprecationWarning, module=r"asyncssh(\.|$)"
    )


_import_asyncssh()

import asyncssh  # noqa: E402  (loaded above: this binds the module here)

from . import tunnel_policy  # noqa: E402


def _pq_kex_algs() -> list[str]:
    """The policy's post-quantum hybrids this asyncssh can run (ML-KEM needs a ``cryptography`` built
    with it, as the locked wheels are)."""
    try:
        from asyncssh.kex import get_kex_algs

        have = {alg.decode() for alg in get_kex_algs()}
    except (ImportError, AttributeError):  # an asyncssh without the listing: offer the classic ones
        have = set()
    return [alg for alg in tunnel_policy.PQ_KEX_ALGS if alg in have]


def kex_algs() -> list[str]:
    """The source's key exchanges, in order of preference: the post-quantum hybrids, then Curve25519
    (for a peer without ML-KEM, such as OpenSSH before 9.9; the server's list decides what a session
    can use, and both lists are in the exchange hash, so nobody between can take the hybrid away)."""
    return _pq_kex_algs() + list(tunnel_policy.KEX_ALGS)


def server_kex_algs() -> list[str]:
    """The target's key exchanges: the post-quantum hybrids alone, Curve25519 only where this asyncssh
    can run none. A server offering Curve25519 beside ML-KEM lets a client pick a key exchange that a
    recording of today's traffic can be broken with later (ssh-audit warns about it)."""
    return _pq_kex_algs() or list(tunnel_policy.KEX_ALGS)


__all__ = ["asyncssh", "kex_algs", "server_kex_algs"]
