"""``vzrep-target points`` and ``vzrep-target export``: a replica's points in time, and one of them
written out as VMDKs (``storage.points``, ``storage.export``); ``failover``. With ``--vcenter`` the
replica is a vSphere VM and ``vsphere.points`` does the work (pyVmomi is loaded only then)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vsphere.cli_options import add_connection_arguments, options_from_args
from vzcommon.climain import asyncio_run
from vzcommon.errors import InputError

from .storage import failover as fo
from .storage import points as rp
from .storage.export import export_point
from .storage.mapping import foreign_files
from .storage.transaction import vm_dir


def _load(args: argparse.Namespace) -> tuple[Path, list[rp.Point]]:
    vdir = vm_dir(args.data_dir, args.vm)
    if not vdir.is_dir():
        raise InputError(f"no replica of VM {args.vm!r} in {args.data_dir}")
    return vdir, rp.load(vdir)


def points_report(vm: str, points: list[rp.Point]) -> list[dict[str, Any]]:
    """Newest first, as an operator reads them; ``held_bytes`` is what keeping the point costs."""
    out = []
    for i, p in enumerate(points):
        newer = points[i + 1] if i + 1 < len(points) else None
        out.append(
            {
                "id": p.id,
                "time": p.time,
                "vm": vm,
                "job": p.job,
                "origin": p.origin,
                "ours": True,  # a file replica holds only points vzrep made
                "live": newer is None,
                "disks": dict(p.disks),
                "change_ids": dict(p.change_ids),
                "held_bytes": newer.held_bytes if newer is not None else 0,
            }
        )
    return out[::-1]


def show_points(args: argparse.Namespace) -> int:
    if args.vcenter:
        from .vsphere import points as vpoints

        return asyncio_run(vpoints.show_points(options_from_args(args), args))
    vdir, points = _load(args)
    rows = points_report(args.vm, points)
    foreign = foreign_files(vdir)  # another tool's files: never points, never used or removed
    if args.json:
        print(json.dumps({"vm": args.vm, "points": rows, "foreign": foreign}, indent=2))
        return 0
    if not rows:
        print(f"VM {args.vm!r} has no restore points yet (no pass has committed)")
    for r in rows:
        disks = ", ".join(f"{n} {s} bytes" for n, s in r["disks"].items())
        tag = "live replica" if r["live"] else f"{r['held_bytes']} bytes of increments"
        print(
            f"{r['id']}  {r['time']}  {r['origin']}{' job ' + r['job'] if r['job'] else ''}  [{tag}]  {disks}"
        )
    if foreign:
        print(f"not restore points (made by another tool; never used or removed): {', '.join(foreign)}")
    return 0


def export(args: argparse.Namespace) -> int:
    written = export_point(args.data_dir, args.vm, args.point, args.to)
    for path in written:
        print(path)
    return 0


def failover(args: argparse.Namespace) -> int:
    st = fo.read_state(vm_dir(args.data_dir, args.vm))
    vsphere = st is not None and st.get("kind") == "vsphere"
    if st is not None and vsphere != bool(args.vcenter):
        raise InputError(
            f"VM {args.vm!r} is {st.get('state')} as a {'vSphere' if vsphere else 'file'} replica:"
            f" run failover {'with' if vsphere else 'without'} --vcenter"
        )
    if args.vcenter:
        if args.to:
            raise InputError("--to is for file replicas; a vSphere test failover runs the replica VM itself")
        if args.network_map and (args.undo or args.commit):
            raise InputError("--network-map goes with the failover itself, not with --undo or --commit")
        from .vsphere import points as vpoints

        return asyncio_run(vpoints.failover(options_from_args(args), args))
    if args.network_map:
        raise InputError("--network-map is for vSphere replicas (with --vcenter): a file replica has no NICs")
    if args.undo:
        print(fo.undo_failover(args.data_dir, args.vm))
    elif args.release:
        print(fo.release(args.data_dir, args.vm, force=args.force))
    elif args.commit:
        print(fo.commit_failover(args.data_dir, args.vm))
    elif args.test:
        where = fo.test_failover(args.data_dir, args.vm, args.point, args.to)
        print(f"test failover of VM {args.vm!r}: its disks are in {where}; replication goes on")
    else:
        st = fo.start(args.data_dir, args.vm, args.point)
        deltas = ", ".join(st["deltas"].values())
        print(
            f"VM {args.vm!r} failed over to restore point {st['point']}: run it from {deltas} in"
            f" {vm_dir(args.data_dir, args.vm)}; passes from the source are refused until --undo or failback"
        )
    return 0


def _network_pair(value: str) -> tuple[str, str]:
    src, eq, dst = value.partition("=")
    if not eq or not src.strip() or not dst.strip():
        raise argparse.ArgumentTypeError(f"{value!r} is not SRC=DST (a network name on each side)")
    return src.strip(), dst.strip()


def add_point_commands(sub: Any) -> None:
    p = sub.add_parser("points", help="list a replica's restore points (newest first)")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--vm", required=True)
    p.add_argument("--json", action="store_true")
    add_connection_arguments(
        p.add_argument_group("vSphere replicas"), what="vCenter or ESXi host of the replica VM"
    )
    p.set_defaults(func=show_points)
    p = sub.add_parser("export", help="write a restore point's disks as thin monolithicFlat VMDKs")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--vm", required=True)
    p.add_argument("--point", required=True, metavar="ID", help="a point id from `points`")
    p.add_argument("--to", type=Path, required=True, metavar="OUTDIR", help="an empty or new directory")
    p.set_defaults(func=export)
    p = sub.add_parser("failover", help="start, test, undo or commit a failover of a replica")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--vm", required=True)
    p.add_argument("--point", metavar="ID", help="restore point to fail over to (default: the newest)")
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--test", action="store_true", help="a test VM from an exported copy; replication goes on"
    )
    what.add_argument("--undo", action="store_true", help="end the failover (test or permanent)")
    what.add_argument("--commit", action="store_true", help="make a permanent failover final")
    what.add_argument(
        "--release", action="store_true", help="after failback: the replica accepts passes again"
    )
    p.add_argument("--to", type=Path, metavar="DIR", help="with --test: where the copy goes")
    p.add_argument(
        "--force", action="store_true", help="with --release: the VM went home without `vzrep-target failback`"
    )
    p.add_argument(
        "--network-map",
        type=_network_pair,
        action="append",
        metavar="SRC=DST",
        help="vSphere: the NICs on network SRC are put on network DST of the DR host (repeatable)",
    )
    g = p.add_argument_group("vSphere replicas (revert the replica VM to a restore-point snapshot)")
    add_connection_arguments(g, what="vCenter or ESXi host of the replica VM")
    p.set_defaults(func=failover)
