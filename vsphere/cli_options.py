"""The command-line options that say how to reach vSphere, for ``vzrep-source`` and ``vzrep-target``.

Defined once, read once (:func:`options_from_args`), so the two agents cannot drift apart. Nothing
here loads pyVmomi: the target parses these options at every start, vSphere job or not.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vsphere.appliance import PRODUCT_UUID
from vzcommon.errors import InputError

if TYPE_CHECKING:
    from vsphere.options import ConnectOptions


def add_connection_arguments(g: Any, *, required: bool = False, what: str = "vCenter or ESXi host") -> None:
    """``--vcenter``, credentials or session token, the TLS policy, the task timeout (``g`` is a
    parser or an argument group)."""
    g.add_argument("--vcenter", required=required, metavar="HOST[:PORT]", help=what)
    g.add_argument(
        "--credentials", type=Path, metavar="FILE", help="file with host/user/password lines, mode 600"
    )
    g.add_argument(
        "--session-token-file", type=Path, metavar="FILE", help="file holding an existing vSphere session id"
    )
    g.add_argument(
        "--thumbprint", metavar="SHA256", help="pin the host's TLS certificate (self-signed hosts)"
    )
    g.add_argument("--cafile", type=Path, help="CA bundle to verify the host's certificate")
    g.add_argument("--insecure", action="store_true", help="do not verify TLS at all (logged as a warning)")
    g.add_argument("--task-timeout", type=float, default=600.0, help="seconds to wait for a vSphere task")


def add_appliance_arguments(g: Any) -> None:
    """How the agent finds its own VM (for HotAdd): by name, else by this machine's BIOS UUID."""
    g.add_argument("--appliance-vm", metavar="NAME", help="this appliance's VM (default: found by BIOS UUID)")
    g.add_argument("--appliance-uuid-file", type=Path, default=PRODUCT_UUID, help=argparse.SUPPRESS)


def options_from_args(args: argparse.Namespace) -> ConnectOptions:
    from vsphere.options import ConnectOptions, load_credentials

    cred = load_credentials(args.credentials) if getattr(args, "credentials", None) else None
    token = None
    if getattr(args, "session_token_file", None):
        try:
            token = Path(args.session_token_file).read_text().strip()
        except OSError as e:
            raise InputError(
                f"cannot read the session token file {args.session_token_file}: {e.strerror}"
            ) from e
    where = args.vcenter or (cred.host if cred else None)
    if not where:
        raise InputError("give the vSphere host with --vcenter (or a host line in the credentials file)")
    host, _, port = where.rpartition(":") if where.count(":") == 1 else (where, "", "")
    if port and not port.isdigit():
        raise InputError(f"--vcenter {where}: the port must be a number")
    return ConnectOptions(
        host=host,
        port=int(port) if port else (cred.port if cred and cred.port else 443),
        credentials=cred,
        session_token=token,
        thumbprint=args.thumbprint,
        cafile=str(args.cafile) if args.cafile else None,
        insecure=args.insecure,
        task_timeout=args.task_timeout,
    )
