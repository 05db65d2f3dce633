"""The fault soak (``make soak``, issue 18): many passes over several VMs with random faults.

Real agents as subprocesses on 127.0.0.1 over real asyncssh; each worker has its own
``vzrep-target serve``, a :class:`tests.support.proxy.FaultProxy` in front of it, a small tmpfs as
its data dir (in a private mount namespace), and a few VMs of small raw disks. A fault is one of
:data:`bench.soak.faults.KINDS`; after each the replica must equal the last committed state (judged
by sha256 against a saved copy and by ``qemu-img compare``), and after the next clean pass, the
source. ``python -m bench.soak --help`` for the parameters.
"""
