"""``vzrep-source job run``: one pass of every VM of a job, at most ``parallel`` at once, in this process.

Each VM's pass is the pass ``vzrep-source pass`` runs: its options are turned into that command's
arguments and parsed by the same parser (so a job takes exactly what ``pass`` takes), and run through
the same functions (``cli._run``: readers, ABM filters, the session; ``cli._vsphere_pass`` for a
vSphere VM). They share one event loop: the scans run in worker threads, and a pass that waits on the
network lets the others work.

The job rule (seeding or mapping on) is the target's to check, since only it knows what it holds:
each HELLO says ``require_replica`` and the target refuses a VM it holds no replica of before it
creates anything (``NotSeeded``, exit code 16). That VM is skipped with a warning, the others go on.
A VM that fails does not stop the others either. The job's exit code (README, "Exit codes"): 0 when
every VM was replicated, 17 when any failed, else 16 when any was skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vzcommon.errors import ExitCode, NotSeeded, VzrepError
from vzcommon.log import get_logger

from ..session import DiskJob, PassOptions, PassReport
from .model import Job, VmConf

log = get_logger("vzrep.source.job")


@dataclass
class VmResult:
    vm: str
    status: str  # replicated | verified | skipped | failed
    exit_code: int = 0
    reason: str = ""
    report: PassReport | None = None
    events: list[str] = field(default_factory=list)


def pass_argv(job: Job, vm: VmConf, state_dir: Path) -> list[str]:
    """The ``vzrep-source pass`` arguments this VM's pass would have on the command line."""
    t, o = job.target.resolve(), job.options
    argv = [
        "pass", "--target", f"{t.host}:{t.port}", "--identity", str(t.identity), "--known-hosts",
        str(t.known_hosts), "--user", t.user, "--vm", vm.name, "--block-size", str(o.block_size),
        "--compress", o.compress, "--state-dir", str(state_dir), "--no-progress", "--json",
    ]  # fmt: skip
    argv += ["--abm"] * o.abm + ["--keep-swap"] * o.keep_swap + ["--skip-pagefile"] * o.skip_pagefile
    for spec in vm.disks:
        argv += ["--disk", spec]
    v = job.vcenter
    if vm.vsphere and v is not None:
        for flag, value in (
            ("--vcenter", v.host),
            ("--credentials", v.credentials),
            ("--session-token-file", v.session_token_file),
            ("--thumbprint", v.thumbprint),
            ("--cafile", v.cafile),
            ("--appliance-vm", v.appliance_vm),
            ("--appliance-uuid-file", v.appliance_uuid_file),
        ):
            if value:
                argv += [flag, str(value)]
        argv += ["--insecure"] * v.insecure + ["--quiesce"] * v.quiesce
        for ds, root in v.datastore_roots.items():
            argv += ["--datastore-root", f"{ds}={root}"]
    return argv


def pass_args(job: Job, vm: VmConf, state_dir: Path) -> argparse.Namespace:
    from ..cli import build_parser

    argv = pass_argv(job, vm, state_dir)
    return build_parser(argv).parse_args(argv)


def skip_hint(job: Job, vm: VmConf) -> str:
    """What to run on the target so the VM is no longer skipped, from the job's seed/map entries."""
    name = shlex.quote(vm.name)
    if vm.seed:
        disks = " ".join(f"--disk {shlex.quote(f'{d}={p}')}" for d, p in vm.seed.items())
        return f"on the target: vzrep-target seed --data-dir DIR --vm {name} {disks}"
    if vm.map_from_vm:
        return f"on the target: vzrep-target map --data-dir DIR --vm {name} --from-vm {shlex.quote(vm.map_from_vm)}"
    if vm.map_replica_vm:
        return (
            f"on the target: vzrep-target map --data-dir DIR --vm {name} --replica-vm"
            f" {shlex.quote(vm.map_replica_vm)} --vcenter HOST ..."
        )
    if vm.map_disks:
        disks = " ".join(f"--disk {shlex.quote(f'{d}={p}')}" for d, p in vm.map_disks.items())
        return f"on the target: vzrep-target map --data-dir DIR --vm {name} {disks}"
    return "seed it (vzrep-target seed) or map it (vzrep-target map) on the target; the job names no seed or mapping for it"


async def run_vm(
    job: Job, vm: VmConf, state_dir: Path, mode: str = "", shared_limit: Path | None = None
) -> VmResult:
    """One VM's pass (``mode`` "verify": a verify, nothing written; ``shared_limit``: the appliance's
    bandwidth bucket, :mod:`source_agent.shared_bucket`); never raises a VzrepError (it becomes the
    VM's result)."""
    from .. import cli
    from ..tunnel import TargetSpec

    o = job.options
    opts = PassOptions(
        block_size=o.block_size,
        compress=o.compress,
        limit=o.limit,
        shared_limit=shared_limit,
        resume_window=o.resume_window,
        state_dir=state_dir,
        job=job.id,
        require_replica=o.rule,
        restore_points=o.restore_points,
        mode=mode,
    )
    events: list[str] = []
    try:
        args = pass_args(job, vm, state_dir)
        t = job.target.resolve()
        target = TargetSpec(t.host, t.port, t.identity, t.known_hosts, user=t.user)
        if vm.vsphere:
            report = await cli._vsphere_pass(args, target, opts, events)
        else:
            readers = await asyncio.to_thread(cli.open_readers, args.disk)
            try:
                report = await cli._run(target, args, [DiskJob(reader=r) for r in readers], opts)
            finally:
                for r in readers:
                    r.close()
    except NotSeeded as exc:
        reason = f"{exc}; {skip_hint(job, vm)}"
        log.warning("vm_skipped", vm=vm.name, job=job.id, reason=str(exc))
        return VmResult(vm.name, "skipped", int(exc.exit_code), reason, None, events)
    except VzrepError as exc:
        log.warning("vm_failed", vm=vm.name, job=job.id, error=str(exc))
        return VmResult(vm.name, "failed", int(exc.exit_code), str(exc), None, events)
    except SystemExit as exc:  # argparse refused what the job turned into arguments
        return VmResult(vm.name, "failed", int(ExitCode.USAGE), f"bad pass options ({exc})", None, events)
    except Exception as exc:  # a bug: this VM fails, the others go on
        log.exception("vm_crashed", vm=vm.name)
        return VmResult(
            vm.name,
            "failed",
            int(ExitCode.INTERNAL),
            f"internal error: {type(exc).__name__}: {exc}",
            None,
            events,
        )
    if mode == "verify":
        differing = sum(d.blocks_changed + d.zero_blocks_sent for d in report.disks)
        if differing:
            ranges = sum(len(d.differing) for d in report.disks)
            why = f"the replica differs from the source in {differing} block(s) ({ranges} range(s), in the report)"
            return VmResult(vm.name, "failed", int(ExitCode.INTEGRITY), why, report, events)
        return VmResult(vm.name, "verified", 0, "", report, events)
    return VmResult(vm.name, "replicated", 0, "", report, events)


async def run_job(
    job: Job,
    state_dir: Path,
    parallel: int | None = None,
    on_done: Any = None,
    mode: str = "",
    shared_limit: Path | None = None,
) -> list[VmResult]:
    """Every VM once, at most ``parallel`` (default: the job's) at a time; results in the job's order.

    ``on_done(result)`` is called as each VM finishes (the CLI prints its report then)."""
    limit = asyncio.Semaphore(parallel or job.options.parallel)
    results: dict[str, VmResult] = {}

    async def one(vm: VmConf) -> None:
        async with limit:
            res = await run_vm(job, vm, state_dir, mode, shared_limit)
        results[vm.name] = res
        if on_done is not None:
            on_done(res)

    async with asyncio.TaskGroup() as tg:
        for vm in job.vms:
            tg.create_task(one(vm))
    return [results[vm.name] for vm in job.vms]


def job_exit_code(results: list[VmResult]) -> ExitCode:
    if any(r.status == "failed" for r in results):
        return ExitCode.JOB_FAILED
    if any(r.status == "skipped" for r in results):
        return ExitCode.NOT_SEEDED
    return ExitCode.OK


def summary(job: Job, results: list[VmResult]) -> dict[str, Any]:
    return {
        "job": job.id,
        "name": job.name,
        "replicated": [r.vm for r in results if r.status == "replicated"],
        "verified": [r.vm for r in results if r.status == "verified"],
        "skipped": [{"vm": r.vm, "reason": r.reason} for r in results if r.status == "skipped"],
        "failed": [
            {"vm": r.vm, "exit_code": r.exit_code, "error": r.reason} for r in results if r.status == "failed"
        ],
        "exit_code": int(job_exit_code(results)),
    }


def result_json(res: VmResult) -> dict[str, Any]:
    from ..report import totals
    from ..session import report_dict

    out: dict[str, Any] = {
        "vm": res.vm,
        "status": res.status,
        "exit_code": res.exit_code,
        "reason": res.reason,
    }
    if res.report is not None:
        data = report_dict(res.report)
        data["total"] = totals(res.report)
        data["events"] = list(res.events)
        out["report"] = data
    return out


def result_text(res: VmResult) -> str:
    from ..report import as_text

    if res.report is not None:
        return as_text(res.report, res.events)
    word = "SKIPPED" if res.status == "skipped" else f"FAILED (exit code {res.exit_code})"
    return f"vzrep pass of VM {res.vm}: {word}\n  {'warning' if res.status == 'skipped' else 'error'}: {res.reason}"


def summary_text(job: Job, results: list[VmResult]) -> str:
    s = summary(job, results)
    lines = [
        f"job {job.name or job.path.name} ({job.id}): {len(s['replicated'])} replicated, {len(s['skipped'])}"
        f" skipped, {len(s['failed'])} failed; exit code {s['exit_code']}"
    ]
    lines += [f"  replicated: {vm}" for vm in s["replicated"]]
    lines += [f"  skipped: {d['vm']}: {d['reason']}" for d in s["skipped"]]
    lines += [f"  failed: {d['vm']} (exit code {d['exit_code']}): {d['error']}" for d in s["failed"]]
    return "\n".join(lines)
