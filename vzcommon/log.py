"""Logging through structlog: human-readable on a TTY, JSON lines otherwise (journald, files)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any


def _import_structlog_without_rich() -> None:
    """Import structlog while ``rich`` looks absent, even if rich is loaded already.

    structlog imports rich (which pulls in pygments) only to pretty-print exceptions on a console:
    ~45 ms of start-up. Without it a console log shows an exception as a plain traceback (JSON logs
    never used rich), the same whether or not something (the progress bar, the appliance console)
    loaded rich before the first log event. rich itself stays importable and loaded.
    """
    if "structlog" in sys.modules:
        return
    saved = sys.modules.get("rich")
    sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` now raises ImportError
    try:
        import structlog  # noqa: F401
    finally:
        if saved is None:
            del sys.modules["rich"]
        else:
            sys.modules["rich"] = saved


def _drop(*args: Any, **kwargs: Any) -> None:
    return None


class _Logger:
    """A logger that loads and configures structlog at its first event.

    Why: structlog loads asyncio, logging handlers and its renderers (~25 ms of its own), and a
    command that logs nothing at its level (a pass at the default ``warning``) never needs it.
    """

    __slots__ = ("_bound", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._bound: Any = None

    def __getattr__(self, attr: str) -> Any:
        level = _METHOD_LEVELS.get(attr)
        if level is not None and level < _settings["threshold"]:
            return _drop  # below the level: no need to load structlog for it
        if not _configured:  # the first event, or the first since setup_logging() changed the settings
            _configure()
        if self._bound is None:
            self._bound = _structlog().get_logger(self._name)
        return getattr(self._bound, attr)


def get_logger(name: str) -> Any:
    """The agents' loggers: import them from here (structlog loads at the first event, without rich)."""
    return _Logger(name)


#: the level of each logging method; an event below the configured level is dropped without structlog
_METHOD_LEVELS = {"debug": 10, "info": 20, "msg": 20, "warning": 30, "warn": 30, "error": 40, "exception": 40,
                  "critical": 50, "fatal": 50}  # fmt: skip
_settings: dict[str, Any] = {"level": "info", "stream": None, "threshold": 0}
_configured = True  # until setup_logging() is called, structlog keeps its own defaults


def _structlog() -> Any:
    _import_structlog_without_rich()
    import structlog

    return structlog


def setup_logging(level: str = "info", *, stream: object = None) -> None:
    """Set the level and the stream; structlog is configured with them at the first event."""
    global _configured
    # asyncio logs a warning on stderr for every write to a socket that is already gone ("socket.send()
    # raised exception.", hundreds when the peer is killed mid-pass); the agents report a lost
    # connection themselves, in one line. asyncio's errors still show.
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    _settings.update(level=level, stream=stream, threshold=logging.getLevelNamesMapping()[level.upper()])
    _configured = False


class _CurrentStderr:
    """Whatever ``sys.stderr`` is at each write (a test's capture, or the real one), not the one at set-up."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def _configure() -> None:
    global _configured
    if _configured:
        return
    structlog = _structlog()
    out = _settings["stream"] or _CurrentStderr()
    is_tty = hasattr(out, "isatty") and out.isatty() and os.environ.get("VZREP_LOG_FORMAT") != "json"
    renderer = structlog.dev.ConsoleRenderer(colors=True) if is_tty else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[str(_settings["level"]).upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    _configured = True
