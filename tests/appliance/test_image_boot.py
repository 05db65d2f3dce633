"""Smoke test of the built image (``make appliance-test``): boot it in QEMU under TCG as ESXi would
run it (pvscsi, vmxnet3, OVF environment), then check from outside and over admin SSH that systemd
reached multi-user, first boot applied the environment, the target agent is active and answers on its
port, its unit is hardened, and nothing else listens. Takes 2-4 minutes; skipped without an image.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from appliance.image.boot import BootedVM
from pairing.net import pair_with_target
from pairing.protocol import SourcePaired, WrongCode
from vzcommon import keys
from vzcommon.errors import VzrepError
from vzcommon.ssh import asyncssh

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

TOKEN = "smoke-test-token-42"
ENV = """<?xml version="1.0" encoding="UTF-8"?>
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" xmlns:oe="http://schemas.dmtf.org/ovf/environment/1">
  <PropertySection>
    <Property oe:key="vzrep.role" oe:value="target"/>
    <Property oe:key="vzrep.hostname" oe:value="smoke-target"/>
    <Property oe:key="vzrep.dns" oe:value="10.0.2.3, not-an-ip"/>
    <Property oe:key="vzrep.admin_ssh_key" oe:value="{key}"/>
    <Property oe:key="vzrep.pairing_token" oe:value="{token}"/>
  </PropertySection>
</Environment>
"""


async def test_boot_reaches_multi_user_with_the_agent_answering(tmp_path):
    admin = asyncssh.generate_private_key("ssh-ed25519")
    env = tmp_path / "ovfenv.xml"
    env.write_text(ENV.format(key=admin.export_public_key().decode().strip(), token=TOKEN))
    source_key = tmp_path / "id_ed25519"
    client_public, _ = keys.generate(source_key, "smoke-source")
    serial = tmp_path / "serial.log"
    with BootedVM(IMAGE, serial, env) as vm:
        try:
            vm.wait_for_banner("ssh", BOOT_TIMEOUT)
            ssh_up = time.monotonic() - vm.started
            # Act as a source deployed with the same token: the target's auto-pairing pins our key and
            # starts its agent.
            paired = await pair_until_open(vm.ports["pairing"], client_public)
            pairing_closed = await port_closed(vm.ports["pairing"])
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
                console = await sh("systemctl is-active getty@tty1.service; pgrep -a -f appliance.console")
                problems = await sh("cat /etc/vzrep/firstboot-problems.txt")
                hardening = await sh("systemctl show vzrep-target.service -p ProtectSystem -p NoNewPrivileges "
                                     "-p PrivateTmp -p ReadWritePaths -p User -p Restart")
                listening = await sh("ss -H -tln")
                analyze = (await sh("systemd-analyze time")).strip()
                kernel = (await sh("/opt/vzrep/venv/bin/python -c 'from source_agent import native;"
                                   " from source_agent.native import ahead;"
                                   " print(native.kernel_name(), ahead.available())'")).strip()
                qemu_img = (await sh("qemu-img --version")).strip()  # failover makes its deltas with it
            replicated = await replicate_into(vm.ports["agent"], paired.host_key, source_key, tmp_path)
            with pytest.raises(asyncssh.PermissionDenied):  # password logins are refused
                async with asyncssh.connect("127.0.0.1", port=vm.ports["ssh"], username="vzadmin",
                                            password="x", client_keys=None, known_hosts=None,
                                            preferred_auth="password,keyboard-interactive"):
                    pass
        except BaseException:
            print(vm.serial()[-6000:])
            raise
    print(f"\nboot: SSH up after {ssh_up:.0f}s, agent answering after {agent_up:.0f}s under TCG; {analyze}")
    assert pairing_closed, "the pairing port stayed open after pairing"
    assert kernel == "native True", (
        f"the appliance's scan kernel and hash-ahead are {kernel!r}: the wheel lost its compiled part"
    )
    assert replicated in (None, 0), f"vzrep-source pass into the appliance exited {replicated}"
    assert agent == "active", agent_log
    assert qemu_img.startswith("qemu-img version"), "qemu-utils is missing from the image: failover needs it"
    assert banner.startswith(b"SSH-2.0-"), agent_log
    assert multi_user == "active"
    assert state in ("running", "degraded"), state
    assert state == "running", f"failed units: {failed}"
    assert hostname == "smoke-target"
    assert console.startswith("active") and "appliance.console" in console, console
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


async def pair_until_open(port: int, client_public: str, timeout: float = 180) -> SourcePaired:
    """Pair as the source; until the guest's pairing service listens, QEMU accepts and closes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await pair_with_target("127.0.0.1", port, TOKEN, client_public, "smoke-source")
        except WrongCode:
            raise
        except VzrepError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(3)


async def port_closed(port: int, timeout: float = 60) -> bool:
    """True once the guest refuses the port (QEMU's forward then closes the connection at once)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return True
        try:
            data = await asyncio.wait_for(reader.read(1), 5)
        except TimeoutError:
            data = b"?"
        writer.close()
        if data == b"":
            return True
        await asyncio.sleep(2)
    return False


async def replicate_into(agent_port: int, host_key: str, identity: Path, tmp_path: Path) -> int | None:
    """One real `vzrep-source pass` into the appliance over the forwarded agent port (None: no source CLI)."""
    try:
        import source_agent.cli  # noqa: F401
    except ImportError:
        return None
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(keys.known_hosts_line("127.0.0.1", agent_port, host_key) + "\n")
    disk = tmp_path / "disk0.raw"
    with disk.open("wb") as f:
        f.truncate(4 << 20)
        f.seek(1 << 20)
        f.write(os.urandom(128 << 10))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "source_agent.cli", "pass", "--target", f"127.0.0.1:{agent_port}",
        "--identity", str(identity), "--known-hosts", str(known_hosts), "--vm", "smoke", "--disk", f"disk0={disk}",
        "--state-dir", str(tmp_path / "state"), "--no-progress", "--json", cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    print(out.decode()[-2000:])
    return proc.returncode
