"""``vzrep-target serve`` options for vSphere jobs; the vSphere client is imported only when ``--vcenter`` is given.

The connection and appliance options are both agents' (:mod:`vsphere.cli_options`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from vsphere.cli_options import add_appliance_arguments, add_connection_arguments, options_from_args

if TYPE_CHECKING:
    from target_agent.vsphere.job import ReplicaSettings


def _ds_root(value: str) -> tuple[str, Path]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected DATASTORE=DIR, got {value!r}")
    return name, Path(path)


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("vSphere replicas (write into a replica VM instead of DATA_DIR files)")
    add_connection_arguments(g, what="vCenter or ESXi host of the DR site")
    add_appliance_arguments(g)
    g.add_argument("--replica-vm", metavar="NAME", help="write into this existing VM (default <vm>_replica)")
    g.add_argument("--replica-folder", metavar="FOLDER", help="VM folder for new replica VMs")
    g.add_argument("--replica-datastore", metavar="DS", help="datastore for new replica VMs")
    g.add_argument("--replica-pool", metavar="POOL", help="resource pool for new replica VMs")
    g.add_argument("--replica-host", metavar="HOST", help="ESXi host for new replica VMs")
    g.add_argument("--datastore-root", action="append", default=[], type=_ds_root, help=argparse.SUPPRESS)


def settings_from_args(args: argparse.Namespace) -> ReplicaSettings | None:
    """None without ``--vcenter`` (the replica is files in DATA_DIR)."""
    if not args.vcenter:
        return None
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
