"""The OVF environment parser on real-shaped documents: good, missing, malformed and hostile."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from appliance import ovfenv
from appliance.ovfenv import Peer, Role

DATA = Path(__file__).parent / "data"
HEAD = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" '
    'xmlns:oe="http://schemas.dmtf.org/ovf/environment/1"><PropertySection>'
)
TAIL = "</PropertySection></Environment>"


def env(**props: str) -> bytes:
    body = "".join(f'<Property oe:key="vzrep.{k}" oe:value="{v}"/>' for k, v in props.items())
    return (HEAD + body + TAIL).encode()


def test_vsphere_document_is_fully_understood():
    result = ovfenv.parse((DATA / "ovfenv-vsphere.xml").read_bytes())
    s = result.settings
    assert result.problems == () and result.found
    assert s.role is Role.TARGET and s.hostname == "dr-target-01"
    assert s.static is not None
    assert s.static.interface == ipaddress.IPv4Interface("10.20.30.41/24")
    assert str(s.static.gateway) == "10.20.30.1"
    assert [str(d) for d in s.dns] == ["10.20.30.2", "10.20.30.3"]
    assert s.ntp == ("ntp1.example.com", "10.20.30.2")
    assert s.peer == Peer("10.20.99.7", None)
    assert s.pairing_token == "correct-horse-battery"
    assert s.vcenter == "vcenter.example.com"
    assert s.admin_password == "S3cret pass!"
    assert s.admin_ssh_key is not None and s.admin_ssh_key.endswith("admin@ops")
    assert "correct-horse" not in repr(s) and "S3cret" not in repr(s)


def test_no_environment_means_dhcp_target_unpaired():
    result = ovfenv.parse(None)
    assert result.settings == ovfenv.Settings() and not result.found
    assert "no OVF environment" in result.problems[0]


def test_missing_properties_take_defaults():
    result = ovfenv.parse(env(role="source"))
    assert result.problems == ()
    assert result.settings == ovfenv.Settings(role=Role.SOURCE)


@pytest.mark.parametrize(
    "document",
    [
        b"",
        b"<Environment",
        b"<?xml version='1.0'?><foo/>",
        b"\xff\xfe garbage",
        HEAD.encode(),
    ],
)
def test_malformed_xml_falls_back(document):
    result = ovfenv.parse(document)
    assert result.settings == ovfenv.Settings()
    assert "DHCP" in result.problems[0]


def test_entities_and_huge_documents_are_refused():
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'
        b"<Environment>&lol2;</Environment>"
    )
    assert "DTD" in ovfenv.parse(bomb).problems[0]
    xxe = b'<?xml version="1.0"?><!doctype x [<!entity e SYSTEM "file:///etc/passwd">]><x>&e;</x>'
    assert "DTD" in ovfenv.parse(xxe).problems[0]
    big = env(hostname="a" * (ovfenv.MAX_DOCUMENT + 1))
    assert "larger than" in ovfenv.parse(big).problems[0]


@pytest.mark.parametrize(
    ("props", "fragment"),
    [
        ({"ip_mode": "static", "address": "10.0.0.300", "prefix": "24"}, "vzrep.address"),
        ({"ip_mode": "static", "address": "10.0.0.5", "prefix": "33"}, "prefix length"),
        ({"ip_mode": "static", "address": "10.0.0.0", "prefix": "24"}, "network or broadcast"),
        ({"ip_mode": "static", "address": "10.0.0.5", "prefix": "24", "gateway": "10.9.0.1"}, "not a host in"),
        ({"ip_mode": "static", "address": "10.0.0.5", "prefix": "24", "gateway": "nope"}, "vzrep.gateway"),
        ({"ip_mode": "manual"}, "vzrep.ip_mode"),
    ],
)
def test_bad_network_values_fall_back_to_dhcp(props, fragment):
    result = ovfenv.parse(env(**props))
    assert result.settings.static is None
    assert any(fragment in p and "DHCP" in p for p in result.problems), result.problems


def test_hostile_values_are_rejected_and_sanitised_in_reports():
    result = ovfenv.parse(
        env(
            hostname="x;rm -rf /",
            role="root&#10;",
            dns="1.1.1.1,$(reboot)",
            ntp="pool.ntp.org,`id`",
            peer="evil host:99999",
            vcenter="vc&#10;Address=1.2.3.4",
            admin_ssh_key="ssh-ed25519 AAAA&#10;command=&quot;sh&quot;",
            admin_password="a&#10;b",
            pairing_token="short",
        )
    )
    s = result.settings
    assert s.hostname is None and s.role is Role.TARGET
    assert [str(d) for d in s.dns] == ["1.1.1.1"] and s.ntp == ("pool.ntp.org",)
    assert s.peer is None and s.vcenter is None and s.admin_ssh_key is None
    assert s.admin_password is None and s.pairing_token is None
    assert len(result.problems) >= 9
    for problem in result.problems:
        assert "\n" not in problem and problem.isprintable()


def test_source_token_without_peer_stays_unpaired():
    result = ovfenv.parse(env(role="source", pairing_token="correct-horse-battery"))
    assert result.settings.pairing_token is None
    assert any("vzrep.peer" in p for p in result.problems)


def test_unknown_vzrep_property_is_reported():
    assert "unknown property" in ovfenv.parse(env(colour="blue")).problems[0]


@pytest.mark.parametrize(
    ("value", "peer"),
    [
        ("dr.example.com", Peer("dr.example.com")),
        ("10.0.0.9:2300", Peer("10.0.0.9", 2300)),
        ("[fd00::9]:2300", Peer("fd00::9", 2300)),
        ("fd00::9", Peer("fd00::9")),
        ("host:0", None),
        ("[fd00::9", None),
        ("-bad-.example", None),
    ],
)
def test_parse_peer(value, peer):
    assert ovfenv.parse_peer(value) == peer


def test_unknown_xml_encoding_falls_back():
    """Found by fuzzing (fuzz/corpus/ovfenv/crash-unknown-encoding): expat's LookupError escaped parse()."""
    result = ovfenv.parse(b'<?xml version="1.0" encoding="UPF-8"?><Environment/>')
    assert result.settings == ovfenv.Settings() and not result.found
    assert "unknown encoding" in result.problems[0] and "UPF-8" in result.problems[0]


@pytest.mark.parametrize("port", ["\u00b2", "9" * 5000, "022222"])
def test_peer_port_that_int_cannot_take_is_refused(port):
    """'²' passes str.isdigit() and 5000 digits pass it too; int() then raised ValueError out of
    parse() (fuzz/corpus/ovfenv/crash-peer-port). Now the peer is refused and the appliance boots."""
    assert ovfenv.parse_peer(f"host:{port}") is None
    result = ovfenv.validate({"vzrep.peer": f"host:{port}"})
    assert result.settings.peer is None and "vzrep.peer" in result.problems[0]


def test_prefix_that_int_cannot_take_falls_back_to_dhcp():
    props = {"vzrep.ip_mode": "static", "vzrep.address": "10.0.0.5", "vzrep.prefix": "\u00b2"}
    result = ovfenv.validate(props)
    assert result.settings.static is None
    assert "prefix length must be a number from 1 to 32" in result.problems[0]


@pytest.mark.parametrize("bom, codec", [(b"", "utf-16"), (b"\xfe\xff", "utf-16-be")], ids=["le", "be"])
def test_dtd_in_utf16_is_refused(bom, codec):
    """Found by review of the fuzz target: the DTD check looked for b'<!DOCTYPE' in the bytes, so a
    UTF-16 document had its entities expanded into property values."""
    doc = (
        '<?xml version="1.0" encoding="UTF-16"?>\n'
        '<!DOCTYPE Environment [<!ENTITY a "xxxxxxxxxx"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>\n'
        f'<Environment xmlns="{ovfenv.OE}" xmlns:oe="{ovfenv.OE}"><PropertySection>'
        '<Property oe:key="vzrep.hostname" oe:value="&b;"/></PropertySection></Environment>'
    )
    result = ovfenv.parse(bom + doc.encode(codec))
    assert not result.found and result.settings == ovfenv.Settings()
    assert "contains a DTD" in result.problems[0]
