"""What a source pass of a vSphere job does, on top of the shared client in ``vsphere/``: the pass
context (job.py: snapshot, HotAdd, clean-up), CBT or differential per disk (cbt.py), the core session's
disk jobs (glue.py), and the command-line hooks (cli.py)."""
