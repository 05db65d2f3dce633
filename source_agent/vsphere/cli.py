"""Command-line hooks of the vSphere area, for ``source_agent.cli``.

``add_arguments(pass_parser)`` adds the vSphere options to ``vzrep-source pass`` (``--vm`` is the
core's); ``add_source_commands(sub)`` adds ``vzrep-source vsphere-check``. ``vsphere_check(args)``
returns what to print and changes nothing on vSphere.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from vsphere import privileges
from vsphere.appliance import find_appliance
from vsphere.cli_options import add_appliance_arguments, add_connection_arguments, options_from_args
from vsphere.client import VSphereClient
from vsphere.connection import connect
from vzcommon.errors import VzrepError


def _connection_options(p: argparse.ArgumentParser, *, required: bool) -> None:
    g = p.add_argument_group("vSphere")
    add_connection_arguments(g, required=required)
    add_appliance_arguments(g)


def add_arguments(pass_parser: argparse.ArgumentParser) -> None:
    _connection_options(pass_parser, required=False)
    pass_parser.add_argument("--quiesce", action="store_true", help="quiesce the guest for the snapshot")
    pass_parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="with --planned-failover: how long the guest may take to shut down (default 600)",
    )


def add_source_commands(sub: Any) -> None:
    _accept_hardware_command(sub)
    p = sub.add_parser("vsphere-check", help="show what the agent sees of a VM in vSphere; changes nothing")
    _connection_options(p, required=True)
    p.add_argument("--vm", required=True, help="VM name or moid")
    p.add_argument("--json", action="store_true")

    def run(args: argparse.Namespace) -> int:
        result = asyncio.run(vsphere_check(args))
        print(json.dumps(result, indent=2) if args.json else format_check(result))
        return 0

    p.set_defaults(func=run)


def _accept_hardware_command(sub: Any) -> None:
    p = sub.add_parser(
        "accept-hardware",
        help="record a vSphere VM's current hardware as its job's (after the replica VM was changed to match)",
    )
    _connection_options(p, required=True)
    p.add_argument("--vm", required=True, help="VM name or moid")
    p.add_argument("--state-dir", type=Path, default=default_state_dir(), help="the passes' state dir")
    p.add_argument("--json", action="store_true")

    def run(args: argparse.Namespace) -> int:
        result = asyncio.run(accept_hardware(args))
        if args.json:
            print(json.dumps(result, indent=2))
        elif result["changes"]:
            print(f"VM {result['vm']}: recorded its current hardware; it had changed:")
            print("\n".join(f"  {c}" for c in result["changes"]))
        else:
            print(f"VM {result['vm']}: its hardware is as recorded ({result['record']}); nothing to do")
        return 0

    p.set_defaults(func=run)


def default_state_dir() -> Path:
    from source_agent.cli import default_state_dir as state_dir

    return state_dir()


async def accept_hardware(args: argparse.Namespace) -> dict[str, Any]:
    """The hardware record the passes compare with (``vsphere/<vm>/hardware.json``), replaced by the
    VM's current hardware (disk names kept); what changed, for the user to confirm."""
    from vsphere.hardware import HardwareRecord, compare
    from vzcommon.durable import atomic_write

    async with await open_client(args) as client:
        vm = await client.find_vm(args.vm)
    path = args.state_dir / "vsphere" / vm.name / "hardware.json"
    recorded = HardwareRecord.from_json(path.read_text()) if path.exists() else None
    current = HardwareRecord.from_vm(vm, recorded)
    changes = list(compare(recorded, current).changes) if recorded is not None else ["no hardware was recorded yet"]
    if changes:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, current.to_json().encode())
    return {"vm": vm.name, "record": str(path), "changes": changes}


async def open_client(args: argparse.Namespace) -> VSphereClient:
    return await connect(options_from_args(args))


async def shut_down(args: argparse.Namespace) -> str:
    """A planned failover's stop: the source VM shut down through vSphere; one line for the report."""
    async with await open_client(args) as client:
        vm = await client.find_vm(args.vm)
        done = await client.shut_down(vm.moid, args.shutdown_timeout)
    return f"planned failover: VM {vm.name} stopped: {done}"


async def vsphere_check(args: argparse.Namespace) -> dict[str, Any]:
    """What the agent sees: the session, the VM, its disks and CBT, the appliance, missing privileges,
    left-overs of crashed runs. Read-only."""
    async with await open_client(args) as client:
        out: dict[str, Any] = {"session": await client.session_info()}
        out["session"].pop("session_key", None)  # a secret
        vm = await client.find_vm(args.vm)
        snaps = await client.list_snapshots(vm.moid)
        out["vm"] = {
            "name": vm.name,
            "moid": vm.moid,
            "power_state": vm.power_state,
            "hardware_version": vm.hardware_version,
            "cpus": vm.num_cpu,
            "memory_mb": vm.memory_mb,
            "cbt_enabled": vm.cbt_enabled,
            "disks": [
                {
                    "key": d.key,
                    "file": d.file_name,
                    "capacity": d.capacity,
                    "slot": d.slot,
                    "mode": d.disk_mode,
                }
                for d in vm.disks
            ],
            "snapshots": [{"name": s.name, "moid": s.moid, "ours": s.ours} for s in snaps],
        }
        notes = []
        if not vm.cbt_enabled:
            notes.append("CBT is off: the first pass enables it (one snapshot stun/unstun cycle)")
        if any(not s.ours for s in snaps):
            notes.append(
                "the VM has user snapshots: the current chain is replicated merged; lateral ones are not"
            )
        try:
            app = await find_appliance(client, uuid_path=args.appliance_uuid_file, name=args.appliance_vm)
        except VzrepError as e:
            out["appliance"] = {"error": str(e)}
            app = None
        if app is not None:
            hotadded = await client.list_hotadded(app.moid)
            missing_ds = sorted(set(vm.datastores) - set(await client.host_datastores(app.moid)))
            out["appliance"] = {
                "name": app.name,
                "moid": app.moid,
                "hotadded_leftovers": [d.file_name for d in hotadded],
            }
            if missing_ds:
                notes.append(f"the appliance's host does not see datastores {missing_ds}: HotAdd needs them")
            if hotadded:
                notes.append(
                    "disks of a crashed run are attached to the appliance; the next pass detaches them"
                )
        miss_vm = (await client.missing_privileges([vm.moid], privileges.SOURCE_VM))[vm.moid]
        miss_app = (
            (await client.missing_privileges([app.moid], privileges.APPLIANCE_VM))[app.moid] if app else []
        )
        out["missing_privileges"] = {vm.moid: miss_vm, **({app.moid: miss_app} if app else {})}
        out["notes"] = notes
        return out


def format_check(result: dict[str, Any]) -> str:
    lines = [f"connected to {result['session']['server']} as {result['session']['user']}"]
    vm = result["vm"]
    cbt = "on" if vm["cbt_enabled"] else "off"
    lines.append(f"VM {vm['name']} ({vm['moid']}): {vm['power_state']}, {vm['hardware_version']}, CBT {cbt}")
    for d in vm["disks"]:
        lines.append(f"  disk {d['slot']} {d['file']} {d['capacity'] // 2**20} MiB ({d['mode']})")
    for s in vm["snapshots"]:
        lines.append(f"  snapshot {s['name']} ({s['moid']}){' [vzrep]' if s['ours'] else ''}")
    app = result["appliance"]
    lines.append(
        f"appliance: {app['error']}" if "error" in app else f"appliance VM {app['name']} ({app['moid']})"
    )
    for moid, missing in result["missing_privileges"].items():
        lines.append(f"missing privileges on {moid}: {', '.join(missing) if missing else 'none'}")
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines)
