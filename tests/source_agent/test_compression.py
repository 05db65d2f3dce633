"""Every compression decision, from the pass's option down to one block (source_agent.compression)."""

from __future__ import annotations

import os
import random

import pytest
import zstandard

from protocol.messages import Codec
from source_agent.compression import GIVE_UP_AFTER, BlockPacker, Compress, chunk_mode, pass_mode

BS = 64 * 1024
TEXT = (b"the quick brown fox jumps over the lazy dog " * 2000)[:BS]


def noise(seed: int) -> bytes:
    return random.Random(seed).randbytes(BS)


@pytest.mark.parametrize(
    ("option", "codecs", "mode"),
    [
        ("auto", (Codec.ZSTD, Codec.NONE), Compress.PROBE),
        ("zstd", (Codec.ZSTD, Codec.NONE), Compress.ON),
        ("none", (Codec.ZSTD, Codec.NONE), Compress.OFF),
        ("auto", (Codec.NONE,), Compress.OFF),  # the target did not accept zstd
        ("zstd", (Codec.NONE,), Compress.OFF),
    ],
)
def test_pass_mode(option: str, codecs: tuple[int, ...], mode: Compress) -> None:
    assert pass_mode(option, codecs) is mode


def test_chunk_mode_compresses_outright_only_in_auto_when_the_sender_is_behind() -> None:
    assert chunk_mode(Compress.PROBE, sender_behind=True) is Compress.ON
    assert chunk_mode(Compress.PROBE, sender_behind=False) is Compress.PROBE
    for mode in (Compress.ON, Compress.OFF):
        assert chunk_mode(mode, sender_behind=True) is mode is chunk_mode(mode, sender_behind=False)


def test_off_sends_every_block_as_it_is() -> None:
    packer = BlockPacker(Compress.OFF)
    assert packer.pack(TEXT) == (TEXT, Codec.NONE)


def test_a_probe_that_shrinks_turns_compression_on_for_the_chunk() -> None:
    packer = BlockPacker(Compress.PROBE)
    data, codec = packer.pack(TEXT)
    assert codec is Codec.ZSTD and zstandard.ZstdDecompressor().decompress(data, max_output_size=BS) == TEXT
    data, codec = packer.pack(TEXT[::-1])
    assert codec is Codec.ZSTD


def test_a_probe_that_does_not_shrink_leaves_the_chunk_uncompressed() -> None:
    packer = BlockPacker(Compress.PROBE)
    assert packer.pack(noise(1)) == (noise(1), Codec.NONE)
    assert packer.pack(TEXT) == (TEXT, Codec.NONE)  # the chunk was decided by its probe


def test_a_block_is_compressed_only_when_that_saves_about_3_percent() -> None:
    almost = noise(2)[: BS - BS // 64] + bytes(BS // 64)  # ~1.5 % zeros: zstd saves too little
    packer = BlockPacker(Compress.ON)
    assert packer.pack(almost) == (almost, Codec.NONE)


def test_compression_gives_up_after_blocks_that_do_not_shrink() -> None:
    packer = BlockPacker(Compress.ON)
    for i in range(GIVE_UP_AFTER):
        assert packer.pack(noise(10 + i))[1] is Codec.NONE
    assert packer.pack(TEXT) == (TEXT, Codec.NONE)  # given up for the rest of the chunk


def test_a_block_that_shrinks_resets_the_count() -> None:
    packer = BlockPacker(Compress.ON)
    for i in range(GIVE_UP_AFTER - 1):
        packer.pack(noise(20 + i))
    assert packer.pack(TEXT)[1] is Codec.ZSTD
    for _ in range(GIVE_UP_AFTER - 1):
        packer.pack(os.urandom(BS))
    assert packer.pack(TEXT)[1] is Codec.ZSTD
