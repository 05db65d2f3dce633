"""The frame and undo-record CRC-32, judged by Python's zlib (the function it must equal)."""

from __future__ import annotations

import importlib.util
import random
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from vzcommon.checksum import crc32


def test_the_standard_check_value() -> None:
    assert crc32(b"123456789") == 0xCBF43926  # CRC-32/ISO-HDLC, as zlib, gzip and PNG use it
    assert crc32(b"") == 0


@settings(max_examples=300)
@given(st.binary(max_size=9000), st.integers(0, 2**32 - 1))
def test_equals_zlib_for_any_bytes_and_start(data: bytes, start: int) -> None:
    got = crc32(data, start)
    assert got == zlib.crc32(data, start)
    assert 0 <= got < 2**32


@settings(max_examples=200)
@given(st.binary(max_size=4000), st.binary(max_size=4000))
def test_chaining_is_the_crc_of_the_concatenation(a: bytes, b: bytes) -> None:
    """The frame CRC is computed over the header, then continued over the body."""
    assert crc32(b, crc32(a)) == crc32(a + b) == zlib.crc32(a + b)


def test_every_length_around_the_vector_widths_and_buffer_kinds() -> None:
    rng = random.Random(32)
    data = rng.randbytes(1 << 20)
    for n in [*range(0, 300), 4095, 4096, 4097, 65535, 65536, 65537, 1 << 20]:
        off = n % 13  # misaligned starts as well
        chunk = data[off : off + n]
        expect = zlib.crc32(chunk)
        assert crc32(chunk) == expect, n
        # frames are checked through memoryviews of the received chunk, undo records as bytearrays
        assert crc32(memoryview(data)[off : off + n]) == expect, n
        assert crc32(bytearray(chunk)) == expect, n


def test_isal_is_used_when_installed() -> None:
    if importlib.util.find_spec("isal") is None:
        assert crc32 is zlib.crc32
    else:
        from isal import isal_zlib

        assert crc32 is isal_zlib.crc32
