"""The committed locks agree with pyproject.toml and with each other (regenerate with `make lock`)."""

from __future__ import annotations

import re
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9._-]+)==(\S+)(?:\s*;\s*([^\\]+?))?\s*\\?$")


def pins(lock: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of a uv/pip-compile lock with --generate-hashes."""
    out: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in (REPO / "requirements" / lock).read_text().splitlines():
        m = PIN.match(line)
        if m:
            current = canonicalize_name(m.group(1))
            out[current] = (m.group(2), [])
        elif line.strip().startswith("--hash=sha256:") and current:
            out[current][1].append(line.strip().removeprefix("--hash=sha256:").rstrip(" \\"))
    return out


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_every_pin_has_hashes() -> None:
    for lock in ("dev.txt", "runtime.txt"):
        locked = pins(lock)
        assert locked, f"{lock} has no pins"
        for name, (_, hashes) in locked.items():
            assert hashes and all(len(h) == 64 for h in hashes), f"{name} in {lock} has no sha256 hashes"


def test_locks_admit_pyproject_ranges() -> None:
    """Each dependency is locked at a version its range in pyproject.toml allows (runtime and dev)."""
    runtime, dev = pins("runtime.txt"), pins("dev.txt")
    for spec in project()["dependencies"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in runtime, f"{req.name} is not in requirements/runtime.txt: run `make lock`"
        assert req.specifier.contains(runtime[name][0], prereleases=True), f"{spec} vs {runtime[name][0]}"
    for spec in project()["optional-dependencies"]["dev"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in dev, f"{req.name} is not in requirements/dev.txt: run `make lock`"
        assert req.specifier.contains(dev[name][0], prereleases=True), f"{spec} vs {dev[name][0]}"


def test_runtime_lock_is_the_dev_lock_restricted() -> None:
    """The appliance (runtime.txt) gets exactly the versions and files the suite ran with (dev.txt)."""
    runtime, dev = pins("runtime.txt"), pins("dev.txt")
    for name, (ver, hashes) in runtime.items():
        assert name in dev, f"{name} is locked for the appliance but not for the tests"
        assert dev[name][0] == ver, f"{name}: runtime {ver}, dev {dev[name][0]}"
        assert set(hashes) == set(dev[name][1]), f"{name}: the two locks name different files"


def test_this_venv_holds_the_locked_versions() -> None:
    """`make venv` installed the lock (skipped in `make test-latest`'s venv, which is not locked)."""
    if Path(sys.prefix).name == ".venv-latest":
        return
    for name, (ver, _) in pins("dev.txt").items():
        try:
            installed = version(name)
        except PackageNotFoundError:  # a marker excluded it here (colorama on Windows, ...)
            continue
        assert installed == ver, f"{name} {installed} is installed, the lock says {ver}: run `make venv`"
