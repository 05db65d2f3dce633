"""What a source may ask of its replica (``target_agent.control``), on a file replica made by real
passes: the answer against the target's own restore-point index, a test failover judged by qemu-img
compare of the exported point, and every refusal judged by the SHA-256 of every file of the VM's
directory (sha256sum) before and after: a refusal changes nothing."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from protocol.messages import Request
from target_agent.control import carry_out
from target_agent.storage import failover as fo
from target_agent.storage import points as rp
from target_agent.storage.lock import VmLock
from tests.support.agents import Keys, Target, replicate
from tests.support.tools import change_blocks, make_image, qemu_compare, sha256
from vzcommon.errors import BusyError, FailedOver, InputError, VzrepError

MiB = 1 << 20
VM = "web01"


def tree(vdir: Path) -> dict[str, str]:
    """Every file under the VM's directory, by its SHA-256 (sha256sum, not our code)."""
    return {str(p.relative_to(vdir)): sha256(p) for p in sorted(vdir.rglob("*")) if p.is_file()}


@dataclass
class Replica:
    data_dir: Path
    src: Path
    saved: list[Path]  # the source as each pass sent it, oldest first

    @property
    def vdir(self) -> Path:
        return self.data_dir / VM


async def make_replica(tmp_path: Path, keys: Keys, passes: int = 3) -> Replica:
    """``passes`` real passes of one disk over loopback SSH: as many restore points."""
    t = await Target(tmp_path / "data", keys, restore_points=5).start()
    src = make_image(tmp_path / "d.img", 8 * MiB, data_blocks=40, seed=4)
    saved = []
    try:
        for n in range(passes):
            if n:
                change_blocks(src, 10, seed=30 + n)
            assert (await replicate(t.spec(), VM, {"d": src}, tmp_path / "state")).ok
            saved.append(Path(shutil.copy(src, tmp_path / f"saved-{n}.img")))
    finally:
        await t.stop()
    return Replica(tmp_path / "data", src, saved)


@pytest.fixture
async def replica(tmp_path: Path, session_keys: Keys) -> Replica:
    return await make_replica(tmp_path, session_keys)


async def test_the_points_are_the_targets_own_newest_first(replica: Replica) -> None:
    before = tree(replica.vdir)
    st = await carry_out(replica.data_dir, VM, Request("points"), None)
    kept = rp.load(replica.vdir)
    assert [r[0] for r in st.points] == [p.id for p in reversed(kept)] and len(kept) == 3
    assert [r[4] for r in st.points] == [True, False, False]  # only the newest is the live replica
    assert [r[5] for r in st.points] == [0, kept[2].held_bytes, kept[1].held_bytes]
    assert all(r[5] > 0 for r in st.points[1:]) and [r[2] for r in st.points] == ["pass"] * 3
    assert (st.kind, st.older, st.failover_state, st.pass_running, st.note) == ("file", 0, "", False, "")
    assert tree(replica.vdir) == before


async def test_a_test_failover_of_an_older_point_then_its_end(replica: Replica) -> None:
    before = tree(replica.vdir)
    older = rp.load(replica.vdir)[0].id
    st = await carry_out(replica.data_dir, VM, Request("test-failover", older), None)
    record = fo.read_state(replica.vdir)
    assert record is not None and (record["state"], record["point"]) == ("test", older)
    qemu_compare(replica.saved[0], Path(record["dir"]) / "d.vmdk")  # the point as the first pass left it
    assert (st.failover_state, st.failover_point) == ("test", older) and record["dir"] in st.failover_detail
    assert older in st.note and "replication goes on" in st.note
    after = {
        k: v for k, v in tree(replica.vdir).items() if k != "failover" and not k.startswith("failover-test/")
    }
    assert after == before  # the replica and its points are untouched
    qemu_compare(replica.src, replica.vdir / "d.vmdk")

    st = await carry_out(replica.data_dir, VM, Request("end-test"), None)
    assert fo.read_state(replica.vdir) is None and not Path(record["dir"]).exists()
    assert st.failover_state == "" and "ended" in st.note
    assert tree(replica.vdir) == before


async def test_a_test_failover_without_a_point_is_of_the_newest(replica: Replica) -> None:
    st = await carry_out(replica.data_dir, VM, Request("test-failover"), None)
    newest = rp.load(replica.vdir)[-1].id
    assert st.failover_point == newest
    qemu_compare(replica.src, replica.vdir / "failover-test" / "d.vmdk")


async def refused(
    replica: Replica,
    request: Request,
    error: type[VzrepError],
    match: str,
    vm: str = VM,
    image: Path | None = None,
) -> None:
    """The request is refused with ``error``, and not one byte of the VM's directory changed; the
    replica is still ``image`` (default: the source as the last pass sent it)."""
    before = tree(replica.vdir)
    record = fo.read_state(replica.vdir)
    with pytest.raises(error, match=match):
        await carry_out(replica.data_dir, vm, request, None)
    assert tree(replica.vdir) == before and fo.read_state(replica.vdir) == record
    qemu_compare(image or replica.src, replica.vdir / "d.vmdk")


async def test_refusals_change_nothing(replica: Replica) -> None:
    await refused(replica, Request("points"), InputError, "holds no replica of VM 'ghost'", vm="ghost")
    assert not (replica.data_dir / "ghost").exists()
    await refused(
        replica, Request("test-failover", "g-none"), InputError, "no restore point 'g-none'.*its points"
    )
    await refused(replica, Request("end-test"), InputError, "no test failover to end")
    with VmLock(replica.vdir, VM):  # what a pass (or a suspended pass, or a rollback) holds
        await refused(replica, Request("test-failover"), BusyError, "VM 'web01' is busy on the target: a pass")
        st = await carry_out(replica.data_dir, VM, Request("points"), None)
        assert st.pass_running  # asking is never refused
    await carry_out(replica.data_dir, VM, Request("test-failover"), None)
    await refused(replica, Request("test-failover"), InputError, "already has a test failover")


async def test_a_real_failover_stays_the_dr_sites(replica: Replica) -> None:
    """A failover started at the DR site: the source may neither test over it nor end it."""
    fo.start(replica.data_dir, VM, rp.load(replica.vdir)[1].id)  # the replica rolled to the second pass
    at = replica.saved[1]
    await refused(replica, Request("test-failover"), FailedOver, "failed-over at the DR site", image=at)
    await refused(replica, Request("end-test"), FailedOver, "only the DR site ends that", image=at)
    st = await carry_out(replica.data_dir, VM, Request("points"), None)
    assert st.failover_state == "failed-over" and "d-failover.vmdk" in st.failover_detail
