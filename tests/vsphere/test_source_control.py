"""A source asks a vSphere target (``serve --vcenter``, against vcsim) about its replica VM over the
pass's SSH tunnel: the restore-point snapshots, a test failover of an older one, and its end. What
happened is read back through pyVmomi directly (``Seen``: power state, current snapshot, snapshot
tree, NICs), not through the code under test."""

from __future__ import annotations

import pytest

from protocol.messages import Request
from source_agent.control import ask
from target_agent.storage.failover import read_state
from tests.vsphere.conftest import Lab
from tests.vsphere.test_failover import Seen, three_points, vtarget  # noqa: F401  (the fixture)
from tests.vsphere.test_target_pass import VSphereTarget, source_pass
from vsphere.model import RESTORE_POINT_PREFIX
from vzcommon.errors import FailedOver, InputError

pytestmark = pytest.mark.vcsim


async def test_points_and_a_test_failover_from_the_source(lab: Lab, vtarget: VSphereTarget) -> None:  # noqa: F811
    hw, replica, foreign = await three_points(lab, vtarget)
    seen = Seen(lab, replica.moid)
    before = await seen.read()
    vm = lab.vm.name

    st = await ask(vtarget.spec(), vm, Request("points"))
    ours = [m for m, (name, _) in before["tree"].items() if name.startswith(RESTORE_POINT_PREFIX)]
    assert st.kind == "vsphere" and sorted(r[0] for r in st.points) == sorted(ours) and len(ours) == 3
    assert foreign not in {r[0] for r in st.points}  # an operator's snapshot is no restore point
    assert [r[0] for r in st.points if r[4]] == [st.points[0][0]] == [before["current"]]  # newest, live
    newest, second = st.points[0][0], st.points[1][0]

    st = await ask(vtarget.spec(), vm, Request("test-failover", second))
    after = await seen.read()
    assert after["power"] == "poweredOn" and after["current"] == second and after["nics"] == [(False, False)]
    record = read_state(vtarget.data_dir / vm)
    assert record is not None and record["state"] == "testing" and record["test"] is True
    assert (st.failover_state, st.failover_point) == ("testing", second) and "NICs disconnected" in st.note
    with pytest.raises(FailedOver):  # passes wait while the replica VM runs the test
        await source_pass(lab, vtarget, hw)
    with pytest.raises(InputError, match="already has a test failover"):
        await ask(vtarget.spec(), vm, Request("test-failover"))
    assert await seen.read() == after

    st = await ask(vtarget.spec(), vm, Request("end-test"))
    undone = await seen.read()
    assert undone["power"] == "poweredOff" and undone["current"] == newest
    assert undone["tree"] == before["tree"] and undone["nics"] == [(False, False)]
    assert read_state(vtarget.data_dir / vm) is None and st.failover_state == ""
    lab.write_blocks({8: 0x88})
    await source_pass(lab, vtarget, hw)  # replication goes on
