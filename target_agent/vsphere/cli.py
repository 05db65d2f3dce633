"""``vzrep-target serve`` options for vSphere jobs; pyVmomi is imported only when ``--vcenter`` is given.

The connection options are the source's (``source_agent.vsphere.cli.options_from_args`` reads them).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from target_agent.vsphere.job import ReplicaSettings

PRODUCT_UUID = "/sys/class/dmi/id/product_uuid"


def _ds_root(value: str) -> tuple[str, Path]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected DATASTORE=DIR, got {value!r}")
    return name, Path(path)


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("vSphere replicas (write into a replica VM instead of DATA_DIR files)")
    g.add_argument("--vcenter", metavar="HOST[:PORT]", help="vCenter or ESXi host of the DR site")
    g.add_argument("--credentials", type=Path, metavar="FILE", help="host/user/password lines, mode 600")
    g.add_argument("--session-token-file", type=Path, metavar="FILE", help="an existing vSphere session id")
    g.add_argument("--thumbprint", metavar="SHA256", help="pin the host's TLS certificate (self-signed)")
    g.add_argument("--cafile", type=Path, help="CA bundle to verify the host's certificate")
    g.add_argument("--insecure", action="store_true", help="do not verify TLS at all (logged as a warning)")
    g.add_argument("--task-timeout", type=float, default=600.0, help="seconds to wait for a vSphere task")
    g.add_argument("--appliance-vm", metavar="NAME", help="this appliance's VM (default: by BIOS UUID)")
    g.add_argument("--appliance-uuid-file", type=Path, default=Path(PRODUCT_UUID), help=argparse.SUPPRESS)
    g.add_argument("--replica-vm", metavar="NAME", help="write into this existing VM (default <vm>_replica)")
    g.add_argument("--replica-folder", metavar="FOLDER", help="VM folder for new replica VMs")
    g.add_argument("--replica-datastore", metavar="DS", help="datastore for new replica VMs")
    g.add_argument("--replica-pool", metavar="POOL", help="resource pool for new replica VMs")
    g.add_argument("--replica-host", metavar="HOST", help="ESXi host for new replica VMs")
    g.add_argument(
        "--restore-points", type=int, default=7, metavar="N", help="restore points kept per replica (7)"
    )
    g.add_argument("--datastore-root", action="append", default=[], type=_ds_root, help=argparse.SUPPRESS)


def settings_from_args(args: argparse.Namespace) -> ReplicaSettings | None:
    """None without ``--vcenter`` (the replica is files in DATA_DIR)."""
    if not args.vcenter:
        return None
    from source_agent.vsphere.cli import options_from_args
    from target_agent.vsphere.job import ReplicaSettings

    return ReplicaSettings(
        connect=options_from_args(args),
        appliance_vm=args.appliance_vm,
        uuid_path=args.appliance_uuid_file,
        replica_vm=args.replica_vm,
        folder=args.replica_folder,
        datastore=args.replica_datastore,
        resource_pool=args.replica_pool,
        host=args.replica_host,
        restore_points=args.restore_points,
        datastore_roots=dict(args.datastore_root),
    )
