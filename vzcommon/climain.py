"""What both agents' command lines share: the event loop, and how errors become one line and an exit code."""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Coroutine
from typing import Any

from .errors import ExitCode, Interrupted, VzrepError
from .log import setup_logging


def asyncio_run(coro: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop; ``VZREP_UVLOOP=0`` (or uvloop missing) runs on asyncio's own loop.

    Measured side by side (bench/RESULTS.md, "Event loop"): ten alternated pairs of 4 GiB passes,
    full pass median 7.3 s on either loop, the 2 % incremental pass 1.30 s on uvloop against 1.40 s,
    and the same peak memory. (uvloop once looked like the cause of the target's memory growth; the
    cause was the tunnel's read size, ``tunnel_policy.read_size``.)
    """
    import asyncio  # here, not at the top: a source pass starts its disk reads before this loads

    if os.environ.get("VZREP_UVLOOP", "1").strip() != "0":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return int(uvloop.run(coro))
    return int(asyncio.run(coro))


def run_main(prog: str, parser: argparse.ArgumentParser, argv: list[str] | None, interrupted: str) -> int:
    """Parse, set up logging, run ``args.func``: the one path from an exception to a message and exit code.

    Every entry point (``vzrep-source``, ``vzrep-target``, ``vzrep``) runs through here, so an error
    is always ``PROG: MESSAGE`` on one line of stderr and the exit code of its class (README, "Exit
    codes"). ``interrupted`` says what happens to work in flight after Ctrl-C.
    """
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "log_level", "warning"))
    # What start-up built (modules, classes, the parser) lives as long as the process: move it out of
    # the collector's reach, so its full collections during a pass do not walk it again and again.
    gc.freeze()
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return report_error(prog, Interrupted(f"interrupted; {interrupted}"))
    except Exception as exc:
        if os.environ.get("VZREP_DEBUG") and not isinstance(exc, VzrepError):
            raise
        return report_error(prog, exc)


def report_error(prog: str, exc: BaseException) -> int:
    """Print ``exc`` as one line on stderr; its exit code. Not ours: a bug, said so, code 1."""
    if isinstance(exc, VzrepError):
        print(f"{prog}: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    print(
        f"{prog}: internal error: {type(exc).__name__}: {exc} (rerun with VZREP_DEBUG=1 and report it)",
        file=sys.stderr,
    )
    return int(ExitCode.INTERNAL)
