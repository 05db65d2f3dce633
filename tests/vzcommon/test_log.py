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


LAZY = """
import json, sys
from vzcommon.log import get_logger, setup_logging
setup_logging("warning")
get_logger("vzrep.test").info("below_the_level", disk="d0")
before = "structlog" in sys.modules
get_logger("vzrep.test").warning("at_the_level", disk="d0")
print(json.dumps({"before": before, "after": "structlog" in sys.modules}))
"""


def test_structlog_loads_at_the_first_event_at_or_above_the_level() -> None:
    """A pass at the default level logs nothing and never loads structlog (~25 ms of start-up)."""
    out = subprocess.run(
        [sys.executable, "-c", LAZY], capture_output=True, text=True, check=True,
        env={"VZREP_LOG_FORMAT": "json", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert json.loads(out.stdout) == {"before": False, "after": True}
    (line,) = out.stderr.splitlines()
    assert json.loads(line)["event"] == "at_the_level" and "below_the_level" not in out.stderr


RICH_FIRST = """
import io, json, sys
import rich.progress  # the progress bar loaded rich before anything logged
from vzcommon.log import get_logger, setup_logging

class Tty(io.StringIO):
    def isatty(self):
        return True

out = Tty()
setup_logging("info", stream=out)
try:
    raise ValueError("boom")
except ValueError:
    get_logger("vzrep.test").exception("went_wrong")
print(json.dumps(out.getvalue()))
"""


def test_exceptions_stay_plain_tracebacks_when_rich_was_loaded_first() -> None:
    res = subprocess.run([sys.executable, "-c", RICH_FIRST], capture_output=True, text=True, check=True)
    text = json.loads(res.stdout)
    assert "Traceback (most recent call last)" in text and "ValueError: boom" in text
    assert "╭" not in text  # rich's framed traceback
