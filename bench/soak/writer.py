"""A process that rewrites random 4 KiB pages of a disk image until it is terminated.

The soak runs it during a pass to stand for a source disk that changes under the agent (no
snapshot). Pages, not whole blocks, so a block the agent reads can hold a mix of old and new pages.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time

PAGE = 4096


def main() -> int:
    path, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    stop = False

    def on_term(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    fd = os.open(path, os.O_WRONLY)
    try:
        pages = os.fstat(fd).st_size // PAGE
        print("ready", flush=True)
        while not stop:
            os.pwrite(fd, rng.randbytes(PAGE), rng.randrange(pages) * PAGE)
            time.sleep(rng.uniform(0.002, 0.02))  # ~100 pages a second: some blocks, not all
    finally:
        os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
