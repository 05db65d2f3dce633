"""vzcommon.log: structlog loaded without rich, and logging still works on a console and as JSON."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from vzcommon.log import get_logger, setup_logging

PROBE = """
import json, sys
import {module}
loaded = "rich" in sys.modules
import rich.progress  # still importable for the progress bar
print(json.dumps({{"loaded_by_cli": loaded, "importable": "rich.progress" in sys.modules}}))
"""


@pytest.mark.parametrize("module", ["source_agent.cli", "target_agent.cli"])
def test_an_agent_starts_without_loading_rich(module: str) -> None:
    out = subprocess.run([sys.executable, "-c", PROBE.format(module=module)], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {"loaded_by_cli": False, "importable": True}


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_console_and_json_logs_render_events_and_exceptions() -> None:
    console = FakeTty()
    setup_logging("info", stream=console)
    try:
        raise ValueError("boom")
    except ValueError:
        get_logger("vzrep.test").exception("went_wrong", disk="d0")
    text = console.getvalue()
    assert "went_wrong" in text and "disk" in text and "ValueError: boom" in text and "Traceback" in text

    plain = io.StringIO()
    setup_logging("info", stream=plain)
    get_logger("vzrep.test").info("pass_started", vm="vm1")
    event = json.loads(plain.getvalue().splitlines()[-1])
    assert event["event"] == "pass_started" and event["vm"] == "vm1" and event["level"] == "info"
