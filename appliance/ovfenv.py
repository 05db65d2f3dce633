"""Parse and validate the OVF environment that vSphere hands the appliance at deployment.

Pure functions, no I/O: :func:`parse` turns the XML document into :class:`Settings` and a list of
problems. A bad value never raises: it is reported and replaced by the safe fallback (DHCP,
unpaired), because an appliance that does not boot cannot be fixed from its console.
Untrusted input: the document is size-limited and any DTD (entities) is refused before parsing.
"""

from __future__ import annotations

import ipaddress
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from appliance.properties import KEYS

MAX_DOCUMENT = 256 * 1024
OE = "http://schemas.dmtf.org/ovf/environment/1"
_HOSTNAME = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_DNS_NAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
_SSH_KEY = re.compile(
    r"^(ssh-ed25519|ecdsa-sha2-nistp(256|384|521)|ssh-rsa) [A-Za-z0-9+/]+={0,3}( [\x21-\x7e ]{0,200})?$"
)
MIN_TOKEN = 8


class Role(StrEnum):
    SOURCE = "source"
    TARGET = "target"


@dataclass(frozen=True)
class StaticIPv4:
    interface: ipaddress.IPv4Interface
    gateway: ipaddress.IPv4Address | None


@dataclass(frozen=True)
class Peer:
    host: str
    port: int | None = None


@dataclass(frozen=True)
class Settings:
    role: Role = Role.TARGET
    hostname: str | None = None
    static: StaticIPv4 | None = None  # None means DHCP
    dns: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    ntp: tuple[str, ...] = ()
    peer: Peer | None = None
    pairing_token: str | None = field(default=None, repr=False)
    vcenter: str | None = None
    admin_password: str | None = field(default=None, repr=False)
    admin_ssh_key: str | None = None


@dataclass(frozen=True)
class Result:
    settings: Settings
    problems: tuple[str, ...]
    found: bool  # an OVF environment document was present and parsed


def _printable(value: str) -> str:
    """A value as it may appear in a log line: no control characters, bounded length."""
    clean = "".join(ch if ch.isprintable() else "?" for ch in value)
    return clean if len(clean) <= 60 else clean[:57] + "..."


class _RefuseDtd(ET.TreeBuilder):
    """A tree builder that stops at a DOCTYPE, in whatever encoding the document is written."""

    def doctype(self, name: str, pubid: str | None, system: str | None) -> None:
        raise ValueError("the OVF environment contains a DTD, which is not allowed")


def extract_properties(document: bytes) -> dict[str, str]:
    """The ``oe:key`` -> ``oe:value`` pairs of the PropertySection; raises ValueError on bad XML."""
    if len(document) > MAX_DOCUMENT:
        raise ValueError(f"the OVF environment is larger than {MAX_DOCUMENT} bytes")
    if b"<!DOCTYPE" in document.upper() or b"<!ENTITY" in document.upper():
        raise ValueError("the OVF environment contains a DTD, which is not allowed")
    parser = ET.XMLParser(target=_RefuseDtd())  # the byte check above misses UTF-16 and friends
    try:
        parser.feed(document)
        root = parser.close()
    except ET.ParseError as exc:
        raise ValueError(f"the OVF environment is not well-formed XML: {exc}") from None
    except LookupError as exc:  # an XML declaration naming an encoding Python does not know (fuzzing)
        raise ValueError(f"the OVF environment names an unknown encoding: {_printable(str(exc))}") from None
    if root.tag != f"{{{OE}}}Environment":
        raise ValueError(f"the document is not an OVF environment (root element {_printable(root.tag)})")
    props: dict[str, str] = {}
    for prop in root.iter(f"{{{OE}}}Property"):
        key = prop.get(f"{{{OE}}}key")
        value = prop.get(f"{{{OE}}}value", "")
        if key is not None:
            props[key] = value
    return props


def parse(document: bytes | None) -> Result:
    """Settings from an OVF environment document (``None``: no environment, all defaults)."""
    if document is None:
        return Result(Settings(), ("no OVF environment found: using DHCP, role target, unpaired",), False)
    try:
        props = extract_properties(document)
    except ValueError as exc:
        return Result(Settings(), (f"{exc}: using DHCP, role target, unpaired",), False)
    return validate(props)


def validate(props: dict[str, str]) -> Result:
    problems: list[str] = []

    def get(key: str) -> str:
        return props.get(key, "").strip()

    def bad(key: str, why: str, fallback: str) -> None:
        problems.append(f"{key}={_printable(props.get(key, ''))!r} is invalid ({why}); {fallback}")

    for key in sorted(set(props) - KEYS):
        if key.startswith("vzrep."):
            problems.append(f"unknown property {_printable(key)!r} ignored")

    role = Role.TARGET
    if raw_role := get("vzrep.role"):
        try:
            role = Role(raw_role.lower())
        except ValueError:
            bad("vzrep.role", "expected source or target", "using target")

    hostname = None
    if raw_host := get("vzrep.hostname"):
        if _HOSTNAME.match(raw_host):
            hostname = raw_host.lower()
        else:
            bad("vzrep.hostname", "letters, digits and '-' only, at most 63", "keeping the default name")

    static = _static(get, bad)
    dns = []
    for item in filter(None, (s.strip() for s in get("vzrep.dns").split(","))):
        try:
            dns.append(ipaddress.ip_address(item))
        except ValueError:
            bad("vzrep.dns", f"{_printable(item)!r} is not an IP address", "ignoring that server")
    ntp = []
    for item in filter(None, (s.strip() for s in get("vzrep.ntp").split(","))):
        if _is_host(item):
            ntp.append(item)
        else:
            bad("vzrep.ntp", f"{_printable(item)!r} is not a host name or address", "ignoring that server")

    peer = None
    if raw_peer := get("vzrep.peer"):
        peer = parse_peer(raw_peer)
        if peer is None:
            bad("vzrep.peer", "expected host or host:port", "the appliance stays unpaired")

    token = None
    if raw_token := get("vzrep.pairing_token"):
        if len(raw_token) >= MIN_TOKEN and raw_token.isprintable() and len(raw_token) <= 64:
            token = raw_token
        else:
            problems.append(
                "vzrep.pairing_token is invalid (8 to 64 printable characters); the appliance stays unpaired"
            )
    if token and role is Role.SOURCE and peer is None:
        problems.append("a pairing token needs vzrep.peer on the source; the appliance stays unpaired")
        token = None

    vcenter = None
    if raw_vc := get("vzrep.vcenter"):
        if _is_host(raw_vc):
            vcenter = raw_vc
        else:
            bad("vzrep.vcenter", "not a host name or address", "leaving vCenter unset")

    password = props.get("vzrep.admin_password") or None
    if password is not None and (len(password) > 128 or not password.isprintable()):
        problems.append(
            "vzrep.admin_password is invalid (at most 128 printable characters); "
            "the vzadmin account stays locked"
        )
        password = None
    ssh_key = None
    if raw_key := get("vzrep.admin_ssh_key"):
        if _SSH_KEY.match(raw_key):
            ssh_key = raw_key
        else:
            bad("vzrep.admin_ssh_key", "not an OpenSSH public key line", "no SSH key installed")

    settings = Settings(
        role=role,
        hostname=hostname,
        static=static,
        dns=tuple(dns),
        ntp=tuple(ntp),
        peer=peer,
        pairing_token=token,
        vcenter=vcenter,
        admin_password=password,
        admin_ssh_key=ssh_key,
    )
    return Result(settings, tuple(problems), True)


def _static(getter: Callable[[str], str], report: Callable[[str, str, str], None]) -> StaticIPv4 | None:
    mode = getter("vzrep.ip_mode").lower() or "dhcp"
    if mode == "dhcp":
        return None
    if mode != "static":
        report("vzrep.ip_mode", "expected dhcp or static", "using DHCP")
        return None
    try:
        interface = parse_interface(getter("vzrep.address"), getter("vzrep.prefix"))
    except ValueError as exc:
        report("vzrep.address", str(exc), "using DHCP")
        return None
    gateway = None
    if raw_gw := getter("vzrep.gateway"):
        try:
            gateway = ipaddress.IPv4Address(raw_gw)
        except ValueError:
            report("vzrep.gateway", "not an IPv4 address", "using DHCP")
            return None
        if gateway not in interface.network or gateway == interface.ip:
            report("vzrep.gateway", f"not a host in {interface.network}", "using DHCP")
            return None
    return StaticIPv4(interface, gateway)


def parse_interface(address: str, prefix: str) -> ipaddress.IPv4Interface:
    """``10.0.0.5`` + ``24`` (or ``10.0.0.5/24`` + ``""``) -> an interface; ValueError says why not."""
    if "/" in address and not prefix:
        address, prefix = address.split("/", 1)
    if not (prefix.isascii() and prefix.isdigit() and len(prefix) <= 2) or not 1 <= int(prefix) <= 32:
        raise ValueError("the prefix length must be a number from 1 to 32")
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        raise ValueError("not an IPv4 address") from None
    interface = ipaddress.IPv4Interface(f"{ip}/{prefix}")
    if ip.is_multicast or ip.is_unspecified or ip.is_loopback:
        raise ValueError("not a usable host address")
    if int(prefix) < 31 and ip in (interface.network.network_address, interface.network.broadcast_address):
        raise ValueError("the network or broadcast address is not a host address")
    return interface


def _is_host(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return bool(_DNS_NAME.match(value))


def parse_peer(value: str) -> Peer | None:
    """``host``, ``host:port`` or ``[v6]:port``; None if it is neither."""
    value = value.strip()
    host, port = value, None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                return None
            port = rest[1:]
    elif value.count(":") == 1:
        host, port = value.split(":")
    # isdigit() alone admits '²' and 5000-digit strings, on which int() raises (found writing the fuzz harness)
    if port is not None and (
        not (port.isascii() and port.isdigit() and len(port) <= 5) or not 1 <= int(port) <= 65535
    ):
        return None
    if not _is_host(host):
        return None
    return Peer(host, int(port) if port is not None else None)
