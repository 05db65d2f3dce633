"""Crash-state replay of real passes: record, build every crash state, recover, judge.

Scenarios (one VM with two disks, run in this order; each records one pass of the real agents over
the in-memory transport, target restore points as given):

* ``full`` -- the first pass: the replica is created (restore points 2);
* ``incremental`` -- blocks changed and blocks zeroed (hole punching), an increment is kept;
* ``cut`` -- blocks changed, and the link cut mid-pass: the target rolls the pass back while running
  (the old and the new state are the same);
* ``growth`` -- one disk grows, with data in the new part; retention (2) prunes the oldest increment;
* ``retention`` -- the target keeps one point only: the undo log is dropped, every increment pruned.

Then the target's own commands (``tool`` scenarios, each on its own data directory; the disks are a
few MiB, the backups and copies made by ``qemu-img``):

* ``seed`` -- ``vzrep-target seed`` of a VM with no replica, from a qcow2 and a raw backup;
* ``seed-replace`` -- ``seed --replace`` over a replica seeded earlier (``renameat2`` exchange);
* ``seed-replace-renames`` -- the same where the filesystem has no exchange (two renames);
* ``map`` -- ``vzrep-target map`` onto copies another tool left in DATA_DIR (a raw image and a
  monolithicFlat VMDK). The mapping record names the copies by absolute path, so its crash states
  are laid out where it was recorded.

For each crash state of a scenario (``states``): the state is laid out in a fresh directory, the
target's start-up recovery (``recover_all``, what ``vzrep-target serve`` runs before accepting work)
runs on it, and then:

1. the replica's state files (each flat extent, descriptor and ``.vzmap``, the restore point index
   and every kept increment), and every file and directory beside it in DATA_DIR (a copy to map, a
   seed's stage), equal, by SHA-256, those before the pass or those after it -- all of them the same
   side, never a mix;
2. nothing is pending (no journal, undo log, ``.next`` file, undo script or mapping record);
3. the restore point index loads, lists that side's points, and each point exports to disks equal
   to that point's saved export; the status file, if any, reads and names that side's generation;
4. (for the states chosen by ``next_pass_every``) a next pass succeeds and the replica equals the
   source.

``python -m tests.reliability.replay`` runs it all (``make crash-replay``); the test suite runs a
sample (``tests/reliability/test_crash_replay.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import hashlib
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from source_agent.disks import open_disk
from source_agent.session import DiskJob, PassOptions, PassReport, run_pass_over
from target_agent.session import TargetSession
from target_agent.storage import mapping
from target_agent.storage import points as rp
from target_agent.storage.export import export_point
from target_agent.storage.seed import seed_vm
from target_agent.storage.transaction import JOURNAL, SCRIPT, STATUS, STATUS_MAGIC, pending_disks, recover_all
from tests.support.memory import memory_pair
from tests.support.tools import BS, change_blocks, make_image, sha256_py
from tests.support.tools import run as run_tool
from vzcommon import fsio
from vzcommon.errors import VzrepError
from vzcommon.log import setup_logging
from vzcommon.records import read_record

from .record import Op, recording
from .states import CrashState, Model, crash_states

VM = "crashvm"
KiB = 1024


def _sha(path: Path) -> str:
    return sha256_py(path)


def state_files(vdir: Path) -> dict[str, str]:
    """SHA-256 of every file that is the replica's state (rule 1 of the module docstring)."""
    out: dict[str, str] = {}
    if not vdir.is_dir():
        return out
    for p in sorted(vdir.iterdir()):
        if p.is_file() and p.name.endswith(("-flat.vmdk", ".vmdk", "-flat.vmdk.vzmap")):
            out[p.name] = _sha(p)
    pdir = rp.points_dir(vdir)
    if pdir.is_dir():
        for p in sorted(pdir.rglob("*")):
            if p.is_file() and (p.name == rp.INDEX or p.name.endswith(".vzundo")):
                out[str(p.relative_to(vdir))] = _sha(p)
    return out


def beside_files(data_dir: Path) -> dict[str, str]:
    """What is in DATA_DIR beside the VM's directory (lock files aside): a directory is named (so a
    leftover stage counts even empty), a file by its SHA-256."""
    out: dict[str, str] = {}
    if not data_dir.is_dir():
        return out
    for p in sorted(data_dir.iterdir()):
        if p.name == VM or p.name.endswith(".lock"):
            continue
        if p.is_dir():
            out[p.name + "/"] = "directory"
            for f in sorted(p.rglob("*")):
                out[str(f.relative_to(data_dir)) + ("/" if f.is_dir() else "")] = (
                    "directory" if f.is_dir() else _sha(f)
                )
        else:
            out[p.name] = _sha(p)
    return out


def judged_files(data_dir: Path) -> dict[str, str]:
    return {**state_files(data_dir / VM), **{f"DATA_DIR/{k}": v for k, v in beside_files(data_dir).items()}}


@dataclass
class Side:
    """The replica before or after the recorded pass, as judged."""

    files: dict[str, str]
    points: list[str]
    exports: dict[str, dict[str, str]]  # point id -> disk -> SHA-256 of its exported flat extent
    generation: str | None

    @classmethod
    def capture(cls, data_dir: Path, scratch: Path) -> Side:
        vdir = data_dir / VM
        files = judged_files(data_dir)
        if not vdir.is_dir():
            return cls(files, [], {}, None)
        pts = rp.load(vdir)
        exports = {p.id: export_shas(data_dir, p.id, scratch) for p in pts}
        return cls(files, [p.id for p in pts], exports, generation(vdir))


def generation(vdir: Path) -> str | None:
    if not (vdir / STATUS).exists():
        return None
    last = read_record(vdir / STATUS, STATUS_MAGIC).get("last_pass") or {}
    return last.get("generation")


def export_shas(data_dir: Path, point_id: str, scratch: Path) -> dict[str, str]:
    out = scratch / f"export-{point_id}"
    shutil.rmtree(out, ignore_errors=True)
    try:
        export_point(data_dir, VM, point_id, out)
        return {p.name[: -len("-flat.vmdk")]: _sha(p) for p in sorted(out.glob("*-flat.vmdk"))}
    finally:
        shutil.rmtree(out, ignore_errors=True)


async def one_pass(
    data_dir: Path, state_dir: Path, disks: dict[str, Path], restore_points: int, cut_after: int = 0
) -> PassReport:
    """One real pass: both agents' sessions over the in-memory transport; ``cut_after``: the link is
    cut once the source has sent that many bytes (the target rolls the pass back)."""
    link = memory_pair(64 * KiB if cut_after else 1 << 20)
    session = TargetSession(data_dir, "memory", restore_points=restore_points)
    target = asyncio.ensure_future(session.run(link.target))
    readers = [open_disk(p, name) for name, p in disks.items()]

    async def cutter() -> None:
        while link.source.sent < cut_after:  # noqa: ASYNC110 (polls a counter, no event to wait on)
            await asyncio.sleep(0.001)
        link.cut()

    cut = asyncio.ensure_future(cutter()) if cut_after else None
    try:
        return await run_pass_over(
            link.source, "memory", VM, [DiskJob(reader=r) for r in readers], PassOptions(state_dir=state_dir)
        )
    finally:
        if cut is not None:
            cut.cancel()
            await asyncio.gather(cut, return_exceptions=True)
        for r in readers:
            r.close()
        await asyncio.wait_for(target, 60)


def _no_change(disks: dict[str, Path]) -> None:
    pass


@dataclass
class Scenario:
    name: str
    restore_points: int
    change: Callable[[dict[str, Path]], None] = _no_change
    cut_after: int = 0  # the link is cut mid-pass: the pass fails and the target rolls it back
    tool: str = ""  # a target command recorded instead of a pass (``record_tool``)


def _incremental(disks: dict[str, Path]) -> None:
    change_blocks(disks["d0"], 4, seed=11)
    change_blocks(disks["d0"], 2, seed=12, zero=True)
    change_blocks(disks["d1"], 2, seed=13)


def _growth(disks: dict[str, Path]) -> None:
    d0 = disks["d0"]
    size = d0.stat().st_size
    with open(d0, "r+b") as f:
        f.truncate(size + 4 * BS)
        f.seek(size + BS)
        f.write(hashlib.sha256(b"grown").digest() * (BS // 32))
    change_blocks(disks["d1"], 1, seed=14)


def _retention(disks: dict[str, Path]) -> None:
    change_blocks(disks["d0"], 3, seed=15)
    change_blocks(disks["d1"], 1, seed=16)


def _cut(disks: dict[str, Path]) -> None:
    change_blocks(disks["d0"], 6, seed=17)
    change_blocks(disks["d1"], 3, seed=18)


SCENARIOS = [
    Scenario("full", 2, _no_change),
    Scenario("incremental", 2, _incremental),
    Scenario("cut", 2, _cut, cut_after=5 * BS),
    Scenario("growth", 2, _growth),
    Scenario("retention", 1, _retention),
    Scenario("seed", 2, tool="seed"),
    Scenario("seed-replace", 2, tool="seed-replace"),
    Scenario("seed-replace-renames", 2, tool="seed-replace-renames"),
    Scenario("map", 2, tool="map"),
]
PASSES = [s.name for s in SCENARIOS if not s.tool]


@dataclass
class Recorded:
    """One scenario's recorded pass and everything the states are judged against."""

    scenario: Scenario
    start: Model
    ops: list[Op]
    old: Side
    new: Side
    sources: dict[str, Path]  # the source disks as the pass read them (copies)
    source_state: Path  # the source's state directory after the pass (copied into each next pass)
    layout: Path | None = None  # where every state must be laid out (the recorded DATA_DIR), or anywhere


async def record_all(work: Path, names: list[str] | None = None) -> list[Recorded]:
    """Run the pass scenarios in order on one replica, recording the chosen ones; then the chosen tool
    scenarios, each on its own."""
    src, data, state, scratch = work / "src", work / "data", work / "state", work / "scratch"
    for d in (src, data, scratch):
        d.mkdir(parents=True)
    out = []
    if names is None or set(names) & set(PASSES):
        out = await _record_passes(work, src, data, state, scratch, names)
    for sc in SCENARIOS:
        if sc.tool and (names is None or sc.name in names):
            out.append(record_tool(work / sc.name, sc))
    return out


async def _record_passes(
    work: Path, src: Path, data: Path, state: Path, scratch: Path, names: list[str] | None
) -> list[Recorded]:
    disks = {
        "d0": make_image(src / "d0.img", 16 * BS, data_blocks=9, seed=1),
        "d1": make_image(src / "d1.img", 8 * BS, data_blocks=5, seed=2),
    }
    out = []
    for sc in SCENARIOS:
        if sc.tool:
            continue
        sc.change(disks)
        if names is not None and sc.name not in names:
            await _scenario_pass(data, state, disks, sc)
            continue
        old = Side.capture(data, scratch)
        start = Model.snapshot(data)
        with recording(data) as rec:
            await _scenario_pass(data, state, disks, sc)
        new = Side.capture(data, scratch)
        keep = work / "kept" / sc.name
        keep.mkdir(parents=True)
        sources = {n: Path(shutil.copy(p, keep / p.name)) for n, p in disks.items()}
        shutil.copytree(state, keep / "state")
        out.append(Recorded(sc, start, list(rec.ops), old, new, sources, keep / "state"))
    return out


def _qemu_img(*args: str | Path) -> None:
    run_tool("qemu-img", *args)


def _no_exchange(a: object, b: object) -> None:
    raise OSError(errno.EINVAL, "RENAME_EXCHANGE is not supported here (as on some filesystems)")


def record_tool(work: Path, sc: Scenario) -> Recorded:
    """Record one target command (``sc.tool``) on a data directory of its own (module docstring).

    The source disks then change a little, so each state's next pass has something to send."""
    src, data, scratch, keep = work / "src", work / "data", work / "scratch", work / "kept"
    for d in (src, data, scratch, keep / "state"):
        d.mkdir(parents=True)
    disks = {
        "d0": make_image(src / "d0.img", 16 * BS, data_blocks=9, seed=21),
        "d1": make_image(src / "d1.img", 8 * BS, data_blocks=5, seed=22),
    }
    layout = None
    if sc.tool.startswith("seed"):
        backup = {"d0": src / "d0.qcow2", "d1": src / "d1.raw"}
        if sc.tool != "seed":  # the replica being replaced: seeded from an older backup
            _qemu_img("convert", "-O", "raw", disks["d0"], backup["d1"])
            _qemu_img("convert", "-O", "qcow2", disks["d1"], backup["d0"])
            seed_vm(data, VM, {"d0": backup["d1"], "d1": backup["d0"]})
            change_blocks(disks["d0"], 3, seed=23)
        _qemu_img("convert", "-O", "qcow2", disks["d0"], backup["d0"])
        _qemu_img("convert", "-O", "raw", disks["d1"], backup["d1"])
    else:
        copies = data / ".copies"
        copies.mkdir()
        shutil.copy(disks["d0"], copies / "d0.img")
        _qemu_img("convert", "-O", "vmdk", "-o", "subformat=monolithicFlat", disks["d1"], copies / "d1.vmdk")
        layout = data
    old = Side.capture(data, scratch)
    start = Model.snapshot(data)
    with recording(data) as rec:
        if sc.tool == "map":
            mapping.map_disks(data, VM, {"d0": copies / "d0.img", "d1": copies / "d1.vmdk"})
        else:
            uninstall = (
                fsio.install({"exchange": _no_exchange}) if sc.tool == "seed-replace-renames" else None
            )
            try:
                seed_vm(data, VM, backup, replace=sc.tool != "seed")
            finally:
                if uninstall is not None:
                    uninstall()
    new = Side.capture(data, scratch)
    change_blocks(disks["d0"], 2, seed=24)
    change_blocks(disks["d1"], 1, seed=25)
    sources = {n: Path(shutil.copy(p, keep / p.name)) for n, p in disks.items()}
    if layout is not None:  # the states go where the recorded directory was
        data.rename(work / "data.recorded")
    return Recorded(sc, start, list(rec.ops), old, new, sources, keep / "state", layout)


async def _scenario_pass(data: Path, state: Path, disks: dict[str, Path], sc: Scenario) -> None:
    try:
        report = await one_pass(data, state, disks, sc.restore_points, sc.cut_after)
    except VzrepError:
        assert sc.cut_after, f"the {sc.name} pass failed"
        return
    assert report.ok and not sc.cut_after, f"the {sc.name} pass: {report}"


@dataclass
class Result:
    explored: Counter[str] = field(default_factory=Counter)
    next_passes: Counter[str] = field(default_factory=Counter)
    sides: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


def judge(r: Recorded, data: Path, scratch: Path) -> tuple[str, list[str]]:
    """Rules 1-3 of the module docstring on a recovered state; (side, problems)."""
    vdir = data / VM
    files = judged_files(data)
    side_name, side = next(
        ((n, s) for n, s in (("old", r.old), ("new", r.new)) if s.files == files), ("", None)
    )
    if side is None:
        old_diff = sorted(k for k in set(files) | set(r.old.files) if files.get(k) != r.old.files.get(k))
        new_diff = sorted(k for k in set(files) | set(r.new.files) if files.get(k) != r.new.files.get(k))
        return "mix", [
            f"the replica is neither the old nor the new state (differs from old in {old_diff}, from new in {new_diff})"
        ]
    problems = []
    if vdir.is_dir():
        left = [n for n in (JOURNAL, SCRIPT, mapping.RECORD) if (vdir / n).exists()] + pending_disks(vdir)
        if left:
            problems.append(f"left pending after recovery: {left}")
        try:
            ids = [p.id for p in rp.load(vdir)]
        except Exception as exc:
            return side_name, [*problems, f"restore point index unreadable: {exc}"]
        if ids != side.points:
            problems.append(f"restore points {ids}, expected {side.points}")
        else:
            for pid in ids:
                try:
                    got = export_shas(data, pid, scratch)
                except Exception as exc:
                    problems.append(f"point {pid} does not export: {exc}")
                    continue
                if got != side.exports[pid]:
                    problems.append(f"point {pid} exports other disks than it did")
        try:
            gen = generation(vdir)
        except Exception as exc:
            problems.append(f"status unreadable: {exc}")
        else:
            if gen is not None and gen != side.generation:
                problems.append(f"status names generation {gen}, the replica is at {side.generation}")
    return side_name, problems


def recover_and_judge(r: Recorded, data: Path, scratch: Path, where: str, result: Result) -> str | None:
    """Start-up recovery on a crash state, then rules 1-3; the side reached, or None (failures noted)."""
    try:
        done = recover_all(data)
    except Exception as exc:
        result.failures.append(f"{where}: recovery failed: {type(exc).__name__}: {exc}")
        return None
    if any(v.startswith("NOT recovered") for v in done.values()):
        result.failures.append(f"{where}: {done}")
        return None
    side, problems = judge(r, data, scratch)
    if problems:
        result.failures.extend(f"{where}: {p}" for p in problems)
        return None
    return side


async def check_state(
    r: Recorded,
    state: CrashState,
    model: Model,
    tmp: Path,
    result: Result,
    *,
    next_pass: bool,
    recovery_crashes: dict[str, Any] | None = None,
) -> None:
    """Judge one crash state; ``recovery_crashes`` (samples, torn_limit): also crash the recovery
    itself at every point of its own op log, and recover again (:func:`check_recovery_crashes`)."""
    if r.layout is not None:  # export and next pass on the layout's filesystem (exports hard-link)
        tmp = r.layout.with_name("under-test")
    data, scratch = r.layout or tmp / "data", tmp / "scratch"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(data, ignore_errors=True)
    scratch.mkdir(parents=True)
    model.write_out(data)
    where = f"{r.scenario.name}: crash after op {state.point}/{len(r.ops)}"
    if state.point:
        where += f" {r.ops[state.point - 1]!r}"
    where += f" ({state.how}{', lost ops ' + str(sorted(state.lost)) if state.lost else ''})"
    if recovery_crashes is not None:
        before = Model.snapshot(data)
        with recording(data) as rec:
            side = recover_and_judge(r, data, scratch, where, result)
    else:
        side = recover_and_judge(r, data, scratch, where, result)
    if side is None:
        return
    result.sides[f"{r.scenario.name}:{side}"] += 1
    if next_pass:
        await check_next_pass(r, data, tmp, where, result)
    if recovery_crashes is not None:  # last: where the layout is fixed, these states take its place
        rtmp = tmp.with_name(tmp.name + "-r")
        await check_recovery_crashes(
            r, before, rec.ops, side, r.layout or rtmp / "data", rtmp, where, result, **recovery_crashes
        )


async def check_next_pass(r: Recorded, data: Path, tmp: Path, where: str, result: Result) -> None:
    """Rule 4: a next pass over the recovered state succeeds and leaves the source's disks."""
    state_dir = tmp / "state"
    shutil.copytree(r.source_state, state_dir)
    result.next_passes[r.scenario.name] += 1
    try:
        report = await one_pass(data, state_dir, r.sources, r.scenario.restore_points)
    except Exception as exc:
        result.failures.append(f"{where}: the next pass failed: {type(exc).__name__}: {exc}")
        return
    for name, src in r.sources.items():
        flat = data / VM / f"{name}-flat.vmdk"
        if not report.ok or not flat.exists() or _sha(flat) != _sha(src):
            result.failures.append(f"{where}: after the next pass disk {name} is not the source")


async def check_recovery_crashes(
    r: Recorded,
    start: Model,
    ops: list[Op],
    side: str,
    data: Path,
    tmp: Path,
    where: str,
    result: Result,
    *,
    samples: int,
    torn_limit: int,
    metadata: str,
) -> None:
    """A crash during recovery: every crash state of the recovery's own op log, recovered again, must
    reach the side the uninterrupted recovery reached (recovery is idempotent and safe to interrupt)."""
    seen: set[str] = set()
    for state in crash_states(ops, samples=samples, torn_limit=torn_limit, metadata=metadata):
        model = state.build(start, ops)
        key = model.digest()
        if key in seen:
            continue
        seen.add(key)
        result.explored[f"{r.scenario.name} (crash in recovery)"] += 1
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)
        (tmp / "scratch").mkdir(parents=True)
        model.write_out(data)
        here = f"{where}, then a crash in recovery after op {state.point}/{len(ops)} ({state.how})"
        again = recover_and_judge(r, data, tmp / "scratch", here, result)
        if again is not None and again != side:
            result.failures.append(
                f"{here}: recovered to the {again} state, the uninterrupted recovery to the {side}"
            )


def fast_dir() -> str | None:
    """tmpfs (``/dev/shm``) where there is one, for the thousands of small directories the states
    are laid out in and removed from; None (the default temporary directory) where there is not."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK) else None


def _no_sync(fd: int) -> None:
    """What a state under test is given for fsync: it is a throwaway copy that no crash will hit, so
    making its writes durable would only cost time (most of it, on a busy disk)."""


async def explore(
    recorded: list[Recorded],
    tmp: Path,
    *,
    samples: int = 4,
    torn_limit: int = 8,
    point_stride: int = 1,
    next_pass_every: int = 1,
    recovery_every: int = 0,
    max_failures: int = 50,
    progress: Callable[[str], None] | None = None,
    metadata: str = "ordered",
) -> Result:
    """Build, recover and judge every (sampled) crash state of each recorded pass."""
    result = Result()
    uninstall = fsio.install({"fsync": _no_sync, "fdatasync": _no_sync})
    try:
        await _explore(
            recorded,
            tmp,
            result,
            samples,
            torn_limit,
            point_stride,
            next_pass_every,
            recovery_every,
            max_failures,
            progress,
            metadata,
        )
    finally:
        uninstall()
    return result


async def _explore(
    recorded: list[Recorded],
    tmp: Path,
    result: Result,
    samples: int,
    torn_limit: int,
    point_stride: int,
    next_pass_every: int,
    recovery_every: int,
    max_failures: int,
    progress: Callable[[str], None] | None,
    metadata: str,
) -> None:
    for r in recorded:
        seen: set[str] = set()
        points = sorted({*range(0, len(r.ops) + 1, point_stride), len(r.ops)})
        n = 0
        for state in crash_states(
            r.ops, samples=samples, torn_limit=torn_limit, points=points, metadata=metadata
        ):
            model = state.build(r.start, r.ops)
            key = model.digest()
            if key in seen:
                continue
            seen.add(key)
            result.explored[r.scenario.name] += 1
            nested: dict[str, Any] = {"samples": samples, "torn_limit": torn_limit, "metadata": metadata}
            await check_state(
                r,
                state,
                model,
                tmp,
                result,
                next_pass=n % next_pass_every == 0,
                recovery_crashes=nested if recovery_every and n % recovery_every == 0 else None,
            )
            n += 1
            if len(result.failures) >= max_failures:
                return
        if progress is not None:
            progress(f"{r.scenario.name}: {n} crash states judged, {len(result.failures)} failures so far")


async def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="vzrep-crash-", dir=fast_dir()) as t:
        work = Path(t)
        t0 = time.monotonic()
        recorded = await record_all(work, args.scenario)
        for r in recorded:
            print(f"{r.scenario.name}: {len(r.ops)} operations recorded", flush=True)
        result = await explore(
            recorded,
            work / "state-under-test",
            samples=args.samples,
            torn_limit=args.torn_limit,
            point_stride=args.stride,
            next_pass_every=args.next_pass_every,
            recovery_every=args.recovery_every,
            metadata=args.metadata,
            progress=lambda line: print(line, flush=True),
        )
        total = sum(result.explored.values())
        for name, n in result.explored.items():
            sides = {k.split(":")[1]: v for k, v in result.sides.items() if k.startswith(name + ":")}
            more = f", recovered to {sides}, {result.next_passes[name]} next passes" if sides else ""
            print(f"{name}: {n} distinct crash states{more}")
        print(f"total: {total} crash states, {len(result.failures)} failures, {time.monotonic() - t0:.0f} s")
        for f in result.failures:
            print("FAIL", f)
        return 1 if result.failures else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", action="append", choices=[s.name for s in SCENARIOS], help="only these")
    ap.add_argument("--samples", type=int, default=8, help="random lost-write subsets per crash point")
    ap.add_argument("--torn-limit", type=int, default=16, help="torn prefixes tried for a long last write")
    ap.add_argument("--stride", type=int, default=1, help="try every Nth crash point only")
    ap.add_argument("--next-pass-every", type=int, default=1, help="a next pass after every Nth state")
    ap.add_argument(
        "--metadata",
        choices=["ordered", "any"],
        default="ordered",
        help="ordered: un-synced directory changes are lost from the end only (ext4, xfs); any: each may be lost (POSIX)",
    )
    ap.add_argument(
        "--recovery-every", type=int, default=5, help="crash the recovery of every Nth state too (0: never)"
    )
    args = ap.parse_args(argv)
    setup_logging("error")  # recovery logs every roll back; the summary says what matters
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
