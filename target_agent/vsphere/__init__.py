"""Target side of a vSphere job: the replica VM, HotAdd of its disks, restore points."""
