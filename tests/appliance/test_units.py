"""The appliance's systemd units, read as the image installs them."""

from __future__ import annotations

import configparser
from pathlib import Path

UNITS = Path(__file__).resolve().parents[2] / "appliance" / "systemd"


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read(UNITS / name)
    return parser


def test_pairing_ends_by_starting_the_agent_never_by_restarting_it() -> None:
    # The agent runs from boot and re-reads authorized_keys per connection. A restart when pairing
    # ends made the appliance boot test flake: the freshly paired source's pass met a closed port.
    post = unit("vzrep-pairing.service")["Service"]["ExecStopPost"]
    assert post.split()[-2:] == ["start", "vzrep-target.service"], post
    target = unit("vzrep-target.service")
    assert "authorized-keys" in target["Service"]["ExecStart"]
    assert "authorized_keys" not in target["Unit"].get("ConditionPathExists", "")  # it runs before pairing


def test_the_target_agent_has_room_for_its_files() -> None:
    """Passes hold a few files per disk and up to 64 connections may be logging in: more than the
    default soft limit of 1024 allows (the audit found the agent out of files, a pass failed)."""
    limit = unit("vzrep-target.service")["Service"]["LimitNOFILE"]
    assert int(limit) >= 16384, limit
