"""Every entry point starts without a word on stderr, whatever cryptography release is installed.

cryptography 51 deprecated DSA and asyncssh names DSA classes at import, so a new release once made
every command print a screen of warnings (and made the suite fail at import). The commands run as
subprocesses, as a user runs them, with every warning shown (``-W always``), twice: with the
installed cryptography, and with cryptography's DSA names deprecated the way 51 does it, so the
check holds while the lock pins an older release.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS: dict[str, str] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]

#: what cryptography 51 does to the DSA module, applied to whatever release is installed
DEPRECATE_DSA = """
import warnings
from cryptography import utils
from cryptography.hazmat.primitives.asymmetric import dsa
NAMES = ("generate_parameters", "generate_private_key", "DSAPrivateKey", "DSAPublicKey",
         "DSAPrivateNumbers", "DSAPublicNumbers", "DSAParameterNumbers", "DSAParameters")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    values = {n: getattr(dsa, n) for n in NAMES if hasattr(dsa, n)}
for name, value in values.items():
    utils.deprecated(value, dsa.__name__, "DSA is deprecated and support will be removed in a future "
                     "release. Use a more modern signature algorithm.", utils.CryptographyDeprecationWarning,
                     name=name)
with warnings.catch_warnings(record=True) as seen:  # the simulation itself must work
    warnings.simplefilter("always")
    dsa.DSAPublicKey
assert any("DSA is deprecated" in str(w.message) for w in seen), "the DSA deprecation was not simulated"
"""


def run_entry(
    script: str, args: list[str], tmp_path: Path, deprecate_dsa: bool
) -> subprocess.CompletedProcess[str]:
    module, func = SCRIPTS[script].split(":")
    prelude = DEPRECATE_DSA if deprecate_dsa else ""
    code = f"{prelude}\nimport sys\nsys.argv = {[script, *args]!r}\nfrom {module} import {func}\nsys.exit({func}())\n"
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(tmp_path), "LANG": "C.UTF-8"},
    )


@pytest.mark.parametrize("deprecate_dsa", [False, True], ids=["installed", "dsa-deprecated"])
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_prints_nothing_on_stderr(script: str, deprecate_dsa: bool, tmp_path: Path) -> None:
    proc = run_entry(script, ["--help"], tmp_path, deprecate_dsa)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip(), "--help printed no help"
    assert proc.stderr == ""


@pytest.mark.parametrize("deprecate_dsa", [False, True], ids=["installed", "dsa-deprecated"])
@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("vzrep", ["keygen", "key"]),  # loads asyncssh and writes a key with it
        ("vzrep-target", ["status", "--data-dir", "data"]),
        ("vzrep-source", ["pair-status"]),
    ],
    ids=["keygen", "target-status", "source-pair-status"],
)
def test_commands_that_load_asyncssh_print_no_warning(
    script: str, args: list[str], deprecate_dsa: bool, tmp_path: Path
) -> None:
    (tmp_path / "data").mkdir()
    proc = run_entry(script, args, tmp_path, deprecate_dsa)
    assert "Warning" not in proc.stderr, proc.stderr
    if script == "vzrep":
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "key").exists() and proc.stderr == ""


def test_our_own_warnings_are_not_hidden() -> None:
    """The filter is for asyncssh's DSA import only: a warning of ours still shows."""
    code = (
        "import warnings\nfrom vzcommon.ssh import asyncssh\n"
        "from cryptography.utils import CryptographyDeprecationWarning\n"
        "warnings.warn('DSA is deprecated (ours)', CryptographyDeprecationWarning)\n"
        "warnings.warn('a warning of ours', UserWarning)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, check=True
    )
    assert "DSA is deprecated (ours)" in proc.stderr and "a warning of ours" in proc.stderr
