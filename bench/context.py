"""What every scenario shares: the work directory, the throwaway sshd, vzrep keys and target."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .peers import Sshd, VzrepKeys, VzrepTarget, drop_writeback, vzrep_pass, warm


@dataclass
class Context:
    work: Path
    quick: bool = False
    repeat: int = 1
    sshd: Sshd = field(init=False)
    keys: VzrepKeys = field(init=False)
    data_dir: Path = field(init=False)
    state_dir: Path = field(init=False)
    _port: int = 0

    def __post_init__(self) -> None:
        self.sshd = Sshd(self.work / "sshd")
        self.keys = VzrepKeys(self.work / "vzrep-keys")
        self.data_dir = self.work / "replicas"
        self.state_dir = self.work / "source-state"

    def start(self) -> Context:
        self.sshd.start()
        self.keys.make()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return self

    def stop(self) -> None:
        self.sshd.stop()

    def vzrep(
        self,
        vm: str,
        disk: Path,
        block_size: str = "64K",
        compress: str = "auto",
        knobs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One pass against a freshly started target (so its VmHWM is this pass's peak RSS).

        The target always listens on the same port: the source's map cache is keyed by the target's
        address, as in production where the target does not move between passes.
        """
        prepare(disk)
        target = VzrepTarget(self.data_dir, self.keys, self.work / "target.log", knobs)
        target.port = self._port
        try:
            target.start()
            self._port = target.port
            return vzrep_pass(target, vm, disk, self.state_dir, block_size, compress, knobs)
        finally:
            target.stop()

    def forget(self, vm: str) -> None:
        """Delete a replica and the source's cached maps for it (keeps disk use modest)."""
        shutil.rmtree(self.data_dir / vm, ignore_errors=True)
        for cached in self.state_dir.glob(f"maps/*/{vm}"):
            shutil.rmtree(cached, ignore_errors=True)
        drop_writeback()


def prepare(disk: Path) -> None:
    """Before a measured run: nothing dirty left to write back, the source image in the page cache."""
    drop_writeback()
    warm(disk)


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest of repeated runs (the others are kept in ``all_seconds``)."""
    top = dict(min(runs, key=lambda r: r["seconds"]))
    top["all_seconds"] = [round(r["seconds"], 3) for r in runs]
    return top
