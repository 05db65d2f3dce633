"""A target whose filesystem is full, so that even the rollback cannot put the original bytes back
(found by the fault soak, bench/soak): the pass had punched a hole where a block became zeros, and
the new blocks took the space. The source must hear why (exit 9, the rollback pending), not lose
the connection (exit 4); once there is space, recovery brings the replica back exactly."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from target_agent.storage.status import vm_status
from target_agent.storage.transaction import recover_vm
from tests.support.agents import Keys, Target, replicate, snapshot
from tests.support.smallfs import fill, small_tmpfs
from tests.support.tools import qemu_compare
from vzcommon.errors import StorageError, VzrepError

BS = 64 * 1024


async def test_rollback_without_space_is_reported_and_stays_pending(
    tmp_path: Path, session_keys: Keys
) -> None:
    with small_tmpfs(tmp_path / "fs", "8m") as mnt:
        t = await Target(mnt / "data", session_keys).start()
        try:
            rng = random.Random(5)
            src = tmp_path / "d.img"
            with open(src, "wb") as f:
                f.truncate(32 * BS)
                for i in range(4):
                    os.pwrite(f.fileno(), rng.randbytes(BS), i * BS)
            state = tmp_path / "state"
            await replicate(t.spec(), "full", [src], state)
            before = snapshot(t.vm("full"))
            with open(src, "r+b") as f:
                os.pwrite(f.fileno(), bytes(BS), 0)  # block 0 becomes zeros: a hole in the replica
                for i in range(4, 32):
                    os.pwrite(f.fileno(), rng.randbytes(BS), i * BS)  # new blocks take the space
            filler = fill(mnt, leave=3 * BS)
            with pytest.raises(VzrepError) as exc:
                await replicate(t.spec(), "full", [src], state, compress="none")
            assert exc.value.exit_code == StorageError.exit_code, str(exc.value)
            assert "No space left" in str(exc.value) and "stays pending" in str(exc.value)
            st = vm_status(t.vm("full"))  # the VM is free (the error was sent after its release)
            assert st["pending_rollback"] and not st["pass_running"], st
            filler.unlink()
            assert recover_vm(t.data_dir, "full") is not None  # what `vzrep-target rollback` runs
            assert snapshot(t.vm("full")) == before
            r = await replicate(t.spec(), "full", [src], state)
            assert r.ok
            qemu_compare(src, t.vm("full") / "d.vmdk")
        finally:
            await t.stop()
