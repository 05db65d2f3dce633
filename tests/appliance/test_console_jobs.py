"""The source console's Jobs page against the real agent: a job file in the appliance's jobs directory,
the daemon's own history (its JobsDir and Scheduler, in SQLite), a real target on loopback; the page
driven with Textual's pilot, judged by the marker file the CLI writes and by qemu-img compare."""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path

from textual.widgets import DataTable

from appliance.console.app import ConsoleApp
from appliance.console.backend import Backend
from appliance.layout import Layout
from source_agent.daemon.history import History
from source_agent.daemon.scheduler import Scheduler
from source_agent.daemon.service import JobsDir
from tests.appliance.test_console_pilot import click, text
from tests.support.agents import Keys, Target
from tests.support.daemon import write_scheduled_job
from tests.support.tools import make_image, qemu_compare

MiB = 1 << 20


async def test_jobs_page_pauses_resumes_and_runs_a_pass_now(tmp_path: Path, session_keys: Keys) -> None:
    layout = Layout(tmp_path / "root")
    layout.appliance_json.parent.mkdir(parents=True, exist_ok=True)
    layout.appliance_json.write_text(json.dumps({"role": "source"}))
    layout.jobs_dir.mkdir(parents=True)
    layout.history_db.parent.mkdir(parents=True)
    t = await Target(tmp_path / "data", session_keys).start()
    try:
        src = make_image(tmp_path / "web01.img", 8 * MiB, data_blocks=30, seed=6)
        job_file = write_scheduled_job(
            layout.jobs_dir / "web.toml", t.port, session_keys, {"web01": src}, {"rpo": "1h"}, str(uuid.uuid4())
        )  # fmt: skip
        history = History(layout.history_db)  # what the daemon records when it reads DIR
        Scheduler(history, 4).set_jobs(JobsDir(layout.jobs_dir, history, time.time).load())
        history.close()
        cli = [sys.executable, "-m", "source_agent.cli"]
        backend = Backend(layout, agent_cli={"source": cli, "target": cli}, systemd=False)
        app = ConsoleApp(backend)
        async with app.run_test(size=(160, 45)) as pilot:
            await pilot.press("j")
            await pilot.pause()
            table = app.screen.query_one("#job-vms", DataTable)
            assert table.get_row_at(0)[:3] == ["web", "web01", "never"] and table.get_row_at(0)[5] == "-"
            await click(pilot, "#pause")
            assert job_file.with_suffix(".paused").exists() and table.get_row_at(0)[5] == "yes"
            assert "paused" in text(app, "#message")
            await click(pilot, "#resume")
            assert not job_file.with_suffix(".paused").exists() and table.get_row_at(0)[5] == "-"
            await click(pilot, "#run-now")
            deadline = time.monotonic() + 90
            while "replicated" not in text(app, "#message"):
                assert time.monotonic() < deadline, text(app, "#message")
                await pilot.pause(0.5)
        qemu_compare(src, t.vm("web01") / "disk0.vmdk")
    finally:
        await t.stop()
