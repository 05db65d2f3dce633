"""Run an agent's CLI with tuning knobs patched in from the environment (benchmarks only).

``python -m bench.agent source|target ARGS...`` sets module attributes before calling the
agent's ``main()``, so the tuning sweeps need no option in the shipped CLIs:

* ``VZBENCH_UVLOOP=0`` / ``1``: run the agents on asyncio's own loop / on uvloop (sets the CLIs'
  ``VZREP_UVLOOP``; their default is uvloop);
* ``VZBENCH_WINDOW`` / ``VZBENCH_PKTSIZE``: ``vzcommon.tunnel_policy.WINDOW`` / ``MAX_PKTSIZE``
  (both agents read them when they open the channel);
* ``VZBENCH_ZSTD_LEVEL``: ``source_agent.compression.ZSTD_LEVEL``.
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("source", "target"):
        print("usage: python -m bench.agent source|target ARGS...", file=sys.stderr)
        return 2
    role, argv = sys.argv[1], sys.argv[2:]
    if (loop := os.environ.get("VZBENCH_UVLOOP")) is not None:
        os.environ["VZREP_UVLOOP"] = loop
    from vzcommon import tunnel_policy

    if window := os.environ.get("VZBENCH_WINDOW"):
        tunnel_policy.WINDOW = int(window)
    if pktsize := os.environ.get("VZBENCH_PKTSIZE"):
        tunnel_policy.MAX_PKTSIZE = int(pktsize)
    if level := os.environ.get("VZBENCH_ZSTD_LEVEL"):
        from source_agent import compression

        compression.ZSTD_LEVEL = int(level)
    if role == "source":
        from source_agent.cli import main as agent_main
    else:
        from target_agent.cli import main as agent_main
    return int(agent_main(argv))


if __name__ == "__main__":
    sys.exit(main())
