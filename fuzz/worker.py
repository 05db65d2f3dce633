"""Run one harness under atheris: ``python -m fuzz.worker TARGET [libFuzzer options and corpus dirs]``.

libFuzzer's ``-timeout`` bounds each input's time and ``-rss_limit_mb`` the process's memory; the
address-space rlimit set here is the hard stop behind them (an allocation past it raises MemoryError,
which is not an allowed error, so it is reported as a crash with its input).
"""

from __future__ import annotations

import os
import resource
import sys

import atheris

#: what atheris instruments for coverage: every parser a harness reaches (not the harnesses)
INSTRUMENT = ["protocol", "vzcommon", "appliance.ovfenv", "source_agent.filters"]
ADDRESS_SPACE = 4 << 30


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m fuzz.worker TARGET [libFuzzer options] [corpus dirs]")
    name = sys.argv.pop(1)
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    with atheris.instrument_imports(include=INSTRUMENT):
        from fuzz.targets import TARGETS
    if name not in TARGETS:
        sys.exit(f"unknown fuzz target {name!r}; the targets are: {', '.join(TARGETS)}")
    run = TARGETS[name].run

    def one_input(data: bytes) -> None:
        run(data)

    # libFuzzer re-runs argv[0] to merge a corpus: the script fuzz.run made for this target
    argv = [os.environ.get("VZREP_FUZZ_SELF", sys.argv[0]), *sys.argv[1:]]
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
