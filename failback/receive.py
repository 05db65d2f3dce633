"""``vzrep-source receive-failback``: the source site's half of failback, with the keys pairing pinned.

Failback runs the engine the other way: the DR appliance sends (``vzrep-target failback``) and the
source site receives, writing the original disks in place (a target agent with ``--map``, which
hashes them where they are so only differences travel). The appliances paired one way -- the source
pinned the target's host key, the target authorised the source's client key -- and each key serves
again with its role reversed, so no second pairing is needed:

* here, the source's own key (``id_ed25519``) is the host key of the receiving agent, and the only
  key let in is the paired target's (``peer.json``: the host key the source pinned);
* at the DR site, ``vzrep-target failback`` signs in with the target's host key and pins the source's
  key from its own ``peer.json`` (:mod:`failback.send`).

Both are Ed25519 SSH keys used only for SSH user and host authentication, whose signatures cover
different data, so one key in both roles gives no one a signature they could reuse. The port opens
only while this command runs, and it ends after the first pass that commits (``serve --once``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pairing import pins
from pairing.defaults import AGENT_PORT, KEYS_DIR
from vzcommon.durable import atomic_write
from vzcommon.errors import InputError


def paired_target_key(keys_dir: Path) -> pins.PeerRecord:
    """The paired target's record (its host key is the one key a failback may come from)."""
    record = pins.load(keys_dir / "peer.json")
    if record is None or record.role != "target":
        raise InputError(
            f"this source is not paired with a target ({keys_dir / 'peer.json'}): pair it first, or run"
            " `vzrep-target serve --map ...` with keys of your own"
        )
    return record


def receive(args: argparse.Namespace) -> int:
    from target_agent.cli import main as target_main

    record = paired_target_key(args.keys_dir)
    host_key = args.keys_dir / "id_ed25519"
    if not host_key.exists():
        raise InputError(f"this source's key {host_key} is missing: pair again")
    args.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    authorized = args.data_dir / "failback_authorized_keys"
    atomic_write(authorized, f"{record.public_key} vzrep-target:{record.name}\n".encode(), mode=0o600)
    print(
        f"waiting for the failback from target {record.name} ({record.fingerprint}) on"
        f" {args.listen[0]}:{args.listen[1]}; the original disks are written in place",
        flush=True,
    )
    argv = ["serve", "--data-dir", str(args.data_dir), "--listen", f"{args.listen[0]}:{args.listen[1]}"]
    argv += ["--host-key", str(host_key), "--authorized-keys", str(authorized), "--once"]
    argv += ["--restore-points", "1"]
    for m in args.map:
        argv += ["--map", m]
    if args.ready_file:
        argv += ["--ready-file", str(args.ready_file)]
    return target_main(argv)


def add_receive_failback(sub: Any) -> None:
    from source_agent.cli import default_state_dir
    from target_agent.cli import parse_listen

    p = sub.add_parser(
        "receive-failback",
        help="let the paired target send a failed-over VM home, into the original disks (only differences)",
    )
    p.add_argument(
        "--map",
        action="append",
        required=True,
        metavar="VM/DISK=PATH",
        help="the original disk each replica disk goes into, in place (repeat per disk)",
    )
    p.add_argument("--keys-dir", type=Path, default=KEYS_DIR, help=f"the paired keys (default {KEYS_DIR})")
    p.add_argument(
        "--listen",
        type=parse_listen,
        default=("0.0.0.0", AGENT_PORT),
        metavar="HOST:PORT",
        help=f"where the DR appliance connects (default 0.0.0.0:{AGENT_PORT}, open only while this runs)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=default_state_dir() / "failback",
        help="the receiving agent's journal and undo (the disks stay where --map says)",
    )
    p.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)
    p.set_defaults(func=receive)
