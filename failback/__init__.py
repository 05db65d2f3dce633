"""The way home after a committed failover, by differences: both agents' engines, roles reversed.

The DR site *sends* (:mod:`failback.send`, ``vzrep-target failback``): a source engine whose disks
are the replica, now production. The source site *receives* (:mod:`failback.receive`,
``vzrep-source receive-failback``): a target engine writing the original disks in place, hashed where
they are. This package is the one place that uses both agents; the agents never import each other.
"""
