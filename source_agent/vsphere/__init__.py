"""vSphere source side: the pyVmomi adapter (adapter.py), snapshots, HotAdd, CBT, and the pass context (job.py)."""
