"""First boot writes network, hostname, agent config and keys under a root; bad values never fail it."""

from __future__ import annotations

import json
from pathlib import Path

from appliance import firstboot, netconfig
from appliance.layout import Layout

DATA = Path(__file__).parent / "data"


def test_vsphere_environment_configures_a_static_target(tmp_path):
    assert firstboot.main(["--root", str(tmp_path), "--ovf-env", str(DATA / "ovfenv-vsphere.xml")]) == 0
    layout = Layout(tmp_path)
    network = layout.network_file.read_text()
    assert "Address=10.20.30.41/24" in network and "Gateway=10.20.30.1" in network
    assert "DNS=10.20.30.2" in network and "NTP=ntp1.example.com" in network and "DHCP" not in network
    static, dns, ntp = netconfig.parse_network(network)
    assert static is not None and str(static.interface) == "10.20.30.41/24" and dns == ["10.20.30.2", "10.20.30.3"]
    assert ntp == ["ntp1.example.com", "10.20.30.2"]
    assert (tmp_path / "etc/hostname").read_text() == "dr-target-01\n"
    config = json.loads(layout.appliance_json.read_text())
    assert config["role"] == "target" and config["peer"] == {"host": "10.20.99.7", "port": 2223}
    assert "correct-horse" not in layout.appliance_json.read_text()
    assert layout.role_marker("target").exists() and not layout.role_marker("source").exists()
    assert "VZREP_LISTEN=0.0.0.0:2222" in layout.agent_env.read_text()
    assert layout.host_key.stat().st_mode & 0o777 == 0o600
    assert layout.host_key.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert layout.authorized_keys.read_text() == ""
    assert layout.token_file.read_text() == "correct-horse-battery"
    assert layout.token_file.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "home/vzadmin/.ssh/authorized_keys").read_text().endswith("admin@ops\n")
    assert layout.firstboot_done.exists()
    assert layout.problems.read_text() == ""


def test_garbage_environment_boots_unpaired_with_dhcp(tmp_path, capsys):
    bad = tmp_path / "env.xml"
    bad.write_bytes(b"<Environment><oops")
    root = tmp_path / "root"
    assert firstboot.main(["--root", str(root), "--ovf-env", str(bad)]) == 0
    layout = Layout(root)
    assert "DHCP=yes" in layout.network_file.read_text()
    assert not layout.token_file.exists()
    assert "not well-formed" in layout.problems.read_text()
    assert "not well-formed" in capsys.readouterr().out


def test_source_role_gets_a_client_key_and_empty_known_hosts(tmp_path):
    env = tmp_path / "env.xml"
    env.write_text(
        '<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" '
        'xmlns:oe="http://schemas.dmtf.org/ovf/environment/1"><PropertySection>'
        '<Property oe:key="vzrep.role" oe:value="source"/>'
        '<Property oe:key="vzrep.ip_mode" oe:value="static"/>'
        '<Property oe:key="vzrep.address" oe:value="10.1.1.300"/>'
        "</PropertySection></Environment>"
    )
    root = tmp_path / "root"
    firstboot.main(["--root", str(root), "--ovf-env", str(env)])
    layout = Layout(root)
    assert layout.identity.exists() and not layout.host_key.exists()
    assert layout.known_hosts.read_text() == ""
    assert layout.role_marker("source").exists()
    assert "DHCP=yes" in layout.network_file.read_text()
    assert "vzrep.address" in layout.problems.read_text()
    # Running again (e.g. the console re-applies) keeps the existing key.
    key = layout.identity.read_bytes()
    firstboot.apply(firstboot.ovfenv.parse(env.read_bytes()).settings, (), layout)
    assert layout.identity.read_bytes() == key
