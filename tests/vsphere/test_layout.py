"""The rules of the vsphere/ package, checked on the source: pyVmomi only behind it, the agents
share it instead of importing each other, and an agent loads pyVmomi only for a vSphere job."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("protocol", "vzcommon", "vsphere", "source_agent", "target_agent", "appliance", "bench")


def imports(package: str) -> dict[str, set[str]]:
    """Module path -> the top-level names of what it imports (TYPE_CHECKING imports included)."""
    out: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        out[str(path.relative_to(ROOT))] = names
    return out


def test_only_vsphere_vmomi_imports_pyvmomi() -> None:
    found = [m for p in PACKAGES for m, names in imports(p).items() if names & {"pyVmomi", "pyVim"}]
    assert found == ["vsphere/vmomi.py"]


def test_the_agents_do_not_import_each_other_and_vsphere_imports_neither() -> None:
    rules = {"source_agent": {"target_agent"}, "target_agent": {"source_agent"}}
    rules["vsphere"] = {"source_agent", "target_agent", "appliance", "bench"}
    wrong = {
        m: sorted(names & banned)
        for package, banned in rules.items()
        for m, names in imports(package).items()
        if names & banned
    }
    assert wrong == {}


def test_agents_start_without_pyvmomi() -> None:
    """Parsing the command line (vSphere options included) loads no pyVmomi; a vSphere job does."""
    code = (
        "import sys, json\n"
        "from target_agent.cli import build_parser as target\n"
        "args = target().parse_args(['serve', '--data-dir', '/nonexistent', '--host-key', 'k',"
        " '--authorized-keys', 'a', '--listen', '127.0.0.1:0', '--vcenter', 'vc.example:8443'])\n"
        "before = 'pyVmomi' in sys.modules\n"
        "import target_agent.vsphere.job\n"
        "print(json.dumps([before, args.vcenter, 'pyVmomi' in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [False, "vc.example:8443", True]
