"""Replay the kept fuzz corpus (fuzz/corpus/<target>/): each input that once found new coverage, and
each input that once crashed a parser, must still end in an allowed outcome (see fuzz.targets), each
within a few seconds. ``make fuzz`` is the search; this is the regression check that runs every time.
"""

from __future__ import annotations

import random
import signal
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fuzz.image import SparseImage, encode
from fuzz.targets import TARGETS

CORPUS = Path(__file__).resolve().parents[2] / "fuzz" / "corpus"
SECONDS_PER_INPUT = 5
MAX_CORPUS_BYTES = 512 * 1024


@contextmanager
def _deadline(seconds: int, what: str) -> Iterator[None]:
    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"{what} took more than {seconds} s (a hang the fuzzer once found?)")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_corpus_replays_to_allowed_outcomes(name: str) -> None:
    inputs = sorted((CORPUS / name).iterdir()) if (CORPUS / name).is_dir() else []
    assert inputs, f"fuzz/corpus/{name} is empty: run `make fuzz` and commit what it merges"
    outcomes: Counter[str] = Counter()
    for path in inputs:
        with _deadline(SECONDS_PER_INPUT, f"fuzz/corpus/{name}/{path.name}"):
            outcomes[TARGETS[name].run(path.read_bytes())] += 1
    # a corpus that only ever takes one road proves little: the kept inputs reach both ends
    assert "ok" in outcomes or "refused" in outcomes, outcomes


def test_corpus_stays_small() -> None:
    total = sum(f.stat().st_size for f in CORPUS.rglob("*") if f.is_file())
    assert total <= MAX_CORPUS_BYTES, f"fuzz/corpus holds {total} bytes; prune it (libFuzzer -merge=1)"


def test_sparse_image_reads_back_what_it_encodes() -> None:
    rng = random.Random(7)
    image = bytearray(3 << 20)
    for _ in range(40):  # runs of data longer than one piece (127 sectors), and shorter than a sector
        at, n = rng.randrange(len(image) - 70000), rng.randrange(1, 70000)
        image[at : at + n] = rng.randbytes(n)
    image[5000:5100] = bytes(range(100))
    reader = SparseImage(encode(bytes(image), limit=1 << 30, run_limit=1 << 30))
    assert reader.size == len(image)
    for at, n in ((0, 4096), (4900, 300), (len(image) - 100, 4096), (1 << 20, 1 << 20)):
        assert reader.pread(at, n) == bytes(image[at : at + n])
