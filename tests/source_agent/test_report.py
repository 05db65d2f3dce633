"""The pass report: sizes for people, totals, the JSON shape scripts rely on, and the text."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from source_agent.pipeline import DiskStats
from source_agent.report import as_json, as_text, human, totals
from source_agent.session import PassReport

GiB = 1 << 30


def sample(*, ok: bool = True, kernel: str = "native") -> PassReport:
    sys_disk = DiskStats(
        name="sys",
        size=GiB,
        mode="differential",
        bytes_scanned=GiB,
        bytes_read=GiB // 2,
        bytes_skipped_filter=0,
        blocks_total=16384,
        blocks_changed=100,
        blocks_unchanged=16000,
        zero_blocks_skipped=280,
        zero_blocks_sent=4,
        payload_raw=100 * 65536,
        payload_wire=50 * 65536,
        blocks_compressed=90,
        wire_bytes=50 * 65536 + 3000,
        map_status="cached",
        hashed_ahead=True,
        seconds=2.0,
        notes=["replica grew"],
    )
    data_disk = DiskStats(
        name="data",
        size=4 * GiB,
        mode="abm",
        reason="ext4 parsed",
        bytes_scanned=GiB,
        bytes_read=GiB,
        bytes_skipped_filter=3 * GiB,
        blocks_total=65536,
        blocks_changed=16384,
        zero_blocks_skipped=0,
        zero_blocks_sent=0,
        payload_raw=GiB,
        payload_wire=GiB,
        wire_bytes=GiB + 200000,
        map_status="empty",
        seconds=3.0,
    )
    return PassReport(
        vm="web01",
        target="dr:2222",
        generation="g7" if ok else "",
        ok=ok,
        error="" if ok else "the target could not write: No space left on device",
        exit_code=0 if ok else 9,
        disks=[sys_disk, data_disk],
        seconds=5.5,
        wire_bytes_sent=GiB + 50 * 65536 + 203000 + 1000,
        wire_bytes_received=4 * 65536 * 32 // 1024,
        scan_kernel=kernel,
    )


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (10 * 1024 * 1024, "10.0 MiB"),
        (GiB + GiB // 4, "1.2 GiB"),  # 1.25, rounded half to even
        (3 << 40, "3.0 TiB"),
        (2048 << 40, "2048.0 TiB"),  # TiB is the largest unit
        (-2048, "-2.0 KiB"),
    ],
)
def test_human_sizes(n: int, text: str) -> None:
    assert human(n) == text


_UNITS = {"B": 0, "KiB": 1, "MiB": 2, "GiB": 3, "TiB": 4}


@given(st.integers(0, 1 << 60))
def test_human_is_the_size_in_the_largest_unit_it_reaches(n: int) -> None:
    m = re.fullmatch(r"(\d+(?:\.\d)?) (B|KiB|MiB|GiB|TiB)", human(n))
    assert m, human(n)
    k = _UNITS[m.group(2)]
    unit = 1024**k
    assert abs(float(m.group(1)) * unit - n) <= 0.05 * unit * (1 + 1e-9)  # one decimal, rounded (half: either way)
    assert n >= unit or n == 0  # never a fraction of a unit ...
    assert k == 4 or n < 1024 ** (k + 1)  # ... and never a larger one than needed
    assert (k == 0) == ("." not in m.group(1))  # bytes are whole


def test_totals_sum_the_disks_and_derive_the_rates() -> None:
    r = sample()
    t = totals(r)
    a, b = r.disks
    for key in (
        "bytes_scanned",
        "bytes_read",
        "blocks_changed",
        "blocks_unchanged",
        "zero_blocks_skipped",
        "zero_blocks_sent",
        "payload_raw",
        "payload_wire",
        "wire_bytes",
    ):
        assert t[key] == getattr(a, key) + getattr(b, key), key
    assert t["compression_ratio"] == round((100 * 65536 + GiB) / (50 * 65536 + GiB), 3)
    assert t["seconds"] == 5.5
    assert t["throughput_mb_s"] == round(2 * GiB / 5.5 / 1e6, 1) == 390.5
    assert (t["wire_bytes_sent"], t["wire_bytes_received"]) == (r.wire_bytes_sent, r.wire_bytes_received)


def test_totals_of_a_pass_that_sent_nothing() -> None:
    t = totals(PassReport(vm="v", target="t:1", disks=[DiskStats(name="d")], scan_kernel="native"))
    assert t["compression_ratio"] == 1.0 and t["throughput_mb_s"] == 0.0 and t["bytes_scanned"] == 0


def test_json_shape() -> None:
    r = sample()
    data = json.loads(as_json(r, ["resumed after a crash"]))
    disk_fields = {f.name for f in dataclasses.fields(DiskStats)}
    assert set(data) == {
        "vm",
        "target",
        "generation",
        "ok",
        "error",
        "exit_code",
        "disks",
        "seconds",
        "wire_bytes_sent",
        "wire_bytes_received",
        "failed_over",
        "failover_note",
        "mode",
        "resumed",
        "restarted",
        "seconds_limited",
        "scan_kernel",
        "total",
        "events",
    }
    assert (data["vm"], data["target"], data["generation"], data["ok"]) == ("web01", "dr:2222", "g7", True)
    assert (data["exit_code"], data["error"], data["scan_kernel"]) == (0, "", "native")
    assert data["events"] == ["resumed after a crash"]
    assert data["total"] == totals(r)
    assert [d["name"] for d in data["disks"]] == ["sys", "data"]
    for d, st_ in zip(data["disks"], r.disks, strict=True):
        assert set(d) == disk_fields | {"compression_ratio", "throughput_mb_s"}
        assert {k: d[k] for k in disk_fields} == dataclasses.asdict(st_)
        assert d["compression_ratio"] == round(st_.compression_ratio, 3)
        assert d["throughput_mb_s"] == round(st_.bytes_scanned / st_.seconds / 1e6, 1)
    assert data["disks"][0]["hashed_ahead"] is True and data["disks"][0]["compression_ratio"] == 2.0
    assert data["disks"][1]["throughput_mb_s"] == 357.9
    assert json.loads(as_json(r))["events"] == []


def test_text_for_people() -> None:
    lines = as_text(sample(), ["resumed after a crash"]).splitlines()
    assert lines == [
        "vzrep pass of VM web01 to dr:2222: committed, generation g7",
        "  resumed after a crash",
        "  disk sys (1.0 GiB), differential, map cached",
        "    scanned 1.0 GiB (read 512.0 MiB, 0 B skipped by filter); 100 blocks changed, 16000 unchanged,"
        " 280 zero blocks skipped, 4 zeroed",
        "    on the wire 3.1 MiB (payload 6.2 MiB -> 3.1 MiB, compression 2.00x); 2.00 s, 537 MB/s",
        "    note: replica grew",
        "  disk data (4.0 GiB), abm (ext4 parsed), map empty",
        "    scanned 1.0 GiB (read 1.0 GiB, 3.0 GiB skipped by filter); 16384 blocks changed, 0 unchanged,"
        " 0 zero blocks skipped, 0 zeroed",
        "    on the wire 1.0 GiB (payload 1.0 GiB -> 1.0 GiB, compression 1.00x); 3.00 s, 358 MB/s",
        "  total: scanned 2.0 GiB, 16484 blocks changed, 280 zero blocks skipped, sent 1.0 GiB"
        " (received 8.0 KiB), compression 1.00x, 5.50 s, 390 MB/s",
    ]


def test_text_of_a_failed_pass_and_the_python_kernel() -> None:
    text = as_text(sample(ok=False, kernel="python"))
    lines = text.splitlines()
    assert lines[0] == "vzrep pass of VM web01 to dr:2222: FAILED"
    assert "generation" not in lines[0]
    assert lines[-1] == "  error: the target could not write: No space left on device"
    assert lines[-2].startswith("  note: scanned with the Python kernel, ~1.4x slower")
    assert "Python kernel" not in as_text(sample())
    assert "error:" not in as_text(sample())
