"""The vSphere client both agents use: one object, its methods kept in a module per concern.

===================  ==========================================================================
module               what :class:`VSphereClient` gets from it
===================  ==========================================================================
``session.py``       the login's plumbing (moids, property collector, task waits), ``close``,
                     ``session_info``, ``missing_privileges``
``inventory.py``     ``find_vm``, ``vm_info``, ``find_vm_by_bios_uuid``, ``host_datastores``,
                     ``datastore_paths``
``cbt.py``           ``set_cbt``, ``query_changed_areas``
``snapshots.py``     ``create_snapshot``, ``remove_snapshot``, ``revert_to_snapshot``, ``list_snapshots``,
                     ``current_snapshot``, ``snapshot_disks``
``hotadd.py``        ``hotadd``, ``list_hotadded``, ``detach``
``replica_vms.py``   ``create_vm``, ``grow_disk``, ``reconfigure``, ``destroy_vm``, ``mark_as_template``
``power.py``         ``power_on``, ``power_off``, ``shut_down``, ``set_nics_connected``, ``host_networks``
===================  ==========================================================================

Every public method is ``async`` and runs its pyVmomi calls in a worker thread; faults come back as
:mod:`vzcommon.errors` (:mod:`vsphere.faults`). Make one with :func:`vsphere.connection.connect`.
"""

from __future__ import annotations

from vsphere.cbt import ChangeTracking
from vsphere.hotadd import HotAdd
from vsphere.power import Power
from vsphere.replica_vms import ReplicaVms
from vsphere.snapshots import Snapshots


class VSphereClient(ChangeTracking, Snapshots, HotAdd, ReplicaVms, Power):
    """A logged-in session; use :func:`vsphere.connection.connect` to make one and :meth:`close`
    (or ``async with``)."""
