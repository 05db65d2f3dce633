"""What a target pass of a vSphere job does, on top of the shared client in ``vsphere/``: the pass
(job.py), the replica VM (replica.py), HotAdd of its disks for the pass (hotadd.py), restore points
(restore_points.py), and the ``serve`` options (cli.py)."""
