"""Checking a password against an ``/etc/shadow`` hash, through the system's libcrypt.

Python's ``crypt`` module was deprecated in 3.11 and removed in 3.13 (Debian 13's Python), and no
maintained pure-Python library knows every scheme Debian writes (yescrypt by default, SHA-512 and
others before). libcrypt (libxcrypt, the library ``passwd`` and ``login`` themselves use, in every
Debian image) knows them all, so we call its reentrant ``crypt_rn`` through ctypes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hmac
from collections.abc import Callable
from functools import cache
from typing import Any

#: ``sizeof(struct crypt_data)`` in libxcrypt; a smaller buffer makes crypt_rn fail with ERANGE
CRYPT_DATA_SIZE = 32768


class CryptUnavailable(RuntimeError):
    """libcrypt could not be loaded: no password can be checked (the console then refuses)."""


@cache
def _crypt_rn() -> Callable[..., Any]:
    name = "libcrypt.so.1"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError:
        found = ctypes.util.find_library("crypt")
        if found is None:
            raise CryptUnavailable("libcrypt is missing (Debian package libcrypt1)") from None
        lib = ctypes.CDLL(found, use_errno=True)
    fn = lib.crypt_rn
    fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
    fn.restype = ctypes.c_char_p
    return fn


def crypt(phrase: str, setting: str) -> str | None:
    """The hash of ``phrase`` with ``setting`` (a shadow hash or a salt); None if the setting is invalid."""
    data = ctypes.create_string_buffer(CRYPT_DATA_SIZE)
    out: bytes | None = _crypt_rn()(phrase.encode(), setting.encode(), data, CRYPT_DATA_SIZE)
    if out is None or out.startswith(b"*"):  # NULL, or a failure token ("*0", "*1")
        return None
    return out.decode("ascii")


def verify(password: str, hashed: str) -> bool:
    """Whether ``password`` matches the shadow hash ``hashed`` (locked or empty hashes never match)."""
    if not hashed or hashed[0] in "!*":
        return False
    result = crypt(password, hashed)
    return result is not None and hmac.compare_digest(result, hashed)
