"""The pass report: per disk and in total, as text for people or JSON for scripts."""

from __future__ import annotations

import json
from typing import Any

from .session import PassReport, report_dict


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def totals(report: PassReport) -> dict[str, Any]:
    keys = (
        "bytes_scanned",
        "bytes_read",
        "blocks_changed",
        "blocks_unchanged",
        "zero_blocks_skipped",
        "zero_blocks_sent",
        "payload_raw",
        "payload_wire",
        "wire_bytes",
    )
    out: dict[str, Any] = {k: sum(getattr(d, k) for d in report.disks) for k in keys}
    out["compression_ratio"] = (
        round(out["payload_raw"] / out["payload_wire"], 3) if out["payload_wire"] else 1.0
    )
    out["seconds"] = round(report.seconds, 3)
    out["throughput_mb_s"] = round(out["bytes_scanned"] / report.seconds / 1e6, 1) if report.seconds else 0.0
    out["wire_bytes_sent"] = report.wire_bytes_sent
    out["wire_bytes_received"] = report.wire_bytes_received
    return out


def as_json(report: PassReport, events: list[str] | None = None) -> str:
    data = report_dict(report)
    data["total"] = totals(report)
    data["events"] = list(events or [])
    return json.dumps(data, indent=2)


def as_text(report: PassReport, events: list[str] | None = None) -> str:
    what = {"verify": "verify", "repair": "repair pass"}.get(report.mode, "pass")
    done = "compared, nothing written" if report.mode == "verify" else "committed, generation " + report.generation
    lines = [f"vzrep {what} of VM {report.vm} to {report.target}: {done if report.ok else 'FAILED'}"]
    lines += [f"  {event}" for event in events or []]
    for d in report.disks:
        lines.append(
            f"  disk {d.name} ({human(d.size)}), {d.mode}{' (' + d.reason + ')' if d.reason else ''}, map {d.map_status}"
        )
        lines.append(
            f"    scanned {human(d.bytes_scanned)} (read {human(d.bytes_read)}, {human(d.bytes_skipped_filter)} skipped by filter);"
            f" {d.blocks_changed} blocks changed, {d.blocks_unchanged} unchanged,"
            f" {d.zero_blocks_skipped} zero blocks skipped, {d.zero_blocks_sent} zeroed"
        )
        rate = d.bytes_scanned / d.seconds / 1e6 if d.seconds else 0.0
        lines.append(
            f"    on the wire {human(d.wire_bytes)} (payload {human(d.payload_raw)} -> {human(d.payload_wire)},"
            f" compression {d.compression_ratio:.2f}x); {d.seconds:.2f} s, {rate:.0f} MB/s"
        )
        if report.mode == "verify":
            where = ", ".join(f"{human(o)}+{human(n)}" for o, n in d.differing[:12])
            more = f" and {len(d.differing) - 12} more" if len(d.differing) > 12 else ""
            lines.append(
                f"    verify: {len(d.differing)} range(s) differ{': ' + where + more if d.differing else ''};"
                f" the replica's map was wrong in {d.map_wrong_blocks} block(s)"
            )
        for note in d.notes:
            lines.append(f"    note: {note}")
    t = totals(report)
    lines.append(
        f"  total: scanned {human(t['bytes_scanned'])}, {t['blocks_changed']} blocks changed,"
        f" {t['zero_blocks_skipped']} zero blocks skipped, sent {human(t['wire_bytes_sent'])}"
        f" (received {human(t['wire_bytes_received'])}), compression {t['compression_ratio']:.2f}x,"
        f" {t['seconds']:.2f} s, {t['throughput_mb_s']:.0f} MB/s"
    )
    if report.seconds_limited:
        lines.append(f"  bandwidth limit: the sender was held back {report.seconds_limited:.1f} s")
    if report.scan_kernel == "python":
        lines.append(
            "  note: scanned with the Python kernel, ~1.4x slower (VZREP_SCAN=python is set, or the compiled"
            " kernel was not built: install gcc and reinstall vzrep)"
        )
    if report.error:
        lines.append(f"  error: {report.error}")
    return "\n".join(lines)
