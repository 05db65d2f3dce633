"""``vzrep-source points`` and ``vzrep-source test-failover`` end to end: the CLI as a subprocess, over
real asyncssh on 127.0.0.1, to a target agent holding a replica made by real passes.

Judged by the target's own records (restore-point index, failover record), qemu-img compare of the
test copy, and sha256sum of every file of the VM's directory for each refusal: it changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from protocol.connection import TargetConnection
from protocol.messages import Request
from source_agent.control import ask
from source_agent.tunnel import TargetSpec
from target_agent.server import Stream, start_server
from target_agent.session import TargetSession
from target_agent.storage import failover as fo
from target_agent.storage import points as rp
from tests.integration.test_resume import through
from tests.support.agents import Keys, Target, replicate
from tests.support.jobs import write_job
from tests.support.openssh import free_port
from tests.support.proxy import CutProxy
from tests.support.tools import change_blocks, make_image, qemu_compare
from tests.target_agent.test_control import tree
from vzcommon.errors import ExitCode, InputError, VzrepError

MiB = 1 << 20
VM = "web01"


async def source(*args: str | Path, timeout: float = 120) -> tuple[int, str, str]:
    """``vzrep-source ARGS`` as a user runs it: exit code, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "source_agent.cli", *map(str, args),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@dataclass
class Site:
    target: Target
    src: Path
    saved: list[Path]
    job: Path

    @property
    def vdir(self) -> Path:
        return self.target.vm(VM)

    def direct(self, port: int | None = None) -> list[str]:
        """The target as ``pass`` takes it, without a job."""
        p = port or self.target.port
        kh = self.target.keys.known_hosts(p, f"kh-{p}")
        return [
            "--target",
            f"127.0.0.1:{p}",
            "--identity",
            str(self.target.keys.client_key),
            "--known-hosts",
            str(kh),
        ]


@pytest.fixture
async def site(tmp_path: Path, session_keys: Keys) -> AsyncIterator[Site]:
    t = await Target(tmp_path / "data", session_keys, restore_points=5, resume_window=300).start()
    src = make_image(tmp_path / "d.img", 8 * MiB, data_blocks=40, seed=7)
    saved = []
    try:
        for n in range(3):
            if n:
                change_blocks(src, 10, seed=40 + n)
            assert (await replicate(t.spec(), VM, {"d": src}, tmp_path / "state")).ok
            saved.append(Path(shutil.copy(src, tmp_path / f"saved-{n}.img")))
        job = write_job(tmp_path / "web.toml", t, [{"name": VM, "disks": [f"d={src}"]}])
        yield Site(t, src, saved, job)
    finally:
        await t.stop()


async def test_points_then_a_test_failover_of_an_older_point_and_its_end(site: Site, tmp_path: Path) -> None:
    rc, out, err = await source("points", "--job", site.job, "--vm", VM, "--json")
    assert rc == 0, err
    doc = json.loads(out)
    kept = rp.load(site.vdir)
    assert [p["id"] for p in doc["points"]] == [p.id for p in reversed(kept)]
    assert [p["live"] for p in doc["points"]] == [True, False, False]
    assert (doc["kind"], doc["failover"], doc["pass_running"], doc["ok"]) == ("file", None, False, True)
    rc, out, err = await source("points", "--job", site.job, "--vm", VM)
    assert rc == 0 and "3 restore points" in out and "[live replica]" in out and "failover: none" in out, err

    before = tree(site.vdir)
    older = kept[0].id
    rc, out, err = await source("test-failover", "--job", site.job, "--vm", VM, "--point", older, "--json")
    assert rc == 0, err
    doc = json.loads(out)
    record = fo.read_state(site.vdir)
    assert record is not None and (record["state"], record["point"]) == ("test", older)
    assert doc["failover"]["state"] == "test" and doc["failover"]["point"] == older
    qemu_compare(site.saved[0], Path(record["dir"]) / "d.vmdk")  # the point, as the first pass left it
    untouched = {
        k: v for k, v in tree(site.vdir).items() if k != "failover" and not k.startswith("failover-test/")
    }
    assert untouched == before

    change_blocks(site.src, 5, seed=77)  # replication goes on during the test
    assert (await replicate(site.target.spec(), VM, {"d": site.src}, tmp_path / "state")).ok
    qemu_compare(site.src, site.vdir / "d.vmdk")
    qemu_compare(site.saved[0], Path(record["dir"]) / "d.vmdk")

    rc, out, err = await source("test-failover", *site.direct(), "--vm", VM, "--end")
    assert rc == 0 and "ended" in out and "failover: none" in out, err
    assert fo.read_state(site.vdir) is None and not Path(record["dir"]).exists()


async def refused(site: Site, code: ExitCode, match: str, *args: str | Path) -> str:
    """The command exits ``code`` with one line naming why, and the VM's directory is as it was."""
    before, record = tree(site.vdir), fo.read_state(site.vdir)
    rc, out, err = await source(*args)
    assert rc == code and match in err and err.count("\n") == 1, (rc, err)
    assert tree(site.vdir) == before and fo.read_state(site.vdir) == record
    return out


async def test_refusals_exit_with_their_code_and_change_nothing(site: Site) -> None:
    base = ["--job", str(site.job), "--vm", VM]
    await refused(site, ExitCode.INPUT, "has no VM 'db01'", "points", "--job", site.job, "--vm", "db01")
    await refused(site, ExitCode.INPUT, "use 1-64 letters", "points", *site.direct(), "--vm", "../web01")
    await refused(
        site, ExitCode.INPUT, "holds no replica of VM 'ghost'", "points", *site.direct(), "--vm", "ghost"
    )
    assert not site.target.vm("ghost").exists()
    out = await refused(
        site,
        ExitCode.INPUT,
        "no restore point 'g-none'",
        "test-failover",
        *base,
        "--point",
        "g-none",
        "--json",
    )
    assert json.loads(out) == {"vm": VM, "ok": False, "error": json.loads(out)["error"], "exit_code": 3}
    await refused(site, ExitCode.INPUT, "not with --end", "test-failover", *base, "--point", "x", "--end")
    await refused(site, ExitCode.INPUT, "--point 'a b'", "test-failover", *base, "--point", "a b")
    await refused(site, ExitCode.INPUT, "no test failover to end", "test-failover", *base, "--end")
    await refused(
        site, ExitCode.INPUT, "give --job FILE, or all of", "points", "--vm", VM, "--target", "127.0.0.1:1"
    )

    # a failover started at the DR site: the source may neither test over it nor end it
    dr = [
        sys.executable,
        "-m",
        "target_agent.cli",
        "failover",
        "--data-dir",
        str(site.target.data_dir),
        "--vm",
        VM,
    ]
    proc = await asyncio.create_subprocess_exec(
        *dr, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    assert proc.returncode == 0, err
    await refused(site, ExitCode.FAILED_OVER, "failed-over at the DR site", "test-failover", *base)
    await refused(site, ExitCode.FAILED_OVER, "only the DR site ends that", "test-failover", *base, "--end")
    rc, out, err = await source("points", *base)
    assert rc == 0 and "failover: failed-over" in out, err


async def test_a_suspended_pass_makes_a_test_failover_wait(site: Site, tmp_path: Path) -> None:
    """A pass whose link was cut waits for its source, holding the VM: a test failover is refused (busy,
    exit 10) without a byte changed; asking for the points still works and says so."""
    change_blocks(site.src, 60, seed=78)
    proxy = await CutProxy(site.target.port, cut_after=1 * MiB).start()
    try:
        with pytest.raises(VzrepError):
            await replicate(through(proxy, site.target), VM, {"d": site.src}, tmp_path / "s2", compress="none",
                            resume_window=0)  # fmt: skip
    finally:
        await proxy.stop()
    suspended = site.target.suspended
    assert suspended is not None
    for _ in range(100):  # the target notices the cut and suspends the pass
        if VM in suspended._parked:
            break
        await asyncio.sleep(0.05)
    assert VM in suspended._parked
    await refused(
        site, ExitCode.BUSY, "VM 'web01' is busy on the target: a pass", "test-failover", "--job", site.job, "--vm", VM
    )
    rc, out, err = await source("points", "--job", site.job, "--vm", VM, "--json")
    assert rc == 0 and json.loads(out)["pass_running"] is True, err


async def test_an_older_target_says_so_at_once(tmp_path: Path, session_keys: Keys) -> None:
    """A target agent of protocol 4 (the real session, its connection at version 4): exit 8, naming both
    versions and what to upgrade, not a hang."""

    async def handle(stream: Stream, peer: str) -> None:
        session = TargetSession(tmp_path / "data", peer)
        session.conn = TargetConnection(protocol_version=4)
        await session.run(stream)

    server, port = await start_server(
        handle, "127.0.0.1", 0, session_keys.host_key, session_keys.authorized_keys
    )
    try:
        kh = session_keys.known_hosts(port, f"kh-{port}")
        rc, _, err = await source(
            "points", "--target", f"127.0.0.1:{port}", "--identity", session_keys.client_key,
            "--known-hosts", kh, "--vm", VM,
        )  # fmt: skip
    finally:
        server.close()
        await server.wait_closed()
    assert rc == ExitCode.PROTOCOL and "protocol version 5, the target speaks version 4" in err, err
    assert "upgrade vzrep-target" in err and err.count("\n") == 1


async def test_requests_are_no_passes_to_the_targets_counts(tmp_path: Path, session_keys: Keys) -> None:
    """The target's pass-end events (its metrics) see the pass, not the requests, refused or not."""
    events: list[dict[str, object]] = []

    async def handle(stream: Stream, peer: str) -> None:
        await TargetSession(tmp_path / "data", peer, on_pass_end=events.append).run(stream)

    server, port = await start_server(
        handle, "127.0.0.1", 0, session_keys.host_key, session_keys.authorized_keys
    )
    spec = TargetSpec(
        "127.0.0.1", port, session_keys.client_key, session_keys.known_hosts(port, f"kh-{port}")
    )
    try:
        src = make_image(tmp_path / "d.img", 4 * MiB, data_blocks=10, seed=9)
        assert (await replicate(spec, VM, {"d": src}, tmp_path / "state")).ok
        assert len((await ask(spec, VM, Request("points"))).points) == 1
        with pytest.raises(InputError, match="no restore point 'nope'"):
            await ask(spec, VM, Request("test-failover", "nope"))
        with pytest.raises(InputError, match="holds no replica"):
            await ask(spec, "ghost", Request("points"))
    finally:
        server.close()
        await server.wait_closed()
    assert [e["result"] for e in events] == ["committed"]


async def test_an_unreachable_target_is_a_connection_error(tmp_path: Path, session_keys: Keys) -> None:
    port = free_port()
    kh = session_keys.known_hosts(port, f"kh-{port}")
    rc, out, err = await source(
        "test-failover", "--target", f"127.0.0.1:{port}", "--identity", session_keys.client_key,
        "--known-hosts", kh, "--vm", VM, "--json",
    )  # fmt: skip
    assert rc == ExitCode.CONNECTION and "cannot connect to target" in err, err
    assert json.loads(out)["exit_code"] == ExitCode.CONNECTION


async def test_two_test_failovers_asked_at_once_start_one_and_refuse_the_other(site: Site) -> None:
    """Two operators (or a double click) ask at the same moment: exactly one test starts; the other is
    refused as busy (10) or as already tested (3), with a message that says so, not "a pass runs"."""
    args = ["test-failover", "--job", site.job, "--vm", VM, "--json"]
    both = await asyncio.gather(source(*args), source(*args))
    results = sorted([(rc, err) for rc, _, err in both], key=lambda r: r[0])
    assert results[0][0] == 0, results
    rc, err = results[1]
    assert (rc, "busy" in err or "already has a test failover" in err) in (
        (ExitCode.BUSY, True),
        (ExitCode.INPUT, True),
    ), results
    record = fo.read_state(site.vdir)
    assert record is not None and record["state"] == "test"
    qemu_compare(site.saved[-1], Path(record["dir"]) / "d.vmdk")
    assert sorted(p.name for p in site.vdir.iterdir() if p.name.startswith("failover")) == ["failover", "failover-test"]
