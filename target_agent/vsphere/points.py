"""``vzrep-target points|failover --vcenter ...``: a vSphere replica's restore points (snapshots of the
replica VM) and its failover, called from :mod:`target_agent.points_cli` when ``--vcenter`` is given.

Every snapshot of the replica VM is listed: our restore points (``ours``, usable for failover, with
the pass that made each), our failover snapshots (``kind`` ``failover``), and snapshots someone else
took (``ours: false``), which vzrep never uses or removes.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from target_agent.vsphere import failover as vfo
from target_agent.vsphere.restore_points import is_restore_point
from vsphere.client import VSphereClient
from vsphere.connection import connect
from vsphere.model import SnapshotInfo
from vsphere.options import ConnectOptions


def _pass_id(s: SnapshotInfo) -> str | None:
    _, brace, rest = s.description.partition("{")
    try:
        body = json.loads(brace + rest) if brace else {}
    except ValueError:
        return None
    return str(body["pass"]) if isinstance(body, dict) and "pass" in body else None


def snapshot_rows(snaps: list[SnapshotInfo], current: str | None) -> list[dict[str, Any]]:
    """Newest first; ``id`` is the snapshot's moid (its name works too)."""
    rows = []
    for s in vfo._by_time(snaps)[::-1]:
        kind = "restore-point" if is_restore_point(s) else ("failover" if s.ours else "foreign")
        rows.append(
            {
                "id": s.moid,
                "name": s.name,
                "time": s.created.isoformat() if s.created else None,
                "pass": _pass_id(s) if kind == "restore-point" else None,
                "ours": s.ours,
                "kind": kind,
                "current": s.moid == current,
            }
        )
    return rows


async def _report(opts: ConnectOptions, args: argparse.Namespace) -> dict[str, Any]:
    client: VSphereClient = await connect(opts)
    async with client:
        rep = await vfo.find_replica(client, args.data_dir / args.vm, args.vm)
        snaps = await client.list_snapshots(rep.moid)
        current = await client.current_snapshot(rep.moid)
    return {
        "vm": args.vm,
        "replica_vm": rep.name,
        "replica_moid": rep.moid,
        "points": snapshot_rows(snaps, current),
    }


async def show_points(opts: ConnectOptions, args: argparse.Namespace) -> int:
    report = await _report(opts, args)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    rows = report["points"]
    if not any(r["kind"] == "restore-point" for r in rows):
        print(f"VM {args.vm!r} ({report['replica_vm']}) has no restore points yet (no pass has committed)")
    for r in rows:
        tag = {"restore-point": f"pass {r['pass']}", "failover": "failover snapshot (ours, not a point)"}.get(
            r["kind"], "FOREIGN: not ours, never used or removed by vzrep"
        )
        print(f"{r['id']}  {r['time']}  {r['name']}  [{tag}]{'  <- current' if r['current'] else ''}")
    return 0


async def failover(opts: ConnectOptions, args: argparse.Namespace) -> int:
    client: VSphereClient = await connect(opts)
    async with client:
        if args.undo:
            print(await vfo.undo(client, args.data_dir, args.vm))
        elif args.commit:
            print(await vfo.commit(client, args.data_dir, args.vm))
        elif args.release:
            print(await vfo.release(client, args.data_dir, args.vm, force=args.force))
        else:
            networks = dict(args.network_map or [])
            st = await vfo.start(client, args.data_dir, args.vm, args.point, test=args.test, network_map=networks)
            if args.test:
                print(
                    f"test failover of VM {args.vm!r}: the replica VM runs from restore point {st['point_name']}"
                    " with its NICs disconnected; replication is paused until --undo"
                )
            else:
                print(
                    f"VM {args.vm!r} failed over: the replica VM runs from restore point {st['point_name']}"
                    " with its NICs connected; passes from the source are refused until --undo or failback"
                )
                for line in st.get("nics") or []:
                    print(f"  {line}")
    return 0
