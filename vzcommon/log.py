"""Logging through structlog: human-readable on a TTY, JSON lines otherwise (journald, files)."""

from __future__ import annotations

import logging
import os
import sys

import structlog


def setup_logging(level: str = "info", *, stream: object = None) -> None:
    out = stream or sys.stderr
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
