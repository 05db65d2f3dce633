"""The console's Failover page against a real agent: a backend on a temporary root whose data dir holds a
replica made by real passes, the page driven with Textual's pilot, and the agent's own state files
(the failover record, qemu-img compare of the test copy) as the judge."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from textual.widgets import DataTable

from appliance.console.app import ConfirmScreen, ConsoleApp
from appliance.console.backend import Backend
from appliance.layout import Layout
from target_agent.storage import failover as fo
from tests.appliance.test_console_pilot import click, text
from tests.support.agents import Keys, Target, replicate
from tests.support.tools import change_blocks, make_image, qemu_compare

MiB = 1 << 20


async def test_failover_page_runs_a_test_failover_and_ends_it(tmp_path: Path, session_keys: Keys) -> None:
    layout = Layout(tmp_path / "root")
    layout.appliance_json.parent.mkdir(parents=True, exist_ok=True)
    layout.appliance_json.write_text(json.dumps({"role": "target"}))
    t = await Target(layout.data_dir, session_keys, restore_points=3).start()
    src = make_image(tmp_path / "d.img", 8 * MiB, data_blocks=40, seed=4)
    saved = []
    try:
        for n in range(2):
            if n:
                change_blocks(src, 10, seed=20 + n)
            assert (await replicate(t.spec(), "web01", {"d": src}, tmp_path / "state")).ok
            saved.append(Path(shutil.copy(src, tmp_path / f"saved-{n}.img")))
    finally:
        await t.stop()
    backend = Backend(layout, agent_cli={"target": [sys.executable, "-m", "target_agent.cli"]}, systemd=False)
    app = ConsoleApp(backend)
    async with app.run_test(size=(150, 45)) as pilot:
        await pilot.press("o")
        await pilot.pause()
        replicas = app.screen.query_one("#replicas", DataTable)
        assert replicas.get_row_at(0)[:3] == ["web01", "idle", "2"]
        points = app.screen.query_one("#points", DataTable)
        assert points.row_count == 2 and points.get_row_at(0)[3] == "live replica"
        points.move_cursor(row=1)  # the older point
        await click(pilot, "#test")
        vdir = layout.data_dir / "web01"
        state = fo.read_state(vdir)
        assert state is not None and state["state"] == "test"
        qemu_compare(saved[0], Path(state["dir"]) / "d.vmdk")  # the test copy is the older point
        assert replicas.get_row_at(0)[1] == "test failover" and "replication goes on" in text(app, "#message")
        await click(pilot, "#undo")
        assert isinstance(app.screen, ConfirmScreen) and "web01" in str(app.screen.question)
        await click(pilot, "#yes")
        assert fo.read_state(vdir) is None and not Path(state["dir"]).exists()
        assert app.screen.query_one("#replicas", DataTable).get_row_at(0)[1] == "idle"
