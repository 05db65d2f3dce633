"""systemd-networkd configuration for the appliance's one Ethernet port (rendering only, no I/O)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from appliance.ovfenv import StaticIPv4

NETWORK_FILE = "etc/systemd/network/10-vzrep.network"


def render_network(
    static: StaticIPv4 | None,
    dns: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
    ntp: Sequence[str] = (),
) -> str:
    """A ``.network`` file matching every Ethernet port: DHCP when ``static`` is None."""
    lines = [
        "# Written by vzrep (first boot or console); the console's network page edits it.",
        "[Match]",
        "Type=ether",
        "",
        "[Network]",
    ]
    if static is None:
        lines.append("DHCP=yes")
    else:
        lines.append(f"Address={static.interface.with_prefixlen}")
        if static.gateway is not None:
            lines.append(f"Gateway={static.gateway}")
    lines += [f"DNS={server}" for server in dns]
    lines += [f"NTP={server}" for server in ntp]
    if static is None and dns:
        lines += ["", "[DHCPv4]", "UseDNS=no"]
    return "\n".join(lines) + "\n"


def parse_network(text: str) -> tuple[StaticIPv4 | None, list[str], list[str]]:
    """Read back what :func:`render_network` wrote (for the console's current settings)."""
    address = gateway = None
    dns: list[str] = []
    ntp: list[str] = []
    for raw in text.splitlines():
        key, sep, value = raw.partition("=")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "Address":
            address = value
        elif key == "Gateway":
            gateway = value
        elif key == "DNS":
            dns.append(value)
        elif key == "NTP":
            ntp.append(value)
    static = None
    if address:
        static = StaticIPv4(
            ipaddress.IPv4Interface(address), ipaddress.IPv4Address(gateway) if gateway else None
        )
    return static, dns, ntp
