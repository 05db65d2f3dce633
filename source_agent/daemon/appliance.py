"""The appliance's bandwidth limit for ``vzrep-source run``: ``run --limit`` and ``DIR/appliance.toml``.

Every pass the daemon starts shares one budget, a token bucket in a file beside the history
(:mod:`source_agent.shared_bucket`), whose path each pass is given (``job run --shared-limit``). Its
rules come from two places, and both apply (at each moment the smaller rate wins):

* ``vzrep-source run --limit RULE`` (repeatable), fixed for the daemon's life;
* ``appliance.toml`` in the jobs directory, which the administrator edits while the daemon runs::

      limit = ["20MB/s@mon-fri/08:00-18:00"]   # all passes together; outside every window: unlimited

  It is read again when it changes (checked with the job files) and on SIGHUP; the new rules reach
  running passes at their next take. Its problems read ``FILE:LINE: KEY: what is wrong``, as a job
  file's. A file that does not load when the daemon starts stops it (exit 3): running unlimited would
  flood the link the administrator meant to limit. A bad edit later is logged and recorded
  (``appliance_file_error``) and the last good limit stays. No file: no limit from it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vzcommon.errors import InputError
from vzcommon.log import get_logger

from ..bandwidth import Schedule, parse_rule
from ..jobs.lines import key_lines, line_of
from ..shared_bucket import store_rules
from .history import History

log = get_logger("vzrep.source.daemon")

FILE_NAME = "appliance.toml"  # not a job: the job files are the other *.toml of DIR
KEYS = ("limit",)


class ApplianceFileError(InputError):
    """``appliance.toml`` cannot be used; ``problems`` lists each, naming its line and key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class ApplianceConf:
    limit: tuple[str, ...] = ()  # RATE[@DAYS/HH:MM-HH:MM] rules (source_agent.bandwidth)


def parse_appliance(path: Path, text: str) -> ApplianceConf:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ApplianceFileError([f"{path}: not valid TOML: {exc}"]) from None
    lines = key_lines(text)
    problems: list[str] = []

    def fail(key: str, message: str) -> None:
        problems.append(f"{path}:{line_of(lines, (key,)) or '?'}: {key}: {message}")

    for key in doc:
        if key not in KEYS:
            fail(key, f"unknown key (known here: {', '.join(KEYS)})")
    value = doc.get("limit", [])
    rules = [value] if isinstance(value, str) else value
    if not isinstance(rules, list) or not all(isinstance(x, str) for x in rules):
        fail(
            "limit",
            f'must be a string or an array of strings, such as ["20MB/s@mon-fri/08:00-18:00"], not {value!r}',
        )
        rules = []
    for rule in rules:
        try:
            parse_rule(rule)
        except InputError as exc:
            fail("limit", str(exc))
    if problems:
        raise ApplianceFileError(problems)
    return ApplianceConf(tuple(rules))


def load_appliance(path: Path) -> ApplianceConf:
    """The file's settings; none when there is no file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return ApplianceConf()
    except (OSError, UnicodeDecodeError) as exc:
        raise ApplianceFileError([f"cannot read {path}: {exc}"]) from None
    return parse_appliance(path, text)


class ApplianceLimit:
    """The bucket file and the rules the daemon keeps in it (module docstring)."""

    def __init__(
        self,
        bucket: Path,
        jobs_dir: Path,
        cli_rules: tuple[str, ...],
        history: History,
        clock: Callable[[], float],
    ) -> None:
        self.bucket, self.path = bucket, jobs_dir / FILE_NAME
        self.cli_rules = cli_rules
        self.cli = Schedule.parse(cli_rules)
        self.history, self.clock = history, clock
        self.conf: ApplianceConf | None = None  # the last good
        self.error = ""
        self.seen: tuple[int, int] | None = None

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def changed(self) -> bool:
        return self._stat() != self.seen

    async def start(self) -> None:
        """Read the file and write the bucket anew; a bad file raises (the daemon does not start)."""
        self.seen = self._stat()
        self.conf = load_appliance(self.path)
        await self._store(fresh=True)

    async def reload(self) -> None:
        """Read the file again; a bad one is reported and the last good rules stay."""
        self.seen = self._stat()
        try:
            conf = load_appliance(self.path)
        except ApplianceFileError as exc:
            if exc.problems[0] != self.error:
                for problem in exc.problems:
                    log.error("appliance_file_error", file=str(self.path), problem=problem)
                self.history.event(self.clock(), "", "", "appliance_file_error", "; ".join(exc.problems))
            self.error = exc.problems[0]
            return
        self.error = ""
        if conf != self.conf:
            self.conf = conf
            await self._store()

    async def _store(self, fresh: bool = False) -> None:
        own = self.conf.limit if self.conf is not None else ()
        await store_rules(self.bucket, [self.cli, Schedule.parse(own)], fresh=fresh)
        log.info(
            "appliance_limit", bucket=str(self.bucket), run_limit=list(self.cli_rules), file_limit=list(own)
        )
