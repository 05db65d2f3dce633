"""``pair``, ``unpair`` and ``pair-status`` for ``vzrep-target`` and ``vzrep-source``.

The agents' CLIs register these with :func:`add_target_commands` / :func:`add_source_commands`; each
handler returns an exit code (0, or :class:`~vzcommon.errors.ExitCode` values: PAIRING 14 for a wrong,
expired or used code, CONNECTION 4 when the target cannot be reached, BUSY 10 when the target was
still pairing another source after ``--busy-wait``, INPUT 3 for bad key files).
``pair-status`` is not called ``status`` because ``vzrep-target status`` reports replication.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from dataclasses import asdict
from pathlib import Path

from pairing import pins
from pairing.defaults import AGENT_PORT, KEYS_DIR, PAIRING_PORT
from pairing.net import PairingServer, pair_with_target
from pairing.protocol import DEFAULT_EXPIRY, CodeGate, TargetPaired, new_code
from vzcommon import keys
from vzcommon.climain import run_main
from vzcommon.errors import ExitCode, InputError


def _hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _keys_dir_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--keys-dir",
        type=Path,
        default=KEYS_DIR,
        help="where keys, pins and peer.json live (default %(default)s)",
    )


def add_target_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("pair", help="show a one-time code and wait for a source to pair")
    _keys_dir_args(p)
    p.add_argument(
        "--code", nargs="?", const="", default="", help="use this code (default: generate one and print it)"
    )
    p.add_argument("--code-file", type=Path, help="read the code from this file and delete it once used")
    p.add_argument(
        "--listen",
        type=_hostport,
        default=("0.0.0.0", PAIRING_PORT),
        help=f"pairing address (default 0.0.0.0:{PAIRING_PORT})",
    )
    p.add_argument("--agent-port", type=int, default=AGENT_PORT, help="agent port the source should pin")
    p.add_argument("--host-key", type=Path, help="default KEYS_DIR/ssh_host_ed25519_key")
    p.add_argument("--authorized-keys", type=Path, help="default KEYS_DIR/authorized_keys")
    p.add_argument("--expires", type=float, default=DEFAULT_EXPIRY, help="seconds the code is valid")
    p.set_defaults(func=_target_pair)
    _add_common(subparsers, "target")


def add_source_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("pair", help="pair with a target showing a code")
    _keys_dir_args(p)
    p.add_argument("host", help="the target appliance's address")
    p.add_argument("code", help="the code shown on the target's console")
    p.add_argument("--port", type=int, default=PAIRING_PORT, help="pairing port (default %(default)s)")
    p.add_argument("--identity", type=Path, help="default KEYS_DIR/id_ed25519 (created if missing)")
    p.add_argument("--known-hosts", type=Path, help="default KEYS_DIR/known_hosts")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds one pairing exchange may take")
    p.add_argument(
        "--busy-wait",
        type=float,
        default=DEFAULT_EXPIRY,
        metavar="SECONDS",
        help="how long to keep trying while the target is pairing another source (default: a code's life)",
    )
    p.set_defaults(func=_source_pair)
    _add_common(subparsers, "source")


def _add_common(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], role: str) -> None:
    u = subparsers.add_parser("unpair", help="forget the paired peer and its pinned key")
    _keys_dir_args(u)
    u.set_defaults(func=_unpair, role=role)
    s = subparsers.add_parser(
        "pair-status", help="show this appliance's key and the pinned peer's fingerprint"
    )
    _keys_dir_args(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_status, role=role)


def _own_key(keys_dir: Path, role: str) -> Path:
    return keys_dir / ("ssh_host_ed25519_key" if role == "target" else "id_ed25519")


def _pin_files(keys_dir: Path, role: str) -> Path:
    return keys_dir / ("authorized_keys" if role == "target" else "known_hosts")


def _target_pair(args: argparse.Namespace) -> int:
    host_key_path = args.host_key or _own_key(args.keys_dir, "target")
    authorized = args.authorized_keys or _pin_files(args.keys_dir, "target")
    code = args.code
    if args.code_file is not None:
        try:
            code = args.code_file.read_text().strip()
        except OSError as exc:
            raise InputError(f"cannot read the pairing code file: {exc}") from None
    code = code or new_code()
    try:
        host_key = keys.ensure(host_key_path, f"vzrep-target@{socket.gethostname()}")
        peer = asyncio.run(_serve(args, code, host_key))
    finally:
        if args.code_file is not None:
            args.code_file.unlink(missing_ok=True)  # single use, also when it expired
    record = pins.pin_source(
        authorized, args.keys_dir / "peer.json", peer[0].client_key, peer[0].name, peer[1]
    )
    print(f"paired with source {record.name} ({record.address}); pinned client key {record.fingerprint}")
    return 0


async def _serve(args: argparse.Namespace, code: str, host_key: str) -> tuple[TargetPaired, str]:
    gate = CodeGate(code, time.monotonic(), expiry=args.expires)
    server = PairingServer(gate, host_key, args.agent_port, socket.gethostname())
    host, port = args.listen
    bound = await server.start(host, port)
    print(
        f"Pairing code: {code}  (valid {args.expires / 60:.0f} min, single use; listening on {host}:{bound})",
        flush=True,
    )
    print(f"On the source: vzrep-source pair <this-address> {code}", flush=True)
    paired = await server.wait()
    return paired, server.peer_address or "?"


def _source_pair(args: argparse.Namespace) -> int:
    identity = args.identity or _own_key(args.keys_dir, "source")
    known_hosts = args.known_hosts or _pin_files(args.keys_dir, "source")
    client_key = keys.ensure(identity, f"vzrep-source@{socket.gethostname()}")
    result = asyncio.run(
        pair_with_target(
            args.host,
            args.port,
            args.code,
            client_key,
            socket.gethostname(),
            session_timeout=args.timeout,
            busy_wait=args.busy_wait,
        )
    )
    record = pins.pin_target(
        known_hosts, args.keys_dir / "peer.json", args.host, result.agent_port, result.host_key, result.name
    )
    print(f"paired with target {record.name} at {record.address}; pinned host key {record.fingerprint}")
    return 0


def _unpair(args: argparse.Namespace) -> int:
    had = pins.unpair(args.keys_dir / "peer.json", _pin_files(args.keys_dir, args.role))
    print("unpaired: the peer's key is no longer trusted" if had else "nothing was paired")
    return 0


def status_dict(keys_dir: Path, role: str) -> dict[str, object]:
    """What ``pair-status --json`` prints; the console and ``vzrep-target status`` may embed it."""
    own = _own_key(keys_dir, role)
    own_fp = None
    if own.exists():
        try:
            own_fp = keys.fingerprint(keys.public_line(own))
        except InputError:
            own_fp = "(unreadable key)"
    record = pins.load(keys_dir / "peer.json")
    return {
        "role": role,
        "own_fingerprint": own_fp,
        "paired": record is not None,
        "peer": asdict(record) if record else None,
    }


def _status(args: argparse.Namespace) -> int:
    status = status_dict(args.keys_dir, args.role)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"this {args.role}'s key: {status['own_fingerprint'] or 'not created yet'}")
    peer = status["peer"]
    if isinstance(peer, dict):
        print(f"paired with {peer['role']} {peer['name']} at {peer['address']}: {peer['fingerprint']}")
    else:
        print("not paired")
    return 0


def standalone(role: str, argv: list[str] | None = None) -> int:
    """The commands of one role without its agent's CLI: auto-pairing and ``python -m pairing.cli``."""
    ap = argparse.ArgumentParser(prog=f"vzrep-{role}")
    sub = ap.add_subparsers(dest="command", required=True)
    (add_target_commands if role == "target" else add_source_commands)(sub)
    return run_main(f"vzrep-{role}", ap, argv, "nothing was paired")


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("target", "source"):
        print("usage: python -m pairing.cli target|source COMMAND ...", file=sys.stderr)
        raise SystemExit(int(ExitCode.USAGE))
    raise SystemExit(standalone(sys.argv[1], sys.argv[2:]))
