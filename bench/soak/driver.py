"""The soak's workers: passes with random faults, each judged against the last committed state.

A worker owns one target agent (its data dir on its own small tmpfs when the run has a private mount
namespace), a :class:`FaultProxy` in front of it, and a few VMs of one or two small raw disks. Before
every pass a few random blocks of the source change (some to zeros), so every pass has work. Then:

* a **fault pass** (one of :data:`KINDS`); afterwards, once the target is idle (restarted first after
  a SIGKILL), every disk of the VM must equal its last committed state, or every disk the state the
  pass started from (the pass committed before the fault struck), never a mix, and no pass file may
  be left over; a replica whose source changed during the pass must match its own committed map;
* now and then (always after a changing source) a **clean pass**, which must succeed and leave
  every disk equal to the source.

Every state is judged twice: sha256 of the replica's flat extent against the saved copy, and
``qemu-img compare`` of the saved copy against the replica's VMDK descriptor.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from target_agent.storage.status import vm_status
from tests.support.agents import Keys
from tests.support.proxy import FaultProxy

from . import judge
from .agents import PassResult, TargetAgent, Zygote, source_pass

BS = 64 * 1024
KINDS = ("cut", "kill_source", "kill_target", "enospc", "slow", "changing")
#: the exit codes each fault may end the source with (anything else is a finding)
EXPECTED_EXIT = {
    "cut": {0, 4, 8},
    "kill_source": {0, -signal.SIGKILL},
    "kill_target": {0, 4},
    "enospc": {0, 9},
    "slow": {0},
    "changing": {0},
}


@dataclass
class Config:
    work: Path
    faults: int = 500
    workers: int = 2
    vms: int = 4
    seed: int = 1
    disk_mib: int = 4
    changes: int = 4
    clean_ratio: float = 0.3
    max_seconds: float = 900
    restore_points: int = 3
    kinds: tuple[str, ...] = KINDS
    #: a private mount namespace is in place: each worker's data dir is a tmpfs (ENOSPC faults)
    tmpfs: bool = False
    #: source agents forked from one that imported everything (bench.soak.zygote), not started anew
    fork_server: bool = True


@dataclass
class Tally:
    started: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)  # "kind outcome"
    exits: Counter[str] = field(default_factory=Counter)  # "kind exit"
    clean_passes: int = 0
    passes: int = 0
    target_restarts: int = 0
    corrupt: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "faults": sum(self.faults.values()),
            "faults_by_kind": dict(sorted(self.faults.items())),
            "outcomes": dict(sorted(self.outcomes.items())),
            "exit_codes": dict(sorted(self.exits.items())),
            "passes": self.passes,
            "clean_passes": self.clean_passes,
            "target_restarts": self.target_restarts,
            "corrupt": len(self.corrupt),
            "lost": len(self.lost),
            "problems": len(self.problems),
            "corrupt_detail": self.corrupt,
            "lost_detail": self.lost,
            "problem_detail": self.problems,
        }


@dataclass
class Disk:
    name: str
    src: Path
    saved: Path  # the replica's last committed state, as bytes
    saved_sha: str = ""


@dataclass
class Vm:
    name: str
    disks: list[Disk]
    state: Path
    #: bytes each way of the last whole passes, and the last one's timings: where faults are aimed
    c2s_seen: list[int] = field(default_factory=list)
    s2c_seen: list[int] = field(default_factory=list)
    to_connect: float = 0.5
    connected_secs: float = 0.3

    @property
    def c2s(self) -> int:
        """The smallest of the last five passes' bytes: a cut below it strikes this pass too (passes
        differ: zeroed blocks travel as a few bytes, a pass after a changing source is larger)."""
        return min(self.c2s_seen[-5:], default=0)

    @property
    def s2c(self) -> int:
        return min(self.s2c_seen[-5:], default=0)

    def sources(self) -> dict[str, Path]:
        return {d.name: d.src for d in self.disks}


class Worker:
    def __init__(
        self, wid: int, cfg: Config, tally: Tally, keys: Keys, vm_names: list[str], deadline: float
    ) -> None:
        self.wid, self.cfg, self.tally, self.keys, self.deadline = wid, cfg, tally, keys, deadline
        self.rng = random.Random(cfg.seed * 1000 + wid)
        self.dir = cfg.work / f"w{wid}"
        self.mnt = self.dir / "mnt"
        self.data = self.mnt / "data"
        self.vm_names = vm_names
        self.vms: list[Vm] = []
        self.bag: list[str] = []
        self.events = open(cfg.work / f"events-w{wid}.jsonl", "a")  # closed at the end of run()
        self.target = TargetAgent(self.data, keys, self.dir / "target.log", cfg.restore_points)
        self.proxy: FaultProxy | None = None
        self.zygote: Zygote | None = None

    # ------------------------------------------------------------------ set-up

    def _mount(self) -> None:
        self.mnt.mkdir(parents=True)
        if not self.cfg.tmpfs:
            return
        disks = sum(1 + (i % 2) for i in range(len(self.vm_names)))
        per_disk = (
            self.cfg.disk_mib * 2 + (self.cfg.restore_points + 2) * self.cfg.changes * BS // (1 << 20) + 2
        )
        size = 8 + disks * per_disk
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}m,mode=0700", "tmpfs", str(self.mnt)], check=True
        )

    def _make_vm(self, name: str, ndisks: int) -> Vm:
        vdir = self.dir / name
        (vdir / "saved").mkdir(parents=True)
        disks = []
        for k in range(ndisks):
            size = (self.cfg.disk_mib + k) << 20
            src = vdir / f"disk{k}.img"
            with open(src, "wb") as f:
                f.truncate(size)
                for idx in self.rng.sample(range(size // BS), size // BS // 3):
                    f.seek(idx * BS)
                    f.write(self.rng.randbytes(BS))
            disks.append(Disk(f"disk{k}", src, vdir / "saved" / f"disk{k}.raw"))
        return Vm(name, disks, vdir / "state")

    def change(self, vm: Vm) -> None:
        """Between passes: a few random blocks of each disk get new data (one in five: zeros)."""
        for d in vm.disks:
            size = d.src.stat().st_size
            with open(d.src, "r+b") as f:
                for idx in self.rng.sample(range(size // BS), self.cfg.changes):
                    f.seek(idx * BS)
                    f.write(bytes(BS) if self.rng.random() < 0.2 else self.rng.randbytes(BS))

    def log(self, **event: Any) -> None:
        self.events.write(json.dumps(event, default=str) + "\n")
        self.events.flush()

    # ------------------------------------------------------------------ passes

    async def run_pass(self, vm: Vm, **kw: Any) -> PassResult:
        assert self.proxy is not None
        self.tally.passes += 1
        return await source_pass(
            self.keys,
            self.proxy.port,
            vm.name,
            vm.sources(),
            vm.state,
            self.proxy.connected,
            zygote=self.zygote,
            **kw,
        )

    def _learn(self, vm: Vm, res: PassResult) -> None:
        """Where the next faults aim: the bytes and timings of a whole pass."""
        assert self.proxy is not None
        vm.c2s_seen.append(self.proxy.c2s)
        vm.s2c_seen.append(self.proxy.s2c)
        if res.to_connect is not None:
            vm.to_connect = res.to_connect
            vm.connected_secs = max(0.01, res.seconds - res.to_connect)

    async def clean(self, vm: Vm, label: str = "clean") -> None:
        """A pass without faults: it must succeed and leave every disk equal to the source."""
        assert self.proxy is not None
        self.change(vm)
        self.proxy.arm()
        res = await self.run_pass(vm)
        self.tally.clean_passes += 1
        if res.rc != 0:
            self.tally.problems.append(f"{vm.name}: {label} pass exit {res.rc}: {res.stderr.strip()[-400:]}")
            self.log(vm=vm.name, kind=label, rc=res.rc, stderr=res.stderr[-2000:])
            if await self.wait_idle(vm) == "pending":
                await self.rollback_by_hand(vm)
            self.proxy.arm()
            res = await self.run_pass(vm)  # one retry: a replica that cannot be brought back is lost
            if res.rc != 0:
                self.tally.lost.append(
                    f"{vm.name}: two clean passes failed, last exit {res.rc}: {res.stderr.strip()[-400:]}"
                )
                return
        self._learn(vm, res)
        await self.wait_idle(vm)
        for d in vm.disks:
            flat, desc = self.data / vm.name / f"{d.name}-flat.vmdk", self.data / vm.name / f"{d.name}.vmdk"
            want, got = judge.sha256(d.src), judge.sha256(flat)
            differ = await asyncio.to_thread(judge.qemu_compare, d.src, desc)
            if want != got or differ:
                self.tally.corrupt.append(
                    f"{vm.name}/{d.name}: after a clean pass the replica differs from the source ({differ or 'sha256'})"
                )
                self.keep_evidence(vm, "clean")
            shutil.copyfile(d.src, d.saved)
            d.saved_sha = want
        disks = (res.report or {}).get("disks", [])
        self.log(vm=vm.name, kind=label, rc=res.rc, c2s=vm.c2s, s2c=vm.s2c, secs=round(res.seconds, 3),
                 maps=[(d.get("map_status"), d.get("mode"), d.get("notes")) for d in disks])  # fmt: skip

    async def wait_idle(self, vm: Vm, limit: float = 60) -> str:
        """'idle'; 'pending' when the VM is free but its rollback did not finish (the target keeps
        it for the next pass or a restart); 'busy' when the target still holds it after ``limit``."""
        vdir = self.data / vm.name
        deadline = time.monotonic() + limit
        free_since = None
        while time.monotonic() < deadline:
            st = vm_status(vdir)
            if not st["pass_running"] and not st["pending_rollback"]:
                return "idle"
            if not st["pass_running"]:
                free_since = free_since or time.monotonic()
                if time.monotonic() - free_since > 1.0:
                    return "pending"
            else:
                free_since = None
            await asyncio.sleep(0.02)
        self.tally.problems.append(
            f"{vm.name}: the target still busy {limit:.0f} s after the pass: {vm_status(vdir)}"
        )
        return "busy"

    async def rollback_by_hand(self, vm: Vm) -> str:
        """What the message tells the user to do once there is space: ``vzrep-target rollback``."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "target_agent.cli", "rollback", "--data-dir", str(self.data), "--vm", vm.name,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            self.tally.problems.append(
                f"{vm.name}: vzrep-target rollback exit {proc.returncode}: {out.decode()[-300:]}"
            )
        return out.decode()

    def keep_evidence(self, vm: Vm, why: str) -> None:
        dest = self.cfg.work / "evidence" / f"{vm.name}-{self.tally.started}-{why}"
        shutil.copytree(self.data / vm.name, dest / "replica", dirs_exist_ok=True)
        for d in vm.disks:
            shutil.copy(d.saved, dest / f"{d.name}.saved")
            shutil.copy(d.src, dest / f"{d.name}.src")

    # ------------------------------------------------------------------ faults

    def next_kind(self) -> str:
        """Kinds come from a shuffled bag, so even a dozen faults cover each kind."""
        if not self.bag:
            self.bag = list(self.cfg.kinds)
            self.rng.shuffle(self.bag)
        return self.bag.pop()

    def _kill_moment(self, vm: Vm) -> tuple[str, float]:
        if self.rng.random() < 0.2:
            return "spawn", self.rng.uniform(0, vm.to_connect)  # while the agent starts or connects
        return "connect", self.rng.uniform(0, 0.9 * vm.connected_secs)

    async def fault(self, vm: Vm, kind: str) -> None:
        assert self.proxy is not None
        self.change(vm)
        new = {d.name: judge.sha256(d.src) for d in vm.disks}
        self.proxy.arm()
        detail: dict[str, Any] = {}
        writer = None
        filler = self.mnt / "filler"
        kill: tuple[str, float] | None = None
        on_kill = None
        if kind == "cut":
            if self.rng.random() < 0.75:
                detail["cut_c2s"] = self.rng.randrange(1, max(2, vm.c2s))
            else:
                detail["cut_s2c"] = self.rng.randrange(1, max(2, vm.s2c))
            detail["reset"] = self.rng.random() < 0.5
            self.proxy.arm(**detail)
        elif kind == "slow":
            detail = {"rate": self.rng.uniform(256 << 10, 4 << 20), "delay": self.rng.uniform(0, 0.01)}
            self.proxy.arm(**detail)
        elif kind == "kill_source":
            kill = self._kill_moment(vm)
        elif kind == "kill_target":
            kill = self._kill_moment(vm)
            on_kill = self.target.kill
        elif kind == "enospc":
            need = self.cfg.changes * BS * len(vm.disks)  # the undo log alone; new data may fill holes
            leave = self.rng.randrange(0, need + need // 4)
            st = os.statvfs(self.mnt)
            fill = st.f_bavail * st.f_frsize - leave
            detail = {"leave": leave, "need": need}
            if fill > 0:
                fd = os.open(filler, os.O_CREAT | os.O_WRONLY, 0o600)
                try:
                    os.posix_fallocate(fd, 0, fill)
                finally:
                    os.close(fd)
        elif kind == "changing":
            d = self.rng.choice(vm.disks)
            detail["disk"] = d.name
            writer = subprocess.Popen(
                [sys.executable, "-m", "bench.soak.writer", str(d.src), str(self.rng.randrange(1 << 30))],
                stdout=subprocess.PIPE,
            )
            assert writer.stdout is not None
            await asyncio.to_thread(writer.stdout.readline)
        if kill is not None:
            detail["kill"] = kill
        res = await self.run_pass(vm, kill=kill, on_kill=on_kill)
        if writer is not None:
            writer.send_signal(signal.SIGTERM)
            await asyncio.to_thread(writer.wait)
        if filler.exists():
            filler.unlink()
        if kind == "kill_target" or not self.target.alive():
            if kind != "kill_target":
                self.tally.problems.append(
                    f"{vm.name}: the target died during a {kind} fault; see {self.target.log_path}"
                )
            self.tally.target_restarts += 1
            await self.target.kill()
            await self.target.start()
        self.tally.faults[kind] += 1
        self.tally.exits[f"{kind} exit {res.rc}"] += 1
        if res.rc not in EXPECTED_EXIT[kind]:
            self.tally.problems.append(
                f"{vm.name}: {kind} {detail}: unexpected exit {res.rc}: {res.stderr.strip()[-400:]}"
            )
        if kind in ("slow", "changing", "enospc") and res.rc == 0:
            self._learn(vm, res)
        outcome = await self.judge_fault(vm, kind, res, new)
        bit = "struck" if res.rc != 0 else "pass completed first"
        if kind.startswith("kill") and res.killed and res.to_connect is None:
            bit = "struck before the source connected"
        if kind in ("slow", "changing"):
            bit = "pass completed" if res.rc == 0 else "pass failed"
        self.tally.outcomes[f"{kind}: {bit}, {outcome}"] += 1
        self.log(vm=vm.name, kind=kind, rc=res.rc, outcome=outcome, detail=detail, killed=res.killed,
                 secs=round(res.seconds, 3), stderr=res.stderr.strip()[-300:])  # fmt: skip
        if kind == "changing" and outcome == "committed":
            await self.clean(vm)  # the saved state is not the source's: bring it back now

    async def judge_fault(self, vm: Vm, kind: str, res: PassResult, new: dict[str, str]) -> str:
        """'rolled back' (every disk at its committed state) or 'committed' (every disk at the
        pass's state); anything else is a corrupt replica."""
        vdir = self.data / vm.name
        pending = await self.wait_idle(vm) == "pending"
        if pending:
            if kind != "enospc":
                self.tally.problems.append(
                    f"{vm.name}: a rollback left pending after {kind} (exit {res.rc}): {res.stderr.strip()[-300:]}"
                )
            await self.rollback_by_hand(vm)
        if left := judge.leftovers(vdir):
            self.tally.problems.append(f"{vm.name}: {kind} left {left} on an idle target")
        states = []
        for d in vm.disks:
            flat = vdir / f"{d.name}-flat.vmdk"
            if (
                not flat.exists()
                or not (vdir / f"{d.name}.vmdk").exists()
                or not (vdir / f"{d.name}-flat.vmdk.vzmap").exists()
            ):
                self.tally.lost.append(f"{vm.name}/{d.name}: replica files missing after {kind}")
                return "lost"
            got = judge.sha256(flat)
            if got == d.saved_sha:
                states.append("old")
            elif kind == "changing" and res.rc == 0:
                states.append("changed")  # judged by its map below
            elif got == new[d.name]:
                states.append("new")
            else:
                states.append("other")
        if set(states) == {"old"} or (kind == "changing" and "other" not in states and "new" not in states):
            outcome = "rolled back" if set(states) == {"old"} else "committed"
            if pending:
                outcome = "rolled back by `vzrep-target rollback` once there was space"
            if res.rc == 0 and kind != "changing" and any(new[d.name] != d.saved_sha for d in vm.disks):
                self.tally.corrupt.append(
                    f"{vm.name}: {kind} pass exited 0 but the replica kept its old state"
                )
                self.keep_evidence(vm, "stale")
                return "stale"
        elif set(states) == {"new"}:
            outcome = "committed"
        else:
            self.tally.corrupt.append(
                f"{vm.name}: after {kind} (exit {res.rc}) the disks are {states}, not all old or all new"
            )
            self.keep_evidence(vm, "mixed")
            return "corrupt"
        for d, state in zip(vm.disks, states, strict=True):
            flat, desc = vdir / f"{d.name}-flat.vmdk", vdir / f"{d.name}.vmdk"
            if state == "changed":
                bad = await asyncio.to_thread(judge.map_mismatches, flat, vdir / f"{d.name}-flat.vmdk.vzmap")
                if bad:
                    self.tally.corrupt.append(
                        f"{vm.name}/{d.name}: blocks {bad[:10]} differ from the committed map after a changing source"
                    )
                    self.keep_evidence(vm, "map")
                    return "corrupt"
                shutil.copyfile(flat, d.saved)
                d.saved_sha = judge.sha256(d.saved)
            elif state == "new":
                shutil.copyfile(d.src, d.saved)
                d.saved_sha = new[d.name]
            if differ := await asyncio.to_thread(judge.qemu_compare, d.saved, desc):
                self.tally.corrupt.append(f"{vm.name}/{d.name}: after {kind}: {differ}")
                self.keep_evidence(vm, "qemu")
                return "corrupt"
        return outcome

    # ------------------------------------------------------------------ the loop

    def take_ticket(self) -> bool:
        if self.tally.started >= self.cfg.faults or time.monotonic() > self.deadline:
            return False
        self.tally.started += 1
        return True

    async def run(self) -> None:
        self._mount()
        try:
            await self.target.start()
            self.proxy = await FaultProxy(self.target.port).start()
            if self.cfg.fork_server:
                self.zygote = await Zygote(self.dir).start()
            for i, name in enumerate(self.vm_names):
                vm = self._make_vm(name, 1 + (i % 2))
                self.vms.append(vm)
                await self.clean(vm, "first")
                vm.c2s_seen.clear()  # the first pass sends every block
                await self.clean(vm)
            while self.take_ticket():
                vm = self.rng.choice(self.vms)
                await self.fault(vm, self.next_kind())
                if self.rng.random() < self.cfg.clean_ratio:
                    await self.clean(vm)
            for vm in self.vms:
                await self.clean(vm, "final")
        finally:
            if self.proxy is not None:
                await self.proxy.stop()
            if self.zygote is not None:
                await self.zygote.stop()
            rc = await self.target.stop()
            if rc not in (0, None, -signal.SIGTERM):
                self.tally.problems.append(f"worker {self.wid}: the target exited {rc} at the end")
            self.events.close()
            if self.cfg.tmpfs:
                subprocess.run(["umount", "-l", str(self.mnt)], check=False)


async def soak(cfg: Config) -> Tally:
    tally = Tally()
    keys = Keys.make(cfg.work / "keys")
    deadline = time.monotonic() + cfg.max_seconds
    names = [f"vm{i:02d}" for i in range(cfg.vms)]
    workers = [
        Worker(w, cfg, tally, keys, names[w :: cfg.workers], deadline)
        for w in range(cfg.workers)
        if names[w :: cfg.workers]
    ]
    async with asyncio.TaskGroup() as tg:
        for w in workers:
            tg.create_task(w.run())
    return tally
