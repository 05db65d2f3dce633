"""Smoke test of the built image (``make appliance-test``): boot it in QEMU under TCG as ESXi would
run it (pvscsi, vmxnet3, OVF environment), then check from outside and over admin SSH that systemd
reached multi-user, first boot applied the environment, the target agent is active and answers on its
port, its unit is hardened, and nothing else listens. Then boot it again as a source: it pairs by
itself with a target agent on this host (QEMU's user network shows the host as 10.0.2.2), and once an
admin puts a job file in place its scheduler replicates on schedule with nobody typing a pass.
Takes 4-8 minutes; skipped without an image.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import pytest

from appliance.image.boot import BootedVM, free_port
from pairing.net import pair_with_target
from pairing.protocol import SourcePaired, WrongCode
from tests.appliance.test_ovfenv import env as ovf_env
from tests.support.tools import make_image, qemu_compare
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


async def test_boot_reaches_multi_user_with_the_agent_answering(tmp_path):
    admin = asyncssh.generate_private_key("ssh-ed25519")
    env = tmp_path / "ovfenv.xml"
    env.write_bytes(ovf_env(role="target", hostname="smoke-target", dns="10.0.2.3, not-an-ip",
                            admin_ssh_key=admin.export_public_key().decode().strip(), pairing_token=TOKEN))  # fmt: skip
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
                scheduler = (await sh("systemctl is-active vzrep-source.service vzrep-source.path")).split()
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
    assert scheduler == ["inactive", "inactive"], f"a target runs the source's scheduler: {scheduler}"
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


JOB = "/var/lib/vzrep/jobs/smoke.toml"
GUEST_DISK = "/srv/vms/smoke-vm.raw"


async def test_a_paired_source_appliance_runs_its_jobs_by_itself(tmp_path):
    """The source role end to end: auto-pairing to a real target, the scheduler started by the pairing,
    a job written the documented way (``sudo vzrep-source job new``, edit, ``job check``), then scheduled
    passes, the second carrying a change made in the guest; judged by the history and qemu-img compare."""
    admin = asyncssh.generate_private_key("ssh-ed25519")
    pairing_port, agent_port = free_port(), free_port()
    env = tmp_path / "ovfenv.xml"
    env.write_bytes(ovf_env(role="source", hostname="smoke-source", pairing_token=TOKEN,
                            admin_ssh_key=admin.export_public_key().decode().strip(),
                            peer=f"10.0.2.2:{pairing_port}"))  # fmt: skip  (QEMU's address for this host)
    keys_dir, data = tmp_path / "target-keys", tmp_path / "data"
    disk = make_image(tmp_path / "smoke-vm.raw", 8 << 20, data_blocks=24, seed=7)
    # The DR site: a target agent on this host, waiting for the source with the deployment's token.
    pairing = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "target_agent.cli", "pair", "--keys-dir", str(keys_dir), "--code", TOKEN,
        "--listen", f"127.0.0.1:{pairing_port}", "--agent-port", str(agent_port), "--expires", "1200",
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    serial = tmp_path / "serial.log"
    target: asyncio.subprocess.Process | None = None
    try:
        with BootedVM(IMAGE, serial, env) as vm:
            try:
                vm.wait_for_banner("ssh", BOOT_TIMEOUT)
                paired_out, _ = await asyncio.wait_for(pairing.communicate(), 600)  # the guest pairs itself
                assert pairing.returncode == 0, paired_out.decode()
                ready = tmp_path / "ready"
                with (tmp_path / "target.log").open("wb") as target_log:
                    target = await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "target_agent.cli", "serve", "--data-dir", str(data), "--listen",
                        f"127.0.0.1:{agent_port}", "--host-key", str(keys_dir / "ssh_host_ed25519_key"),
                        "--authorized-keys", str(keys_dir / "authorized_keys"), "--ready-file", str(ready),
                        cwd=REPO, stdout=target_log, stderr=asyncio.subprocess.STDOUT,
                    )  # fmt: skip
                async with asyncssh.connect("127.0.0.1", port=vm.ports["ssh"], username="vzadmin",
                                            client_keys=[admin], known_hosts=None, connect_timeout=60) as conn:

                    async def sh(cmd: str, data: bytes | None = None) -> str:
                        res = await conn.run(cmd, check=False, timeout=300, input=data,
                                             encoding=None if data is not None else "utf-8")  # fmt: skip
                        out = res.stdout.decode() if isinstance(res.stdout, bytes) else res.stdout or ""
                        err = res.stderr.decode() if isinstance(res.stderr, bytes) else res.stderr or ""
                        assert res.exit_status == 0, f"{cmd}: exit {res.exit_status}: {out}{err}"
                        return out

                    # Pairing started the scheduler (vzrep-source.path), idle until there is a job.
                    scheduler = await wait_guest(sh, "systemctl is-active vzrep-source.service || true", "active")
                    assert scheduler == "active", await sh("systemctl status --no-pager vzrep-source.service || true")
                    peer = await sh("sudo vzrep-source pair-status --json")
                    assert f"10.0.2.2:{agent_port}" in peer, peer
                    # The admin's steps (docs/appliance.md): a disk, a new job on the paired target, edited.
                    await sh(f"sudo install -d -m 0755 /srv/vms && sudo tee {GUEST_DISK} >/dev/null",
                             disk.read_bytes())  # fmt: skip
                    await sh(f"sudo vzrep-source job new {JOB} --name smoke")
                    # Unedited, the new job names no VM and runs nothing; the admin sets the RPO, adds one.
                    await sh(f"sudo sed -i 's/^rpo = .*/rpo = \"10s\"/' {JOB}")
                    await sh(f"sudo tee -a {JOB} >/dev/null",
                             f'\n[[vm]]\nname = "smoke-vm"\ndisks = ["disk0={GUEST_DISK}"]\n'.encode())  # fmt: skip
                    deadline = time.monotonic() + 60
                    while not ready.exists() or not ready.read_text().strip():
                        assert target.returncode is None and time.monotonic() < deadline, "the target did not start"
                        await asyncio.sleep(0.2)
                    check = await sh(f"sudo vzrep-source job check {JOB}")
                    assert f"target 10.0.2.2:{agent_port}: reachable" in check, check
                    # No pass typed: the scheduler sees the new file and replicates on its schedule.
                    first = await wait_guest_passes(sh, after=0.0)
                    # A change in the guest, then a pass that started after it (guest clock) carries it.
                    block = os.urandom(64 << 10)
                    await sh(f"sudo dd of={GUEST_DISK} bs=64k seek=40 conv=notrunc status=none", block)
                    with disk.open("r+b") as f:
                        f.seek(40 * (64 << 10))
                        f.write(block)
                    changed = float(await sh("date +%s.%N"))
                    second = await wait_guest_passes(sh, after=changed)
                    history = await sh("sudo vzrep-source history")
                    ran = {p["vm"] for p in json.loads(await sh("sudo vzrep-source history --json"))["passes"]}
                    units = await sh("systemctl show vzrep-source.service -p User -p ProtectSystem -p NRestarts")
            except BaseException:
                print(vm.serial()[-6000:])
                raise
    finally:
        if pairing.returncode is None:
            pairing.kill()
            await pairing.wait()
        if target is not None and target.returncode is None:
            target.terminate()
            await target.wait()
    print(f"\nsource appliance: first scheduled pass {first['wire_bytes']} B on the wire, the change's pass"
          f" {second['wire_bytes']} B\n{history}")  # fmt: skip
    assert first["status"] == "ok", first
    assert ran == {"smoke-vm"}, f"passes of VMs the admin never put in a job: {ran}"
    assert second["status"] == "ok", second
    assert second["wire_bytes"] < first["wire_bytes"], "the second pass sent more than the change"
    assert "User=vzrep" in units and "ProtectSystem=strict" in units, units
    qemu_compare(disk, data / "smoke-vm" / "disk0.vmdk")


async def wait_guest(sh, cmd: str, want: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while True:
        got = (await sh(cmd)).strip()
        if got == want or time.monotonic() > deadline:
            return got
        await asyncio.sleep(2)


async def wait_guest_passes(sh, after: float, timeout: float = 300) -> dict:
    """The first ok pass of the job's VM that started after ``after`` (guest clock), from the history."""
    deadline = time.monotonic() + timeout
    while True:
        doc = json.loads(await sh("sudo vzrep-source history --json 2>/dev/null || echo '{}'") or "{}")
        done = [p for p in doc.get("passes", []) if p["vm"] == "smoke-vm" and p["started"] > after]
        ok = sorted((p for p in done if p["status"] == "ok"), key=lambda p: p["started"])
        if ok:
            return ok[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no scheduled pass succeeded within {timeout:.0f}s: {done}")
        await asyncio.sleep(3)
