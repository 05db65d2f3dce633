"""Smoke test of the built image (``make appliance-test``): boot it in QEMU under TCG as ESXi would
run it (pvscsi, vmxnet3, OVF environment), then check from outside and over admin SSH that systemd
reached multi-user, first boot applied the environment, the target agent is active and answers on its
port, its unit is hardened, and nothing else listens. Takes 2-4 minutes; skipped without an image.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import asyncssh
import pytest

from appliance.image.boot import BootedVM

REPO = Path(__file__).resolve().parents[2]
# Opt-in: `make appliance-test` sets VZREP_APPLIANCE_IMAGE, so `make test` never boots a stale image.
IMAGE = Path(os.environ.get("VZREP_APPLIANCE_IMAGE", ""))
BOOT_TIMEOUT = float(os.environ.get("VZREP_BOOT_TIMEOUT", "600"))

pytestmark = [
    pytest.mark.appliance,
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("VZREP_APPLIANCE_IMAGE") or not IMAGE.is_file(),
        reason="boots the appliance image for minutes: run `make appliance-test`",
    ),
]

ENV = """<?xml version="1.0" encoding="UTF-8"?>
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" xmlns:oe="http://schemas.dmtf.org/ovf/environment/1">
  <PropertySection>
    <Property oe:key="vzrep.role" oe:value="target"/>
    <Property oe:key="vzrep.hostname" oe:value="smoke-target"/>
    <Property oe:key="vzrep.dns" oe:value="10.0.2.3, not-an-ip"/>
    <Property oe:key="vzrep.admin_ssh_key" oe:value="{key}"/>
  </PropertySection>
</Environment>
"""


async def test_boot_reaches_multi_user_with_the_agent_answering(tmp_path):
    admin = asyncssh.generate_private_key("ssh-ed25519")
    env = tmp_path / "ovfenv.xml"
    env.write_text(ENV.format(key=admin.export_public_key().decode().strip()))
    serial = tmp_path / "serial.log"
    with BootedVM(IMAGE, serial, env) as vm:
        try:
            vm.wait_for_banner("ssh", BOOT_TIMEOUT)
            ssh_up = time.monotonic() - vm.started
            try:
                banner = vm.wait_for_banner("agent", 120)
            except TimeoutError:
                banner = b""
            agent_up = time.monotonic() - vm.started
            async with asyncssh.connect("127.0.0.1", port=vm.ports["ssh"], username="vzadmin", client_keys=[admin],
                                        known_hosts=None, connect_timeout=60) as conn:

                async def sh(cmd: str) -> str:
                    return (await conn.run(cmd, check=False, timeout=180)).stdout or ""

                state = (await sh("systemctl is-system-running --wait")).strip()
                failed = await sh("systemctl --failed --no-legend --plain")
                multi_user = (await sh("systemctl is-active multi-user.target")).strip()
                agent = (await sh("systemctl is-active vzrep-target.service")).strip()
                agent_log = await sh("systemctl status --no-pager -n 40 vzrep-target.service 2>&1")
                hostname = (await sh("hostname")).strip()
                problems = await sh("cat /etc/vzrep/firstboot-problems.txt")
                hardening = await sh("systemctl show vzrep-target.service -p ProtectSystem -p NoNewPrivileges "
                                     "-p PrivateTmp -p ReadWritePaths -p User -p Restart")
                listening = await sh("ss -H -tln")
                analyze = (await sh("systemd-analyze time")).strip()
            with pytest.raises(asyncssh.PermissionDenied):  # password logins are refused
                async with asyncssh.connect("127.0.0.1", port=vm.ports["ssh"], username="vzadmin",
                                            password="x", client_keys=None, known_hosts=None,
                                            preferred_auth="password,keyboard-interactive"):
                    pass
        except BaseException:
            print(vm.serial()[-6000:])
            raise
    print(f"\nboot: SSH up after {ssh_up:.0f}s, agent answering after {agent_up:.0f}s under TCG; {analyze}")
    assert agent == "active", agent_log
    assert banner.startswith(b"SSH-2.0-"), agent_log
    assert multi_user == "active"
    assert state in ("running", "degraded"), state
    assert state == "running", f"failed units: {failed}"
    assert hostname == "smoke-target"
    assert "not-an-ip" in problems
    for expected in ("ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes",
                     "ReadWritePaths=/var/lib/vzrep/data", "User=vzrep", "Restart=on-failure"):
        assert expected in hardening
    exposed = set()
    for line in listening.splitlines():
        local = line.split()[3]
        host, _, port = local.rpartition(":")
        if not host.startswith(("127.", "[::1]", "[::ffff:127.")):
            exposed.add(int(port))
    assert exposed <= {22, 2222, 2223}, listening
