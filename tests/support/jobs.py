"""Job files for tests: a job against an in-process target on 127.0.0.1."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from source_agent.jobs.model import Job, load_job
from tests.support.agents import Target


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def write_job(
    path: Path,
    target: Target,
    vms: list[dict[str, Any]],
    *,
    job_id: str | None = None,
    state_dir: Path | None = None,
    vcenter: dict[str, Any] | None = None,
    **options: Any,
) -> Path:
    """A job file: ``vms`` as [[vm]] tables (name, disks, seed, map_from_vm, ...), ``options`` as [options]."""
    kh = target.keys.known_hosts(target.port, f"kh-{target.port}")
    lines = [
        f"id = {_toml(job_id or str(uuid.uuid4()))}",
        f"name = {_toml(path.stem)}",
        "",
        "[target]",
        'host = "127.0.0.1"',
        f"port = {target.port}",
        f"identity = {_toml(str(target.keys.client_key))}",
        f"known_hosts = {_toml(str(kh))}",
        "",
        "[options]",
        *(f"{k} = {_toml(v)}" for k, v in options.items()),
    ]
    if state_dir is not None:
        lines.append(f"state_dir = {_toml(str(state_dir))}")
    if vcenter is not None:
        lines += ["", "[vcenter]", *(f"{k} = {_toml(v)}" for k, v in vcenter.items())]
    for vm in vms:
        lines += ["", "[[vm]]", *(f"{k} = {_toml(v)}" for k, v in vm.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def job_of(path: Path) -> Job:
    return load_job(path)
