"""Rollback on a full filesystem (found by the fault soak, bench/soak): the pass had punched holes
where blocks became zeros, and putting the original bytes back needs space the filesystem no
longer has. The rollback must fail and stay pending, never report success over a torn block."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from target_agent.storage.paths import ReplicaPaths
from target_agent.storage.status import vm_status
from target_agent.storage.transaction import VmPass, recover_vm
from tests.support.smallfs import fill, small_tmpfs
from tests.support.tools import sha256_py
from vzcommon.blockhash import hash_block
from vzcommon.errors import StorageError

BS = 64 * 1024
SIZE = 1024 * 1024


def state(vdir: Path) -> dict[str, str]:
    return {p.name: sha256_py(p) for p in sorted(vdir.iterdir()) if p.name.endswith((".vmdk", ".vzmap"))}


def test_rollback_into_punched_holes_on_a_full_filesystem(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "fs", "4m") as mnt:
        data = mnt / "data"
        rng = random.Random(7)
        p = VmPass(data, "vm", block_size=BS)
        p.begin()
        w, _ = p.open_disk("d", SIZE, "", "cid-1")
        for i in range(SIZE // BS):
            block = rng.randbytes(BS)
            w.write_block(i * BS, block, hash_block(block))
        w.flush()
        p.commit({"result": "ok"})
        p.close()
        before = state(data / "vm")

        p = VmPass(data, "vm", block_size=BS)
        p.begin()
        w, _ = p.open_disk("d", SIZE, "", "cid-2")
        w.write_zeros(0, BS)  # a hole punched: its pages go back to the filesystem
        for i in range(1, 4):
            block = rng.randbytes(BS)
            w.write_block(i * BS, block, hash_block(block))  # in place: their undo needs no new page
        w.flush()
        filler = fill(mnt, leave=4096)  # someone else takes the space (and one page is left)
        with pytest.raises(StorageError, match="rollback of disk 'd' failed: No space left"):
            p.rollback()
        with pytest.raises(StorageError):
            p.close()  # tries once more, then releases the VM
        assert vm_status(data / "vm")["pending_rollback"]  # the undo log is kept for the next try
        assert ReplicaPaths(data / "vm", "d").undo.exists()

        filler.unlink()
        assert recover_vm(data, "vm") is not None
        assert state(data / "vm") == before
