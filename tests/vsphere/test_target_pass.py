"""The target side of a vSphere job against vcsim: a pass writes the replica VM's disk through HotAdd.

Source VM (vcsim) -> the source's HotAdd + CBT pass -> loopback SSH -> a target agent configured with
the same vcsim (``replicas=``) -> the replica VM ``<vm>_replica``'s disk, HotAdded to the target
appliance and resolved to its ``-flat.vmdk`` in vcsim's datastore directory. Judged by qemu-img
compare between the source VM's and the replica VM's flat files.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from source_agent.session import PassOptions, run_pass
from source_agent.vsphere.glue import disk_jobs
from source_agent.vsphere.job import vsphere_job
from target_agent.server import Stream, start_server
from target_agent.session import TargetSession
from target_agent.storage import transaction
from target_agent.storage.paths import ReplicaPaths
from target_agent.storage.status import vm_status
from target_agent.vsphere.job import ReplicaSettings
from target_agent.vsphere.restore_points import list_restore_points
from tests.support.agents import Keys
from tests.support.proxy import CutProxy
from tests.support.tools import qemu_compare, sha256
from tests.vsphere.conftest import BLOCK, Lab, Vcsim
from vsphere.hardware import HardwareRecord
from vsphere.model import AttachedDisk, VmInfo
from vzcommon.errors import VzrepError

pytestmark = pytest.mark.vcsim

TARGET_APPLIANCE = "DC0_C0_RP0_VM0"


class VSphereTarget:
    """An in-process ``vzrep-target serve --vcenter ...`` writing replica VMs in vcsim."""

    def __init__(self, data_dir: Path, keys: Keys, settings: ReplicaSettings) -> None:
        self.data_dir, self.keys, self.settings = data_dir, keys, settings
        self.server: object = None
        self.port = 0

    async def start(self) -> VSphereTarget:
        async def handle(stream: Stream, peer: str) -> None:
            await TargetSession(self.data_dir, peer, replicas=self.settings).run(stream)

        self.server, self.port = await start_server(
            handle, "127.0.0.1", 0, self.keys.host_key, self.keys.authorized_keys
        )
        return self

    def spec(self, port: int | None = None):  # type: ignore[no-untyped-def]
        from source_agent.tunnel import TargetSpec

        p = port or self.port
        return TargetSpec("127.0.0.1", p, self.keys.client_key, self.keys.known_hosts(p, f"kh-{p}"))


@contextlib.asynccontextmanager
async def running_vtarget(
    tmp_path: Path, keys: Keys, vcsim: Vcsim, lab: Lab, restore_points: int
) -> AsyncIterator[VSphereTarget]:
    """A vSphere target on the lab's appliance; the replica VM is destroyed afterwards."""
    settings = ReplicaSettings(
        connect=vcsim.options(),
        appliance_vm=TARGET_APPLIANCE,
        restore_points=restore_points,
        datastore_roots=lab.roots,
        locate_timeout=5.0,
    )
    t = await VSphereTarget(tmp_path / "target", keys, settings).start()
    try:
        yield t
    finally:
        t.server.close()  # type: ignore[attr-defined]
        await t.server.wait_closed()  # type: ignore[attr-defined]
        try:
            rep = await lab.client.find_vm(f"{lab.vm.name}_replica")
        except VzrepError:
            pass
        else:
            await lab.client.destroy_vm(rep.moid)


@pytest.fixture
async def vtarget(tmp_path: Path, session_keys: Keys, vcsim: Vcsim, lab: Lab) -> AsyncIterator[VSphereTarget]:
    async with running_vtarget(tmp_path, session_keys, vcsim, lab, restore_points=2) as t:
        yield t


async def source_pass(
    lab: Lab, target: VSphereTarget, hw: HardwareRecord | None, port: int | None = None, **opts: Any
) -> tuple[HardwareRecord, object]:
    async with vsphere_job(
        lab.client,
        vm=lab.vm.name,
        recorded=hw,
        work_dir=lab.work_dir,
        locator=lab.locator,
        uuid_path=lab.uuid_path,
    ) as job:
        report = await run_pass(
            target.spec(port),
            lab.vm.name,
            disk_jobs(job),
            PassOptions(block_size=BLOCK, state_dir=lab.work_dir.parent / "state", **opts),
        )
        return job.hardware, report


async def replica_of(lab: Lab) -> VmInfo:
    return await lab.client.find_vm(f"{lab.vm.name}_replica")


async def no_hotadds(lab: Lab, limit: float = 10) -> None:
    app = await lab.client.find_vm(TARGET_APPLIANCE)
    deadline = time.monotonic() + limit
    while (left := await lab.client.list_hotadded(app.moid)) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    assert left == [], f"disks left HotAdded to the target appliance: {left}"


def last_written(target: VSphereTarget, lab: Lab) -> dict[str, int]:
    last = vm_status(target.data_dir / lab.vm.name)["last_pass"]
    (disk,) = last["disks_written"].values()
    return dict(disk)


async def test_passes_write_the_replica_vm_and_keep_n_restore_points(
    lab: Lab, vtarget: VSphereTarget
) -> None:
    src_flat = lab.flat_file(lab.vm.disks[0].file_name)

    lab.write_blocks({0: 0x11, 3: 0x33, 40: 0x44})
    hw, r = await source_pass(lab, vtarget, None)
    replica = await replica_of(lab)
    assert replica.annotation.startswith("[vzrep] replica")
    assert [(d.capacity, d.slot) for d in replica.disks] == [(d.capacity, d.slot) for d in lab.vm.disks]
    rep_flat = lab.flat_file(replica.disks[0].file_name)
    qemu_compare(src_flat, rep_flat)
    assert last_written(vtarget, lab)["blocks_written"] == 3
    vdir = vtarget.data_dir / lab.vm.name
    assert not list(vdir.glob("*.vmdk")), "a vSphere replica keeps no descriptor or flat file in DATA_DIR"
    assert list(vdir.glob("*.vzmap")) and not list(vdir.glob("*.vzundo"))
    first = await list_restore_points(lab.client, replica.moid)
    assert len(first) == 1 and first[0].description.startswith("[vzrep] restore point")
    await no_hotadds(lab)
    await lab.client.create_snapshot(replica.moid, "admin-check", "taken by hand on the replica", False)

    lab.write_blocks({3: 0x34, 17: 0x77})  # the guest changes one block and writes a new one
    hw, r = await source_pass(lab, vtarget, hw)
    (d,) = r.disks  # type: ignore[attr-defined]
    assert d.mode == "cbt", d.reason
    assert d.blocks_changed == 2 and d.payload_raw == 2 * BLOCK
    assert last_written(vtarget, lab)["blocks_written"] == 2  # only the changed blocks were written
    qemu_compare(src_flat, rep_flat)
    assert (await replica_of(lab)).moid == replica.moid  # adopted, not created again
    await no_hotadds(lab)

    lab.write_blocks({5: 0x55})
    hw, r = await source_pass(lab, vtarget, hw)
    qemu_compare(src_flat, rep_flat)
    points = await list_restore_points(lab.client, replica.moid)
    assert len(points) == 2 and first[0].moid not in {p.moid for p in points}  # the oldest went
    names = [s.name for s in await lab.client.list_snapshots(replica.moid)]
    assert "admin-check" in names and len(names) == 3  # a foreign snapshot is never counted or removed
    await no_hotadds(lab)


async def test_a_cut_pass_rolls_the_replica_disk_back_before_detaching(
    lab: Lab, vtarget: VSphereTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab.write_blocks({1: 0x21, 2: 0x22})
    hw, _ = await source_pass(lab, vtarget, None)
    replica = await replica_of(lab)
    rep_flat = lab.flat_file(replica.disks[0].file_name)
    before = sha256(rep_flat)
    points = await list_restore_points(lab.client, replica.moid)

    # 48 blocks of incompressible data; the connection is cut after about half of them crossed
    path = lab.flat_file(lab.vm.disks[0].file_name)
    with open(path, "r+b") as f:
        f.seek(8 * BLOCK)
        f.write(secrets.token_bytes(48 * BLOCK))
        os.fsync(f.fileno())
    rollbacks: list[tuple[str, list[AttachedDisk]]] = []
    real_rollback = transaction.rollback_disk

    def spy(paths: ReplicaPaths) -> str:  # what was attached while the rollback ran
        app = asyncio.run_coroutine_threadsafe(lab.client.list_hotadded(app_moid), loop).result(10)
        done = real_rollback(paths)
        rollbacks.append((done, app))
        return done

    loop = asyncio.get_running_loop()
    app_moid = (await lab.client.find_vm(TARGET_APPLIANCE)).moid
    monkeypatch.setattr(transaction, "rollback_disk", spy)
    proxy = await CutProxy(vtarget.port, cut_after=24 * BLOCK).start()
    try:
        with pytest.raises(VzrepError):
            await source_pass(lab, vtarget, hw, port=proxy.port, resume_window=0)  # the link stays cut
    finally:
        await proxy.stop()
    await no_hotadds(lab)  # detached: after the rollback, which the session runs first
    (done, attached_then), *_ = rollbacks
    assert done.startswith("restored ") and not done.startswith("restored 0 "), done
    assert [a.file_name for a in attached_then] == [replica.disks[0].file_name]
    vdir = vtarget.data_dir / lab.vm.name
    deadline = time.monotonic() + 10
    while vm_status(vdir)["pass_running"] and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    status = vm_status(vdir)
    assert not status["pending_rollback"] and status["last_failure"]
    assert sha256(rep_flat) == before, "the replica disk was not rolled back"
    assert [p.moid for p in await list_restore_points(lab.client, replica.moid)] == [p.moid for p in points]

    await source_pass(lab, vtarget, hw)  # the next pass succeeds and matches
    qemu_compare(path, rep_flat)
    await no_hotadds(lab)


class StallProxy:
    """Forwards client->server bytes up to ``limit``, then holds the rest: the pass stalls mid-way."""

    def __init__(self, upstream: int, limit: int) -> None:
        self.upstream, self.limit, self.port = upstream, limit, 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> StallProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection("127.0.0.1", self.upstream)
        self._writers += [cw, sw]

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, limit: int | None) -> None:
            sent = 0
            with contextlib.suppress(ConnectionError):
                while data := await r.read(65536):
                    if limit is not None:
                        data = data[: max(0, limit - sent)]
                    sent += len(data)
                    w.write(data)
                    await w.drain()

        with contextlib.suppress(ConnectionError):
            await asyncio.gather(pipe(cr, sw, self.limit), pipe(sr, cw, None))

    async def stop(self) -> None:
        assert self._server is not None
        for w in self._writers:
            w.close()
        self._server.close()


async def test_target_killed_mid_pass_restarts_reattaches_and_rolls_back(
    lab: Lab, vcsim: Vcsim, session_keys: Keys, tmp_path: Path
) -> None:
    """SIGKILL ``vzrep-target serve --vcenter`` while it writes the replica disk; the restarted agent
    detaches the killed run's HotAdd, attaches the replica disk again, rolls it back, detaches it."""
    creds = tmp_path / "vcenter.cred"
    creds.write_text(f"user = {vcsim.user}\npassword = {vcsim.password}\n")
    creds.chmod(0o600)
    data = tmp_path / "tdata"
    roots = [a for ds, d in lab.roots.items() for a in ("--datastore-root", f"{ds}={d}")]
    extra = ["--vcenter", f"{vcsim.host}:{vcsim.port}", "--credentials", str(creds), "--thumbprint"]
    extra += [vcsim.thumbprint, "--appliance-vm", TARGET_APPLIANCE, "--restore-points", "2", *roots]

    def start(log: str, port: int = 0) -> tuple[subprocess.Popen[bytes], int]:
        ready = tmp_path / f"ready-{log}"
        cmd = [sys.executable, "-m", "target_agent.cli", "serve", "--data-dir", str(data)]
        cmd += ["--listen", f"127.0.0.1:{port}", "--host-key", str(session_keys.host_key)]
        cmd += ["--authorized-keys", str(session_keys.authorized_keys), "--ready-file", str(ready), *extra]
        with open(tmp_path / log, "wb") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=out, env={**os.environ, "VZREP_LOG_FORMAT": "json"}
            )
        deadline = time.monotonic() + 30
        while not (ready.exists() and ready.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / log).read_text()
            time.sleep(0.05)
        return proc, int(ready.read_text())

    proc, port = start("t1.log")
    try:
        t = VSphereTarget(data, session_keys, None)  # type: ignore[arg-type]
        t.port = port
        lab.write_blocks({1: 0x21})
        hw, _ = await source_pass(lab, t, None)
        replica = await replica_of(lab)
        rep_flat = lab.flat_file(replica.disks[0].file_name)
        before = sha256(rep_flat)
        path = lab.flat_file(lab.vm.disks[0].file_name)
        with open(path, "r+b") as f:
            f.seek(8 * BLOCK)
            f.write(secrets.token_bytes(48 * BLOCK))
            os.fsync(f.fileno())
        proxy = await StallProxy(port, 24 * BLOCK).start()
        # resume_window 0: the source gives up at once (with the default it would wait for the
        # target to come back, which test_resume.py covers for file replicas)
        pass_task = asyncio.ensure_future(source_pass(lab, t, hw, port=proxy.port, resume_window=0))
        undo = data / lab.vm.name / f"{hw.disks[0].name}-flat.vmdk.vzundo"
        deadline = time.monotonic() + 30
        while not (undo.exists() and sha256(rep_flat) != before):  # blocks written, undo first
            assert time.monotonic() < deadline and not pass_task.done(), "the pass did not stall mid-way"
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        await proxy.stop()
        with pytest.raises(VzrepError):
            await pass_task
        app = await lab.client.find_vm(TARGET_APPLIANCE)
        assert [d.file_name for d in await lab.client.list_hotadded(app.moid)] == [replica.disks[0].file_name]

        proc, port = start("t2.log", port)
        log = (tmp_path / "t2.log").read_text()
        assert "startup_recovery" in log and "attached again" in log, log
        assert sha256(rep_flat) == before and not undo.exists()
        assert await lab.client.list_hotadded(app.moid) == []
        assert len(await list_restore_points(lab.client, replica.moid)) == 1
        await source_pass(lab, t, hw)
        qemu_compare(path, rep_flat)
        await no_hotadds(lab)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
        with contextlib.suppress(VzrepError):
            await lab.client.destroy_vm((await replica_of(lab)).moid)
