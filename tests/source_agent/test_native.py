"""The compiled block-scan kernel against its Python twin and an independent reference (blake3-py).

The reference below classifies each block from first principles (a bytes comparison with zeros,
the ``blake3`` package's hash); both kernels must produce exactly its hashes, kinds and count.
"""

from __future__ import annotations

import ctypes
import platform

import pytest
from blake3 import blake3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from source_agent import native
from source_agent.native import (
    HASH_LEN,
    KIND_CHANGED,
    KIND_SAME,
    KIND_SKIPPED,
    KIND_ZERO_NEW,
    KIND_ZERO_SAME,
    WANT_HOLE,
    WANT_READ,
    WANT_SKIP,
    classify_native,
    classify_python,
)


def reference(
    data: bytes, bs: int, want: bytes, old: bytes
) -> tuple[bytes, bytes, int]:
    hashes, kinds, to_send = bytearray(), bytearray(), 0
    for i in range(-(-len(data) // bs)):
        block = data[i * bs : (i + 1) * bs]
        was = old[i * HASH_LEN : (i + 1) * HASH_LEN]
        if want[i] == WANT_SKIP:
            hashes += was
            kinds.append(KIND_SKIPPED)
            continue
        zero = want[i] == WANT_HOLE or block == bytes(len(block))
        digest = blake3(bytes(len(block)) if zero else block).digest()
        hashes += digest
        if zero:
            kinds.append(KIND_ZERO_SAME if was == digest else KIND_ZERO_NEW)
        else:
            kinds.append(KIND_SAME if was == digest else KIND_CHANGED)
        to_send += kinds[-1] in (KIND_ZERO_NEW, KIND_CHANGED)
    return bytes(hashes), bytes(kinds), to_send


def run_kernel(kernel: native.Kernel, data: bytes, bs: int, want: bytes, old: bytes) -> tuple[bytes, bytes, int]:
    n = -(-len(data) // bs)
    buf = bytearray(data)
    anchor = (ctypes.c_char * len(buf)).from_buffer(buf)
    hashes, kinds = bytearray(n * HASH_LEN), bytearray(n)
    tail = len(data) - (n - 1) * bs
    try:
        count = kernel(
            ctypes.addressof(anchor), len(data), bs, want, old, blake3(bytes(bs)).digest(),
            blake3(bytes(tail)).digest(), hashes, kinds, memoryview(buf),
        )  # fmt: skip
    finally:
        del anchor
    return bytes(hashes), bytes(kinds), count


def test_the_kernel_is_built() -> None:
    """``make venv`` compiles it (gcc); without it vzrep still works, but scans ~1.4x slower."""
    if platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64"):
        pytest.skip(f"the kernel is only built and checked on x86-64 and arm64, not {platform.machine()}")
    assert native.library_path() is not None, (
        "source_agent/native/_blockscan*.so is missing: install gcc and run `pip install -e .` again"
    )
    assert native.kernel() is classify_native and native.kernel_name() == "native"
    assert native.blake3_c_version() == "1.3.1"


def test_the_operator_switch_selects_the_python_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VZREP_SCAN", "python")
    assert native.kernel() is classify_python and native.kernel_name() == "python"


@hs.composite
def windows(draw: hs.DrawFn) -> tuple[bytes, int, bytes, bytes]:
    """A window of blocks: data, zero and mixed blocks, a short tail, wants, and map entries."""
    bs = draw(hs.sampled_from([1024, 4096, 65536]))
    n = draw(hs.integers(1, 12))
    tail = draw(hs.integers(1, bs))
    data, want, old = bytearray(), bytearray(), bytearray()
    for i in range(n):
        size = tail if i == n - 1 else bs
        shape = draw(hs.sampled_from(["zero", "random", "one-byte", "last-byte"]))
        block = bytearray(size)
        if shape == "random":
            block = bytearray(draw(hs.binary(min_size=size, max_size=size)))
        elif shape == "one-byte":
            block[draw(hs.integers(0, size - 1))] = draw(hs.integers(1, 255))
        elif shape == "last-byte":
            block[-1] = 1
        w = draw(hs.sampled_from([WANT_READ, WANT_READ, WANT_SKIP, WANT_HOLE if shape == "zero" else WANT_READ]))
        true_hash = blake3(bytes(block)).digest()
        entry = draw(hs.sampled_from([true_hash, bytes(HASH_LEN), blake3(b"other").digest()]))
        data += block
        want.append(w)
        old += entry
    return bytes(data), bs, bytes(want), bytes(old)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(windows())
def test_both_kernels_match_the_reference(window: tuple[bytes, int, bytes, bytes]) -> None:
    data, bs, want, old = window
    expected = reference(data, bs, want, old)
    assert run_kernel(classify_python, data, bs, want, old) == expected
    if native.library_path() is not None:
        assert run_kernel(classify_native, data, bs, want, old) == expected


def test_short_arrays_are_refused_before_the_c_code_runs() -> None:
    if native.library_path() is None:
        pytest.skip("the kernel is not built (test_the_kernel_is_built says why)")
    data = bytes(3 * 4096)
    with pytest.raises(ValueError, match="shorter than the window"):
        run_kernel(classify_native, data, 4096, bytes([WANT_READ]) * 2, bytes(3 * HASH_LEN))
