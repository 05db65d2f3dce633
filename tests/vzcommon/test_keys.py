"""Private keys are created 0600, never through a symlink, whatever is left over or the umask is."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from vzcommon import keys
from vzcommon.errors import ExitCode, InputError


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_leftover_temporary_file_does_not_lend_its_mode(tmp_path: Path) -> None:
    key = tmp_path / "id"
    leftover = tmp_path / ".id.tmp"  # what a crash of an earlier keygen (atomic_write) left behind
    leftover.write_bytes(b"half a key")
    leftover.chmod(0o644)
    keys.generate(key)
    assert mode(key) == 0o600
    assert keys.public_line(key).startswith("ssh-ed25519 ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["id", "id.pub"]  # the leftover is gone too


def test_a_symlink_planted_at_the_temporary_name_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / ".id.tmp").symlink_to(victim)
    keys.generate(tmp_path / "keys" / "id")
    assert victim.read_text() == "precious\n" and mode(victim) == 0o644
    assert mode(tmp_path / "keys" / "id") == 0o600
    assert not (tmp_path / "keys" / "id").is_symlink()
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["id", "id.pub"]


@pytest.mark.parametrize("dangling", [False, True], ids=["to a file", "dangling"])
def test_a_symlink_at_the_key_path_is_refused(tmp_path: Path, dangling: bool) -> None:
    elsewhere = tmp_path / "elsewhere"
    if not dangling:
        elsewhere.write_text("someone else's file\n")
    key = tmp_path / "id"
    key.symlink_to(elsewhere)
    for make in (lambda: keys.generate(key), lambda: keys.ensure(key, "c")):
        with pytest.raises(InputError, match="is a symbolic link: refusing"):
            make()
    assert key.is_symlink()
    if dangling:
        assert not elsewhere.exists()
    else:
        assert elsewhere.read_text() == "someone else's file\n"


def test_ensure_does_not_trust_a_symlink_to_a_real_key(tmp_path: Path) -> None:
    keys.generate(tmp_path / "real")
    (tmp_path / "id").symlink_to(tmp_path / "real")
    with pytest.raises(InputError, match="symbolic link"):
        keys.ensure(tmp_path / "id", "c")


def keygen(path: Path, umask: int) -> subprocess.CompletedProcess[str]:
    code = f"import os, sys\nos.umask({umask})\nfrom vzcommon.keycli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run([sys.executable, "-c", code, "keygen", str(path)], capture_output=True, text=True)


def test_keygen_under_umask_0_still_writes_0600(tmp_path: Path) -> None:
    leftover = tmp_path / ".id.tmp"
    leftover.write_bytes(b"")
    leftover.chmod(0o666)
    proc = keygen(tmp_path / "id", 0)
    assert proc.returncode == 0, proc.stderr
    assert mode(tmp_path / "id") == 0o600
    assert mode(tmp_path / "id.pub") == 0o644


def test_keygen_refuses_a_symlink_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "id").symlink_to(tmp_path / "nowhere")
    proc = keygen(tmp_path / "id", 0o022)
    assert proc.returncode == ExitCode.INPUT == 3
    assert proc.stderr.startswith(f"vzrep: {tmp_path / 'id'} is a symbolic link") and proc.stderr.count("\n") == 1
    assert not (tmp_path / "nowhere").exists()
