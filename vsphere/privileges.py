"""The vSphere privileges the agents need, by the object they are checked on (see docs/vsphere.md)."""

from __future__ import annotations

#: on the source VM
SOURCE_VM = (
    "VirtualMachine.State.CreateSnapshot",
    "VirtualMachine.State.RemoveSnapshot",
    "VirtualMachine.Config.ChangeTracking",
    "VirtualMachine.Provisioning.DiskRandomRead",
)
#: on an appliance VM (source or target): HotAdd and detach, and the extraConfig markers
APPLIANCE_VM = (
    "VirtualMachine.Config.AddExistingDisk",
    "VirtualMachine.Config.RemoveDisk",
    "VirtualMachine.Config.AddRemoveDevice",
    "VirtualMachine.Config.AdvancedConfig",
)
#: on the DR side, for the replica VM and its restore points
TARGET = (
    "VirtualMachine.Inventory.Create",
    "VirtualMachine.Config.AddNewDisk",
    "VirtualMachine.Config.DiskExtend",
    "VirtualMachine.State.CreateSnapshot",
    "VirtualMachine.State.RemoveSnapshot",
    "Resource.AssignVMToPool",
    "Datastore.AllocateSpace",
    "Network.Assign",
)
#: on the replica VM, for failover (target_agent/vsphere/failover.py)
REPLICA_FAILOVER = (
    "VirtualMachine.State.RevertToSnapshot",
    "VirtualMachine.State.CreateSnapshot",
    "VirtualMachine.State.RemoveSnapshot",
    "VirtualMachine.Interact.PowerOn",
    "VirtualMachine.Interact.PowerOff",
    "VirtualMachine.Interact.DeviceConnection",
    "VirtualMachine.Config.EditDevice",  # the NICs' connect state and --network-map's backing
)
