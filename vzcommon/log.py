"""Logging through structlog: human-readable on a TTY, JSON lines otherwise (journald, files)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any


def _import_structlog_without_rich() -> None:
    """Import structlog while ``rich`` looks absent, unless either is loaded already.

    structlog imports rich (which pulls in pygments) only to pretty-print exceptions on a console:
    ~45 ms of every agent's and CLI command's start. Without it a console log shows an exception as
    a plain traceback (JSON logs never used rich). rich itself stays importable afterwards (the
    progress bar, the appliance console).
    """
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` now raises ImportError
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]


_import_structlog_without_rich()

import structlog  # noqa: E402  (loaded above: this binds the module here)


def get_logger(name: str) -> Any:
    """The agents' loggers: import them from here, so structlog is loaded the light way first."""
    return structlog.get_logger(name)


def setup_logging(level: str = "info", *, stream: object = None) -> None:
    out = stream or sys.stderr
    # asyncio logs a warning on stderr for every write to a socket that is already gone ("socket.send()
    # raised exception.", hundreds when the peer is killed mid-pass); the agents report a lost
    # connection themselves, in one line. asyncio's errors still show.
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    is_tty = hasattr(out, "isatty") and out.isatty() and os.environ.get("VZREP_LOG_FORMAT") != "json"
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=True) if is_tty else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=out),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
