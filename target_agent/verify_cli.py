"""``vzrep-target verify``: the replica's bytes and its restore points against their own records."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vzcommon.errors import IntegrityError

from .storage.verify import verify_vm


def verify(args: argparse.Namespace) -> int:
    report = verify_vm(args.data_dir, args.vm)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        for d in report.disks:
            if d.problem:
                print(f"disk {d.disk}: {d.problem}")
                continue
            where = ", ".join(f"{o}+{n}" for o, n in d.differing[:20]) + (" ..." if len(d.differing) > 20 else "")
            state = f"{len(d.differing)} range(s) differ from the map: {where}" if d.differing else "ok"
            print(f"disk {d.disk}: {d.bytes_compared} bytes compared, {state}")
        for pid, why in report.points.items():
            print(f"restore point {pid}: {why or 'ok'}")
        print(f"VM {report.vm}: {'ok' if report.ok else 'DAMAGED'} ({report.seconds} s)")
    if not report.ok:
        raise IntegrityError(
            f"replica of VM {args.vm!r} does not match its records (above): the source's"
            " `vzrep-source verify --repair` sends the right bytes as a pass; damaged restore points"
            " (and those older) cannot be exported"
        )
    return 0


def add_verify_command(sub: Any) -> None:
    p = sub.add_parser(
        "verify", help="check a replica's bytes and restore points against their own records (read-only)"
    )
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--vm", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=verify)
