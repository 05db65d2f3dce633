"""``vzrep-source pass`` checks VM and disk names before it opens, creates or connects to anything.

Each case runs the real command line as a subprocess against a port where nothing listens: a name
checked late would end in "connection refused" (exit 4), an internal error (exit 1), or a vSphere
error after directories were made; checked first, it is exit 3 with the rule in one line.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.agents import Keys
from tests.support.openssh import free_port
from tests.support.tools import make_image
from vzcommon.errors import ExitCode

RULE = "use 1-64 letters, digits, '.', '_', '+' or '-'"

BAD_VM_NAMES = {
    "dot-dot path": "../../x",
    "absolute path": "{tmp}/outside",
    "300 characters": "v" * 300,
    "empty": "",
}


def source(*args: str) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "source_agent.cli", "pass", *args], capture_output=True, text=True, timeout=60
    )
    return proc.returncode, proc.stderr


def common(tmp_path: Path, keys: Keys, vm: str) -> list[str]:
    port = free_port()
    return [
        "--target", f"127.0.0.1:{port}", "--identity", str(keys.client_key),
        "--known-hosts", str(keys.known_hosts(port, f"kh-{port}")), "--vm", vm,
        "--state-dir", str(tmp_path / "box" / "state"), "--no-progress",
    ]  # fmt: skip


def assert_refused(rc: int, err: str, what: str, tmp_path: Path) -> None:
    assert rc == ExitCode.INPUT == 3, err
    assert err.startswith(f"vzrep-source: invalid {what} name ") and err.count("\n") == 1, err
    assert RULE in err
    assert not (tmp_path / "box").exists(), "a directory was created before the name was checked"


@pytest.mark.parametrize("vm", BAD_VM_NAMES.values(), ids=BAD_VM_NAMES.keys())
def test_bad_vm_name_is_refused_first(tmp_path: Path, session_keys: Keys, vm: str) -> None:
    disk = make_image(tmp_path / "d.img", 1 << 20, data_blocks=2)
    rc, err = source(*common(tmp_path, session_keys, vm.format(tmp=tmp_path)), "--disk", str(disk))
    assert_refused(rc, err, "VM", tmp_path)


BAD_DISK_SPECS = {
    "dot-dot": "..={img}",
    "300 characters": "d" * 300 + "={img}",
    "empty": "={img}",
    "a space": "my disk={img}",
}


@pytest.mark.parametrize("spec", BAD_DISK_SPECS.values(), ids=BAD_DISK_SPECS.keys())
def test_bad_disk_name_is_refused_first(tmp_path: Path, session_keys: Keys, spec: str) -> None:
    disk = make_image(tmp_path / "d.img", 1 << 20, data_blocks=2)
    rc, err = source(*common(tmp_path, session_keys, "web01"), "--disk", spec.format(img=disk))
    assert_refused(rc, err, "disk", tmp_path)


@pytest.mark.parametrize("vm", ["../../x", "{tmp}/outside"], ids=["dot-dot path", "absolute path"])
def test_vcenter_pass_with_a_bad_vm_name_creates_nothing(tmp_path: Path, session_keys: Keys, vm: str) -> None:
    creds = tmp_path / "creds"
    creds.write_text("user=administrator@vsphere.local\npassword=x\n")
    creds.chmod(0o600)
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, err = source(
        *common(tmp_path, session_keys, vm.format(tmp=tmp_path)),
        "--vcenter", f"127.0.0.1:{free_port()}", "--credentials", str(creds), "--insecure",
    )  # fmt: skip
    assert_refused(rc, err, "VM", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # neither box/x nor outside/
