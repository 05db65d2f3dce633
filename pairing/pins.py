"""The pinned keys of a paired appliance, in the files the agents read.

Target: the source's client key in ``authorized_keys``. Source: the target's host key as a
``[host]:port keytype base64`` line in ``known_hosts``. Both: ``peer.json`` (who, when, fingerprints)
for ``pair-status`` and the console. Pairing replaces any previous pin: one appliance has one peer.
All writes are atomic and durable.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from vzcommon import keys
from vzcommon.durable import atomic_write, unlink_durable


@dataclass(frozen=True)
class PeerRecord:
    role: str  # the peer's role: "source" or "target"
    name: str
    address: str
    public_key: str
    fingerprint: str
    paired_at: float


def pin_source(
    authorized_keys: Path, peer_json: Path, client_key: str, name: str, address: str
) -> PeerRecord:
    """On the target: let exactly this source's client key in."""
    line = keys.check_public(client_key)
    atomic_write(authorized_keys, f"{line} vzrep-source:{_safe(name)}\n".encode(), mode=0o644)
    return _record(peer_json, PeerRecord("source", name, address, line, keys.fingerprint(line), time.time()))


def pin_target(
    known_hosts: Path, peer_json: Path, host: str, agent_port: int, host_key: str, name: str
) -> PeerRecord:
    """On the source: trust exactly this host key for the target's agent port."""
    line = keys.check_public(host_key)
    atomic_write(known_hosts, (keys.known_hosts_line(host, agent_port, line) + "\n").encode(), mode=0o644)
    record = PeerRecord("target", name, f"{host}:{agent_port}", line, keys.fingerprint(line), time.time())
    return _record(peer_json, record)


def unpair(peer_json: Path, *pin_files: Path) -> bool:
    """Forget the peer: empty the pin files and drop peer.json. True if something was pinned."""
    had = peer_json.exists()
    for path in pin_files:
        if path.exists():
            had = had or bool(path.read_text().strip())
            atomic_write(path, b"", mode=0o644)
    unlink_durable(peer_json)
    return had


def load(peer_json: Path) -> PeerRecord | None:
    try:
        data = json.loads(peer_json.read_text())
        return PeerRecord(**{k: data[k] for k in PeerRecord.__dataclass_fields__})
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return None


def _record(peer_json: Path, record: PeerRecord) -> PeerRecord:
    atomic_write(peer_json, (json.dumps(asdict(record), indent=2) + "\n").encode(), mode=0o644)
    return record


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-._" else "_" for ch in name)[:64] or "peer"
