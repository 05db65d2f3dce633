"""``vzrep-source job check``: the job file and everything it points at, changing nothing.

It checks, in order: the file (TOML, every key, the id); the identity key (readable, a private
key); the known-hosts file (exists, pins the target's HOST:PORT); every local disk (opened and closed
as a pass opens it: exists, readable, a format the source reads, its size); a vSphere VM's
credentials, session-token and CA files (readable; vCenter itself is not contacted -- run
``vzrep-source vsphere-check`` for that); and, unless ``--offline``, the target: an SSH connection
that verifies the pinned host key and authenticates with the key, then closes without opening the
replication subsystem, so the target starts no pass. The seed and map entries name files on the
target and are not checked here; with the job rule on, a VM without one is reported, with the
command that makes it runnable.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from vzcommon.errors import ExitCode, VzrepError

from .model import Job, TargetConf


@dataclass
class CheckResult:
    ok: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    problems: list[tuple[str, int]] = field(default_factory=list)  # message, exit code

    @property
    def exit_code(self) -> int:
        return self.problems[0][1] if self.problems else 0


def _readable(path: Path, what: str, res: CheckResult) -> bool:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        res.problems.append((f"{what} {path}: {exc.strerror or exc}", int(ExitCode.INPUT)))
        return False
    return True


def _known_hosts(t: TargetConf, res: CheckResult) -> None:
    if not _readable(t.known_hosts, "known_hosts", res):
        return
    want = t.host if t.port == 22 else f"[{t.host}]:{t.port}"
    for line in t.known_hosts.read_text(errors="replace").splitlines():
        hosts = line.split(maxsplit=1)[0].split(",") if line.strip() and not line.startswith("#") else []
        if want in hosts:
            res.ok.append(f"known_hosts {t.known_hosts} pins {want}")
            return
    res.problems.append(
        (
            f"known_hosts {t.known_hosts} has no line for {want}: pin the target's host key first",
            int(ExitCode.HOST_KEY),
        )
    )


def _identity(t: TargetConf, res: CheckResult) -> None:
    from vzcommon.ssh import asyncssh

    path = t.identity
    if not _readable(path, "identity", res):
        return
    try:
        asyncssh.read_private_key(str(path))
    except (OSError, asyncssh.KeyImportError) as exc:
        res.problems.append((f"identity {path} is not a private key we can read: {exc}", int(ExitCode.INPUT)))
        return
    res.ok.append(f"identity {path} is a private key")


def _disks(job: Job, res: CheckResult) -> None:
    from ..cli import open_readers

    for vm in job.vms:
        if vm.vsphere:
            v = job.vcenter
            files = (
                [
                    (p, w)
                    for p, w in (
                        (v.credentials, "credentials"),
                        (v.session_token_file, "session token"),
                        (v.cafile, "cafile"),
                    )
                    if p
                ]
                if v
                else []
            )
            if all(_readable(p, f"VM {vm.name}: vCenter {w}", res) for p, w in files):
                res.ok.append(
                    f"VM {vm.name}: a vSphere VM (vCenter not contacted; `vzrep-source vsphere-check` does)"
                )
            continue
        try:
            readers = open_readers(list(vm.disks))
        except VzrepError as exc:
            res.problems.append((f"VM {vm.name}: {exc}", int(exc.exit_code)))
            continue
        try:
            sizes = ", ".join(f"{r.name} {r.size} bytes" for r in readers)
        finally:
            for r in readers:
                r.close()
        res.ok.append(f"VM {vm.name}: disks {sizes}")


def _rule(job: Job, res: CheckResult) -> None:
    from .runner import skip_hint

    if not job.options.rule:
        return
    for vm in job.vms:
        if not vm.declared:
            res.warnings.append(
                f"VM {vm.name}: the job has seeding or mapping on and names no seed or mapping for it: it is"
                " skipped until the target holds a replica of it (seed or map it there)"
            )
        else:
            res.ok.append(
                f"VM {vm.name}: {vm.declared}; if the target holds no replica yet, run {skip_hint(job, vm)}"
            )


def check_job(job: Job, *, offline: bool = False) -> CheckResult:
    res = CheckResult(ok=[f"job file {job.path}: valid, id {job.id}, {len(job.vms)} VMs"])
    try:
        t = job.target.resolve()
    except VzrepError as exc:
        res.problems.append((str(exc), int(exc.exit_code)))
    else:
        if job.target.paired is not None:
            res.ok.append(
                f"target: the paired target {t.host}:{t.port} (from {job.target.paired / 'peer.json'})"
            )
        _identity(t, res)
        _known_hosts(t, res)
    _disks(job, res)
    _rule(job, res)
    if not offline and not res.problems:
        from ..tunnel import TargetSpec, check_target

        t = job.target.resolve()
        spec = TargetSpec(t.host, t.port, t.identity, t.known_hosts, user=t.user)
        try:
            asyncio.run(check_target(spec))
            res.ok.append(f"target {spec.label}: reachable, host key as pinned, our key accepted")
        except VzrepError as exc:
            res.problems.append((str(exc), int(exc.exit_code)))
    return res
