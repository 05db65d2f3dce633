"""The console's password check (libcrypt through ctypes) against hashes made by independent tools."""

from __future__ import annotations

import subprocess
import sys

import pytest

from appliance.console import password


def made_by(cmd: list[str]) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize(
    "cmd",
    [
        ["mkpasswd", "--method=yescrypt", "correct horse"],  # Debian's default since 11
        ["mkpasswd", "--method=sha512crypt", "correct horse"],
        ["openssl", "passwd", "-6", "correct horse"],
        ["openssl", "passwd", "-5", "correct horse"],
        ["openssl", "passwd", "-1", "correct horse"],
    ],
    ids=["yescrypt", "sha512-mkpasswd", "sha512-openssl", "sha256", "md5"],
)
def test_hashes_of_every_debian_scheme_verify(cmd: list[str]) -> None:
    hashed = made_by(cmd)
    assert password.verify("correct horse", hashed)
    assert not password.verify("correct horsE", hashed)
    assert not password.verify("", hashed)
    assert password.crypt("correct horse", hashed) == hashed


@pytest.mark.parametrize("hashed", ["", "!", "*", "!$6$abc$def", "*LK*"])
def test_locked_or_empty_hashes_never_match(hashed: str) -> None:
    assert not password.verify("", hashed)
    assert not password.verify("anything", hashed)


def test_an_invalid_setting_is_no_match_not_an_error() -> None:
    assert password.crypt("x", "$99$nonsense") is None
    assert not password.verify("x", "$99$nonsense")


def test_the_check_needs_no_crypt_module() -> None:
    """Python 3.13 has no ``crypt``: a fresh interpreter where importing it fails must still verify."""
    hashed = made_by(["openssl", "passwd", "-6", "pw"])
    code = (
        "import sys; sys.modules['crypt'] = None\n"
        "from appliance.console import password\n"
        f"assert password.verify('pw', {hashed!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
