"""JSON state records: magic, version and checksum are all checked before a body is trusted."""

from __future__ import annotations

import json
import zlib

import pytest

from vzcommon.errors import IntegrityError
from vzcommon.records import RECORD_VERSION, dump_record, load_record


def test_round_trip() -> None:
    body = {"state": "active", "disks": ["a", "b"], "n": 3}
    assert load_record(dump_record("vzrep-journal", body), "vzrep-journal", "x") == body


def test_wrong_magic_is_refused() -> None:
    with pytest.raises(IntegrityError, match="not a valid vzrep-status file"):
        load_record(dump_record("vzrep-journal", {}), "vzrep-status", "x")


def test_a_flipped_body_byte_fails_the_checksum() -> None:
    raw = dump_record("m", {"state": "active"}).replace(b"active", b"activf")
    with pytest.raises(IntegrityError, match="fails its checksum"):
        load_record(raw, "m", "x")


def test_a_newer_version_is_refused_with_a_message_naming_both() -> None:
    """A record of another layout version is never half-understood, even with a valid checksum."""
    raw = dump_record("m", {"state": "committed"}, version=RECORD_VERSION + 1)
    outer = json.loads(raw)
    payload = json.dumps(outer["body"], sort_keys=True, separators=(",", ":"))
    assert outer["crc32"] == zlib.crc32(f"m:{RECORD_VERSION + 1}:{payload}".encode())  # checksum is valid
    with pytest.raises(
        IntegrityError, match=rf"version {RECORD_VERSION + 1}; this vzrep reads version {RECORD_VERSION}"
    ):
        load_record(raw, "m", "x")


@pytest.mark.parametrize(
    "raw", [b"", b"{", b"[]", b'{"magic": "m"}', b'{"magic":"m","version":1,"body":[],"crc32":0}']
)
def test_garbage_is_an_integrity_error(raw: bytes) -> None:
    with pytest.raises(IntegrityError):
        load_record(raw, "m", "x")


def test_deeply_nested_json_is_corrupt_not_a_crash() -> None:
    """json.loads raised RecursionError on '[[[[...' (fuzz/corpus/record/crash-deep-nesting)."""
    with pytest.raises(IntegrityError, match="is not a valid"):
        load_record(b"[" * 100_000, "vzrep-journal", "journal")
