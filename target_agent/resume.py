"""Suspended passes: a pass whose connection was lost waits a while for its source to come back.

Without this, a link that drops at 60 % of a 4 TB pass throws the 60 % away. Instead the session
*parks* its pass: every block received so far is written (each behind its durable undo record, as
always), the pass stays uncommitted, its undo logs and journal stay as they are, and the VM stays
locked. The source reconnects and says which pass it resumes (HELLO ``resume``); the target answers
with what it has of each disk (WELCOME ``resumed``) and the source sends only what comes after.

The all-or-nothing rule is unchanged: a parked pass is still one pass. If no source resumes it within
the window (``serve --resume-window``, default 300 s), or a source starts a new pass of the VM, or
the agent stops, it is rolled back exactly as a failed pass is; if the agent dies, start-up recovery
rolls it back from its journal. Only file-replica passes in the middle of sending blocks are parked
(a vSphere replica's disks are detached at once; a pass cut while opening a disk or committing is
rolled back as before).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from vzcommon.errors import VzrepError
from vzcommon.log import get_logger

from .storage.replica import DiskWriter
from .storage.transaction import VmPass

log = get_logger("vzrep.target.resume")

DEFAULT_WINDOW = 300.0


@dataclass
class Parked:
    vm: str
    vm_pass: VmPass
    writers: dict[int, DiskWriter]
    #: WELCOME's ``resumed``: what the target received and applied of each disk
    resumable: list[tuple[int, str, int, int, int, int, bool]]
    block_size: int
    mode: str
    extra: dict[str, Any] = field(default_factory=dict)  # session details to carry over
    handle: asyncio.TimerHandle | None = None

    @property
    def pass_id(self) -> str:
        return self.vm_pass.pass_id


class Suspended:
    """The parked passes of one agent, by VM; each rolled back when its window ends."""

    def __init__(self, window: float = DEFAULT_WINDOW) -> None:
        self.window = window
        self._parked: dict[str, Parked] = {}
        self._expiring: set[asyncio.Task[None]] = set()

    def park(self, parked: Parked) -> None:
        loop = asyncio.get_running_loop()
        self._parked[parked.vm] = parked

        def expire() -> None:
            task = loop.create_task(self._roll_back(parked.vm, parked.pass_id, "its source did not come back"))
            self._expiring.add(task)
            task.add_done_callback(self._expiring.discard)

        parked.handle = loop.call_later(self.window, expire)
        log.warning("pass_suspended", vm=parked.vm, pass_id=parked.pass_id, window=self.window)

    def take(self, vm: str, pass_id: str) -> Parked | None:
        """The parked pass ``pass_id`` of ``vm``, for a source resuming it (None: not here)."""
        parked = self._parked.get(vm)
        if parked is None or parked.pass_id != pass_id:
            return None
        del self._parked[vm]
        if parked.handle is not None:
            parked.handle.cancel()
        log.info("pass_resumed", vm=vm, pass_id=pass_id)
        return parked

    async def discard(self, vm: str) -> None:
        """A new pass of ``vm`` begins: the parked one (if any) is rolled back first."""
        parked = self._parked.get(vm)
        if parked is not None:
            await self._roll_back(vm, parked.pass_id, "a new pass of the VM began")

    async def close(self) -> None:
        """The agent stops: every parked pass is rolled back."""
        for vm, parked in list(self._parked.items()):
            await self._roll_back(vm, parked.pass_id, "the target agent is stopping")
        if self._expiring:
            await asyncio.gather(*self._expiring, return_exceptions=True)

    async def _roll_back(self, vm: str, pass_id: str, why: str) -> None:
        parked = self._parked.get(vm)
        if parked is None or parked.pass_id != pass_id:
            return
        del self._parked[vm]
        if parked.handle is not None:
            parked.handle.cancel()

        def undo() -> str:
            try:
                return parked.vm_pass.rollback()
            except VzrepError as exc:  # e.g. no space to put the original bytes back
                return f"the rollback failed and stays pending until the next pass or a restart: {exc}"
            finally:
                try:  # close() tries the rollback once more, then releases the VM
                    parked.vm_pass.close()
                except VzrepError as exc:
                    log.info("rollback_failed_again", vm=vm, error=str(exc))

        what = await asyncio.shield(asyncio.to_thread(undo))
        log.warning("suspended_pass_rolled_back", vm=vm, pass_id=pass_id, why=why, rollback=what)
