"""Auto-pairing from the deployment's pairing token (``vzrep-pairing.service``).

Both appliances were deployed with the same token. The target serves the pairing port with it
until a source pairs or the token expires (15 minutes); the source keeps trying its peer until the
target answers (the target may boot later) and while the target is busy pairing someone else, then
pairs once. Then the token file is deleted: it is single use, and the unit's ``ConditionPathExists``
keeps it from starting again. Only a source that gave up while its target was still busy keeps its
token (exit 10, BUSY): the unit restarts it (``Restart=on-failure``) and it tries again, since the
code may still be good.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from appliance.layout import Layout
from pairing.cli import standalone
from vzcommon.errors import ExitCode

RETRY_SECONDS = 10.0
SOURCE_DEADLINE = 20 * 60.0


def run(
    config: dict[str, object], layout: Layout, retry: float = RETRY_SECONDS, deadline: float = SOURCE_DEADLINE
) -> int:
    if not layout.token_file.exists():
        print("no pairing token: nothing to do")
        return 0
    keys_dir = str(layout.keys_dir)
    if config.get("role") == "target":
        return standalone(
            "target",
            [
                "pair",
                "--keys-dir",
                keys_dir,
                "--code-file",
                str(layout.token_file),
                "--listen",
                f"{config.get('pairing_host', '0.0.0.0')}:{config.get('pairing_port', 2223)}",
            ],
        )
    peer = config.get("peer")
    if not isinstance(peer, dict) or not isinstance(peer.get("host"), str):
        print("a source needs its peer's address to pair: set vzrep.peer or pair from the console")
        layout.token_file.unlink(missing_ok=True)
        return int(ExitCode.INPUT)
    token = layout.token_file.read_text().strip()
    stop_at = time.monotonic() + deadline
    rc = int(ExitCode.CONNECTION)
    try:
        while True:
            busy_wait = max(stop_at - time.monotonic(), 0.0)  # the target is pairing another source
            rc = standalone(
                "source",
                ["pair", "--keys-dir", keys_dir, "--port", str(peer.get("port", 2223)), "--busy-wait",
                 f"{busy_wait:.1f}", peer["host"], token],
            )  # fmt: skip
            if rc not in (ExitCode.CONNECTION, ExitCode.BUSY) or time.monotonic() + retry > stop_at:
                return rc
            time.sleep(retry)
    finally:
        if rc != ExitCode.BUSY:  # busy is no verdict on the token: keep it for the next start
            layout.token_file.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m appliance.autopair", description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=Layout().appliance_json)
    ap.add_argument("--root", type=Path, default=Path("/"))
    args = ap.parse_args(argv)
    try:
        config = json.loads(args.config.read_text())
    except (OSError, ValueError) as exc:
        print(f"cannot read {args.config}: {exc}", file=sys.stderr)
        return int(ExitCode.INPUT)
    return run(config, Layout(args.root))


if __name__ == "__main__":
    raise SystemExit(main())
