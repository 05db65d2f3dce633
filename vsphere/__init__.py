"""The vSphere client both agents use; the only package that imports pyVmomi (through ``vmomi.py``).

Reaching vSphere:
    ``options.py``      credentials file, session token, TLS policy (CA, pinned thumbprint, insecure)
    ``cli_options.py``  the command-line options for that, shared by both agents (no pyVmomi)
    ``connection.py``   ``connect()``: log in, explain TLS failures, return a :class:`VSphereClient`
    ``faults.py``       ``translate_fault``: the one place pyVmomi faults become ``vzcommon.errors``;
                        ``blocking``: every call runs in a worker thread

The client (``client.py``: one ``VSphereClient``, its methods by concern):
    ``session.py``      the login's plumbing: moids, property collector, task waits, privileges check
    ``inventory.py``    find VMs (name, moid, BIOS UUID), read their hardware; datastores
    ``cbt.py``          Changed Block Tracking: enable, QueryChangedDiskAreas
    ``snapshots.py``    create, remove, revert to, list snapshots; the current one; a snapshot's disks
    ``hotadd.py``       attach disk files to an appliance VM, detach them, the extraConfig markers
    ``replica_vms.py``  create a VM from a HardwareRecord, grow a disk, reconfigure, delete
    ``power.py``        power on and off; connect, disconnect or re-map a VM's NICs

Plain records and what works on them (no pyVmomi):
    ``model.py``        VmInfo, DiskInfo, SnapshotInfo, AttachedDisk, HotAddRequest; our name prefixes
    ``hardware.py``     HardwareRecord, the one hardware model: recorded, compared, used to create replicas
    ``devices.py``      where a HotAdded disk shows up in the appliance (block device, datastore file)
    ``appliance.py``    which VM the agent runs in (BIOS UUID)
    ``cleanup.py``      detach and remove what a crashed run left; ``run_shielded``
    ``privileges.py``   the privileges the agents need

Importing this package imports nothing: the agents load pyVmomi only for a vSphere job.
"""
