"""What both agents' command lines share: the event loop, and how errors become one line and an exit code."""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Coroutine
from typing import Any

from .errors import ExitCode, VzrepError
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
    """Parse, set up logging, run ``args.func``; a VzrepError is one line on stderr and its exit code."""
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    # What start-up built (modules, classes, the parser) lives as long as the process: move it out of
    # the collector's reach, so its full collections during a pass do not walk it again and again.
    gc.freeze()
    try:
        return int(args.func(args))
    except VzrepError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {interrupted}", file=sys.stderr)
        return int(ExitCode.CONNECTION)
    except Exception as exc:  # a bug: one line for the user, the traceback with VZREP_DEBUG=1
        if os.environ.get("VZREP_DEBUG"):
            raise
        print(
            f"{prog}: internal error: {type(exc).__name__}: {exc} (rerun with VZREP_DEBUG=1 and report it)",
            file=sys.stderr,
        )
        return int(ExitCode.INTERNAL)
