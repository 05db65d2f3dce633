"""The vApp properties of the appliance: one table used by the OVF descriptor and the first-boot parser.

A property's key is what vSphere puts in the OVF environment (``oe:key``); ``qualifiers`` is the OVF
qualifier string vSphere uses to build its deployment form.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VAppProperty:
    key: str
    label: str
    description: str
    category: str
    default: str = ""
    qualifiers: str = ""
    password: bool = False


PROPERTIES: tuple[VAppProperty, ...] = (
    VAppProperty(
        "vzrep.role",
        "Role",
        "source: reads VM disks and sends changes; target: receives them.",
        "Appliance",
        "target",
        'ValueMap{"source","target"}',
    ),
    VAppProperty(
        "vzrep.hostname",
        "Hostname",
        "Host name of this appliance (letters, digits, '-').",
        "Appliance",
        "",
        "MaxLen(63)",
    ),
    VAppProperty(
        "vzrep.admin_password",
        "Admin password",
        "Password of the vzadmin account for the console's shell (SSH is key-only). "
        "Leave empty to keep the account locked.",
        "Appliance",
        "",
        "MaxLen(128)",
        password=True,
    ),
    VAppProperty(
        "vzrep.admin_ssh_key",
        "Admin SSH public key",
        "OpenSSH public key line allowed to log in as vzadmin.",
        "Appliance",
        "",
        "MaxLen(2048)",
    ),
    VAppProperty(
        "vzrep.ip_mode",
        "IP mode",
        "DHCP, or static with the address settings below.",
        "Network",
        "dhcp",
        'ValueMap{"dhcp","static"}',
    ),
    VAppProperty("vzrep.address", "IPv4 address", "Static IPv4 address (static mode only).", "Network"),
    VAppProperty("vzrep.prefix", "Prefix length", "Static network prefix length, e.g. 24.", "Network"),
    VAppProperty("vzrep.gateway", "Gateway", "Default gateway (static mode only).", "Network"),
    VAppProperty("vzrep.dns", "DNS servers", "Comma-separated IP addresses of DNS servers.", "Network"),
    VAppProperty("vzrep.ntp", "NTP servers", "Comma-separated NTP server names or addresses.", "Network"),
    VAppProperty(
        "vzrep.peer", "Peer appliance", "Address of the other appliance (host or host:port).", "Pairing"
    ),
    VAppProperty(
        "vzrep.pairing_token",
        "Pairing token",
        "Same token on both appliances pairs them at first boot (at least 8 characters; "
        "single use, expires 15 minutes after the target starts).",
        "Pairing",
        "",
        "MaxLen(64)",
        password=True,
    ),
    VAppProperty(
        "vzrep.vcenter", "vCenter address", "vCenter or ESXi host name the source reads VMs from.", "vSphere"
    ),
)

KEYS = frozenset(p.key for p in PROPERTIES)
