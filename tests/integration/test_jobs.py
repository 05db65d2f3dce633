"""Jobs against a real target on 127.0.0.1: the job rule, the job id on the target's restore points,
a job mixing a seeded and a mapped VM, and the --parallel bound seen from the target.

"Seeded" here means what the job rule means by it: the target already holds a replica of the VM. The
replicas are laid by real passes run without a job (``vzrep-target seed`` is built elsewhere, and
leaves the same thing: a replica whose index holds one point).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from source_agent.jobs.runner import job_exit_code, result_text, run_job, summary_text
from target_agent import cli as target_cli
from target_agent.server import Stream, start_server
from target_agent.session import TargetSession
from target_agent.storage import points as rp
from tests.support.agents import Keys, Target, replicate
from tests.support.jobs import job_of, write_job
from tests.support.tools import change_blocks, make_image, qemu_compare
from vzcommon.errors import ExitCode

MiB = 1 << 20
BS = 64 << 10


def points_json(data_dir: Path, vm: str, capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    assert target_cli.main(["points", "--data-dir", str(data_dir), "--vm", vm, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


async def test_the_job_rule_skips_a_vm_without_a_replica_until_it_is_mapped(
    tmp_path: Path, target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    disks = {
        vm: make_image(tmp_path / f"{vm}.img", 8 * MiB, data_blocks=40, seed=i) for i, vm in enumerate("abcd")
    }
    for vm in "abc":  # a, b, c: the target holds their replicas (seeded)
        assert (await replicate(target.spec(), vm, {"disk0": disks[vm]}, state)).ok
    for i, vm in enumerate("abcd"):
        change_blocks(disks[vm], 3, seed=10 + i)
    vms = [
        {"name": vm, "disks": [f"disk0={disks[vm]}"], "seed": {"disk0": f"/backups/{vm}.vmdk"}}
        for vm in "abc"
    ]
    vms.append({"name": "d", "disks": [f"disk0={disks['d']}"]})  # added later: neither seeded nor mapped
    path = write_job(
        tmp_path / "job.toml", target, vms, state_dir=state, seeding=True, mapping=True, parallel=2
    )
    job = job_of(path)

    results = await run_job(job, state)
    assert [(r.vm, r.status, r.exit_code) for r in results] == [
        ("a", "replicated", 0), ("b", "replicated", 0), ("c", "replicated", 0), ("d", "skipped", 16),
    ]  # fmt: skip
    assert job_exit_code(results) == ExitCode.NOT_SEEDED == 16
    skipped = results[3]
    assert (
        "VM 'd' has no replica on this target" in skipped.reason and "nothing was created" in skipped.reason
    )
    assert "seed it (vzrep-target seed) or map it (vzrep-target map)" in skipped.reason
    assert not (target.data_dir / "d").exists()  # refused before anything was made for it
    text = summary_text(job, results)
    assert (
        "3 replicated, 1 skipped, 0 failed; exit code 16" in text
        and "  skipped: d: target: VM 'd' has no replica" in text
    )
    assert result_text(skipped).startswith(
        "vzrep pass of VM d: SKIPPED\n  warning: target: VM 'd' has no replica"
    )
    for r in results[:3]:
        assert r.report is not None and r.report.disks[0].blocks_changed == 3
        qemu_compare(disks[r.vm], target.vm(r.vm) / "disk0.vmdk")
        doc = points_json(target.data_dir, r.vm, capsys)
        assert [(p["job"], p["origin"]) for p in doc["points"]] == [(job.id, "pass"), ("", "pass")]

    # d is mapped onto a copy made by another tool (an older state of its disk), and the next run of
    # the same job replicates it: a job that uses seeding for some VMs and mapping for another
    copy = tmp_path / "copies" / "d-copy.img"
    copy.parent.mkdir()
    copy.write_bytes(disks["d"].read_bytes())
    changed = change_blocks(disks["d"], 4, seed=99)
    capsys.readouterr()
    args = ["map", "--data-dir", str(target.data_dir), "--vm", "d", "--disk", f"disk0={copy}"]
    assert target_cli.main(args) == 0
    assert "VM 'd' is mapped onto" in capsys.readouterr().out
    results = await run_job(job, state)
    assert [(r.vm, r.status) for r in results] == [(vm, "replicated") for vm in "abcd"]
    assert job_exit_code(results) == ExitCode.OK
    d = results[3].report
    assert d is not None and d.disks[0].map_rebuilt and d.disks[0].blocks_changed == len(changed) == 4
    qemu_compare(disks["d"], target.vm("d") / "disk0.vmdk")
    doc = points_json(target.data_dir, "d", capsys)
    assert [(p["origin"], p["job"]) for p in doc["points"]] == [("pass", job.id), ("mapped", "")]
    assert [len(rp.load(target.vm(vm))) for vm in "abc"] == [3, 3, 3]


class CountingTarget(Target):
    """A target that counts the passes it runs at once (from HELLO to the session's end) and holds
    each at HELLO until ``want`` are running or ``hold`` seconds went by -- so the passes a source
    allows at once do meet here, and the count shows the bound, whatever the machine's speed."""

    want = 2
    hold = 5.0
    active = 0
    most = 0

    async def start(self) -> CountingTarget:
        owner = self
        changed = asyncio.Condition()

        class Session(TargetSession):
            counted = False

            async def _hello(self, msg):  # type: ignore[no-untyped-def]
                async with changed:
                    owner.active += 1
                    self.counted = True
                    owner.most = max(owner.most, owner.active)
                    changed.notify_all()
                    try:
                        await asyncio.wait_for(
                            changed.wait_for(lambda: owner.active >= owner.want), owner.hold
                        )
                    except TimeoutError:
                        pass
                await super()._hello(msg)

            async def run(self, stream):  # type: ignore[no-untyped-def]
                try:
                    await super().run(stream)
                finally:
                    if self.counted:
                        async with changed:
                            owner.active -= 1
                            changed.notify_all()

        async def handle(stream: Stream, peer: str) -> None:
            await Session(self.data_dir, peer).run(stream)

        self.server, self.port = await start_server(
            handle, "127.0.0.1", 0, self.keys.host_key, self.keys.authorized_keys
        )
        return self


@pytest.fixture
async def counting(tmp_path: Path, session_keys: Keys) -> AsyncIterator[CountingTarget]:
    t = await CountingTarget(tmp_path / "data", session_keys).start()
    try:
        yield t
    finally:
        await t.stop()


@pytest.mark.parametrize(("parallel", "hold"), [(2, 5.0), (1, 0.3)])
async def test_parallel_bounds_the_passes_the_target_sees_at_once(
    tmp_path: Path, counting: CountingTarget, parallel: int, hold: float
) -> None:
    counting.hold = hold
    vms = [
        {
            "name": f"vm{i}",
            "disks": [f"disk0={make_image(tmp_path / f'vm{i}.img', 4 * MiB, data_blocks=8, seed=i)}"],
        }
        for i in range(4)
    ]
    path = write_job(tmp_path / "job.toml", counting, vms, state_dir=tmp_path / "state", parallel=4)
    results = await run_job(job_of(path), tmp_path / "state", parallel=parallel)
    assert [r.status for r in results] == ["replicated"] * 4
    assert counting.most == parallel  # reached (the target held the first until a second came), never passed
    assert counting.active == 0


async def job_cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "source_agent.cli", "job", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()


async def test_job_check_looks_at_what_the_job_names_and_changes_nothing(
    tmp_path: Path, target: Target
) -> None:
    disk = make_image(tmp_path / "a.img", 4 * MiB, data_blocks=4)
    vms = [
        {"name": "a", "disks": [f"disk0={disk}"], "seed": {"disk0": "/backups/a.vmdk"}},
        {"name": "b", "disks": [f"disk0={disk}"]},
    ]
    path = write_job(tmp_path / "job.toml", target, vms, seeding=True)
    rc, out = await job_cli("check", str(path))
    assert rc == 0, out
    assert f"ok: target 127.0.0.1:{target.port}: reachable, host key as pinned, our key accepted" in out
    assert "ok: VM a: disks disk0 4194304 bytes" in out
    assert (
        "ok: VM a: seed; if the target holds no replica yet, run on the target: vzrep-target seed --data-dir DIR --vm a --disk disk0=/backups/a.vmdk"
        in out
    )
    assert "warning: VM b: the job has seeding or mapping on and names no seed or mapping for it" in out
    assert not target.data_dir.exists() or list(target.data_dir.iterdir()) == []  # the target started nothing
    disk.rename(tmp_path / "gone.img")
    (tmp_path / "kh-other").write_text("")
    text = path.read_text().replace(str(target.keys.dir / f"kh-{target.port}"), str(tmp_path / "kh-other"))
    path.write_text(text)
    rc, out = await job_cli("check", str(path), "--json")
    doc = json.loads(out)
    assert rc == ExitCode.HOST_KEY and doc["exit_code"] == 5
    assert any("has no line for [127.0.0.1]:" in p for p in doc["problems"])
    assert any("VM a:" in p and "a.img" in p for p in doc["problems"])
    path.write_text(text.replace("[options]", "[options]\nparallel = 0"))
    rc, out = await job_cli("check", str(path))
    assert rc == ExitCode.INPUT and f"problem: {path}:" in out and ": options.parallel: must be 1-64" in out
    rc, out = await job_cli("new", str(tmp_path / "new.toml"), "--no-paired")
    assert rc == 0 and "until then it runs nothing" in out
    rc, out = await job_cli("check", str(tmp_path / "new.toml"), "--offline")  # no VM yet: not a job
    assert rc == ExitCode.INPUT and "the job names no VM" in out
    text = (tmp_path / "new.toml").read_text().replace("# [[vm]]", "[[vm]]").replace("# name =", "name =")
    (tmp_path / "new.toml").write_text(text.replace("# disks =", "disks ="))
    assert job_of(tmp_path / "new.toml").vms[0].name == "web01"
    rc, out = await job_cli("new", str(tmp_path / "new.toml"))
    assert rc == ExitCode.INPUT and "exists" in out
