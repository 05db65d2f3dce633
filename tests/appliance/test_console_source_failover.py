"""The source console's Jobs page asks the target about a VM's replica: its restore points and failover
state, a test failover of a chosen point and its end. Against the real agents: a scheduled job in the
appliance's jobs directory (the daemon's own history), a target agent on loopback holding a replica
made by real passes, ``vzrep-source points|test-failover`` run by the page; judged by the target's own
failover record and restore-point index, and ``qemu-img compare`` of the test copy."""

from __future__ import annotations

import json
import shutil
import sys
import time
import uuid
from pathlib import Path

from textual.widgets import DataTable

from appliance.console.app import ConfirmScreen, ConsoleApp
from appliance.console.backend import Backend
from appliance.layout import Layout
from source_agent.daemon.history import History
from source_agent.daemon.scheduler import Scheduler
from source_agent.daemon.service import JobsDir
from target_agent.storage import failover as fo
from target_agent.storage import points as rp
from tests.appliance.test_console_pilot import click, text
from tests.support.agents import Keys, Target, replicate
from tests.support.daemon import write_scheduled_job
from tests.support.tools import change_blocks, make_image, qemu_compare

MiB = 1 << 20


async def until(pilot, app: ConsoleApp, selector: str, words: str) -> str:  # type: ignore[no-untyped-def]
    """Wait for the page's worker to put ``words`` into ``selector`` (a guard against a hang, not a
    speed goal)."""
    deadline = time.monotonic() + 90
    while words not in text(app, selector):
        assert time.monotonic() < deadline, text(app, selector)
        await pilot.pause(0.2)
    return text(app, selector)


async def test_jobs_page_shows_the_targets_points_and_runs_a_test_failover(
    tmp_path: Path, session_keys: Keys
) -> None:
    layout = Layout(tmp_path / "root")
    layout.appliance_json.parent.mkdir(parents=True, exist_ok=True)
    layout.appliance_json.write_text(json.dumps({"role": "source"}))
    layout.jobs_dir.mkdir(parents=True)
    layout.history_db.parent.mkdir(parents=True)
    t = await Target(tmp_path / "data", session_keys, restore_points=4).start()
    src = make_image(tmp_path / "web01.img", 8 * MiB, data_blocks=30, seed=8)
    saved = []
    try:
        for n in range(2):
            if n:
                change_blocks(src, 8, seed=50 + n)
            assert (await replicate(t.spec(), "web01", {"disk0": src}, tmp_path / "state")).ok
            saved.append(Path(shutil.copy(src, tmp_path / f"saved-{n}.img")))
        write_scheduled_job(
            layout.jobs_dir / "web.toml", t.port, session_keys, {"web01": src}, {"rpo": "1h"}, str(uuid.uuid4())
        )  # fmt: skip
        history = History(layout.history_db)  # what the daemon records when it reads DIR
        Scheduler(history, 4).set_jobs(JobsDir(layout.jobs_dir, history, time.time).load())
        history.close()
        cli = [sys.executable, "-m", "source_agent.cli"]
        app = ConsoleApp(Backend(layout, agent_cli={"source": cli, "target": cli}, systemd=False))
        vdir = t.vm("web01")
        async with app.run_test(size=(160, 50)) as pilot:
            await pilot.press("j")
            await pilot.pause()
            await click(pilot, "#test")  # nothing to choose from yet
            assert "press Restore points first" in text(app, "#message") and fo.read_state(vdir) is None

            await click(pilot, "#fetch-points")
            state = await until(pilot, app, "#target-state", "on the target:")
            assert "no failover" in state and "2 restore point(s)" in state
            points = app.screen.query_one("#points", DataTable)
            kept = rp.load(vdir)
            assert [points.get_row_at(i)[0] for i in range(points.row_count)] == [
                p.id for p in reversed(kept)
            ]
            assert points.get_row_at(0)[3] == "live replica"

            points.move_cursor(row=1)  # the older point
            await click(pilot, "#test")
            assert isinstance(app.screen, ConfirmScreen) and kept[0].id in str(app.screen.question)
            await click(pilot, "#yes")
            await until(pilot, app, "#message", "replication goes on")
            record = fo.read_state(vdir)
            assert record is not None and (record["state"], record["point"]) == ("test", kept[0].id)
            qemu_compare(saved[0], Path(record["dir"]) / "disk0.vmdk")  # the point, as the first pass left it
            qemu_compare(src, vdir / "disk0.vmdk")  # the replica itself as it was
            assert f"test failover at point {kept[0].id}" in text(app, "#target-state")

            await click(pilot, "#end-test")
            assert isinstance(app.screen, ConfirmScreen) and "web01" in str(app.screen.question)
            await click(pilot, "#no")  # asked first: No changes nothing
            assert fo.read_state(vdir) == record
            await click(pilot, "#end-test")
            await click(pilot, "#yes")
            await until(pilot, app, "#message", "ended")
            assert fo.read_state(vdir) is None and not Path(record["dir"]).exists()
            assert "no failover" in text(app, "#target-state")

            await t.stop()  # the target goes away: the page says so, and shows no stale points
            await click(pilot, "#fetch-points")
            await until(pilot, app, "#target-state", "cannot be reached")
            assert app.screen.query_one("#points", DataTable).row_count == 0
    finally:
        t.server.close()
