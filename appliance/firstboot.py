"""First boot: apply the OVF environment, create this machine's keys, never fail the boot.

Run once by ``vzrep-firstboot.service`` (``python -m appliance.firstboot --root /``). The OVF
environment comes from ``--ovf-env FILE`` (tests), QEMU's fw_cfg (the smoke test), or VMware Tools
(``vmtoolsd --cmd "info-get guestinfo.ovfEnv"``). Every problem is printed (to the console and the
journal) and kept in /etc/vzrep/firstboot-problems.txt for the console's status page; bad values
fall back to DHCP and an unpaired appliance. Exit code 0 unless writing the files themselves failed.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

from appliance import netconfig, ovfenv
from appliance.layout import Layout
from pairing.defaults import AGENT_PORT, PAIRING_PORT
from vzcommon import keys
from vzcommon.climain import run_main
from vzcommon.durable import atomic_write

FW_CFG = Path("/sys/firmware/qemu_fw_cfg/by_name/opt/vzrep/ovfenv/raw")
AGENT_USER = "vzrep"


def read_environment(ovf_env: Path | None) -> bytes | None:
    """The OVF environment document, or None if this machine has none."""
    if ovf_env is not None:
        return ovf_env.read_bytes()
    if not FW_CFG.exists():
        subprocess.run(["modprobe", "-q", "qemu_fw_cfg"], check=False, capture_output=True)
    if FW_CFG.exists():
        return FW_CFG.read_bytes()
    if shutil.which("vmtoolsd"):
        try:
            out = subprocess.run(
                ["vmtoolsd", "--cmd", "info-get guestinfo.ovfEnv"],
                capture_output=True,
                timeout=20,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return None
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout
    return None


def appliance_config(settings: ovfenv.Settings, problems: tuple[str, ...]) -> dict[str, object]:
    """What the agents, autopair and the console read (no secrets: the token has its own 0600 file)."""
    peer = settings.peer
    return {
        "version": 1,
        "role": settings.role.value,
        "hostname": settings.hostname,
        "agent_port": AGENT_PORT,
        "pairing_port": PAIRING_PORT,
        "peer": None if peer is None else {"host": peer.host, "port": peer.port or PAIRING_PORT},
        "vcenter": settings.vcenter,
        "problems": list(problems),
    }


def apply(settings: ovfenv.Settings, problems: tuple[str, ...], layout: Layout) -> None:
    """Write everything first boot owns under ``layout.root``."""
    for d in (
        layout.config_dir,
        layout.keys_dir,
        layout.data_dir,
        layout.pairing_dir,
        layout.network_file.parent,
    ):
        d.mkdir(parents=True, exist_ok=True)
    hostname = settings.hostname or f"vzrep-{settings.role.value}"
    atomic_write(layout.root / "etc" / "hostname", f"{hostname}\n".encode())
    if layout.root == Path("/"):  # systemd set the old name before we ran
        subprocess.run(["hostname", hostname], check=False, capture_output=True)
    atomic_write(
        layout.root / "etc" / "hosts",
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n::1\tlocalhost ip6-localhost\n".encode(),
    )
    atomic_write(
        layout.network_file, netconfig.render_network(settings.static, settings.dns, settings.ntp).encode()
    )

    config = appliance_config(settings, problems)
    atomic_write(layout.appliance_json, (json.dumps(config, indent=2) + "\n").encode())
    atomic_write(
        layout.agent_env, f"VZREP_ROLE={settings.role.value}\nVZREP_LISTEN=0.0.0.0:{AGENT_PORT}\n".encode()
    )
    atomic_write(layout.problems, "".join(f"{p}\n" for p in problems).encode())
    for role in ovfenv.Role:
        layout.role_marker(role.value).unlink(missing_ok=True)
    atomic_write(layout.role_marker(settings.role.value), b"")

    if settings.role is ovfenv.Role.TARGET:
        keys.ensure(layout.host_key, f"vzrep-target@{hostname}")
        if not layout.authorized_keys.exists():
            atomic_write(layout.authorized_keys, b"", mode=0o644)
    else:
        keys.ensure(layout.identity, f"vzrep-source@{hostname}")
        if not layout.known_hosts.exists():
            atomic_write(layout.known_hosts, b"", mode=0o644)
    if settings.pairing_token:
        atomic_write(layout.token_file, settings.pairing_token.encode(), mode=0o600)
    _accounts(settings, layout)
    if layout.root == Path("/"):
        _chown_agent_files(layout)
    subprocess.run(["ssh-keygen", "-A", "-f", str(layout.root)], check=False, capture_output=True)


def _accounts(settings: ovfenv.Settings, layout: Layout) -> None:
    if settings.admin_ssh_key:
        ssh_dir = layout.root / "home" / "vzadmin" / ".ssh"
        ssh_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(ssh_dir / "authorized_keys", (settings.admin_ssh_key + "\n").encode(), mode=0o600)
        if layout.root == Path("/") and _uid("vzadmin") is not None:
            uid = _uid("vzadmin") or 0
            for p in (ssh_dir, ssh_dir / "authorized_keys"):
                os.chown(p, uid, pwd.getpwuid(uid).pw_gid)
    if settings.admin_password and (layout.root / "etc" / "passwd").exists():
        cmd = ["chpasswd"] if layout.root == Path("/") else ["chpasswd", "-R", str(layout.root)]
        subprocess.run(
            cmd, input=f"vzadmin:{settings.admin_password}\n".encode(), check=False, capture_output=True
        )


def _uid(user: str) -> int | None:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def _chown_agent_files(layout: Layout) -> None:
    uid = _uid(AGENT_USER)
    if uid is None:
        return
    gid = pwd.getpwuid(uid).pw_gid
    paths = (
        layout.keys_dir,
        *layout.keys_dir.iterdir(),
        layout.data_dir,
        layout.pairing_dir,
        *layout.pairing_dir.iterdir(),
    )
    for path in paths:
        os.chown(path, uid, gid)


PROG = "vzrep-firstboot"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("/"))
    ap.add_argument("--ovf-env", type=Path, help="read the OVF environment from this file")
    ap.set_defaults(func=_first_boot)
    return run_main(PROG, ap, argv, "first boot did not finish; it runs again at the next boot")


def _first_boot(args: argparse.Namespace) -> int:
    """Problems in the OVF environment are reported and fall back to defaults (exit 0); only a
    failure to write the files themselves is an error (one line and its exit code, as every
    entry point reports errors)."""
    layout = Layout(args.root)
    try:
        document = read_environment(args.ovf_env)
    except OSError as exc:
        print(f"{PROG}: cannot read the OVF environment: {exc}", file=sys.stderr)
        document = None
    result = ovfenv.parse(document)
    for problem in result.problems:
        print(f"{PROG}: {problem}", flush=True)
    apply(result.settings, result.problems, layout)
    atomic_write(layout.firstboot_done, b"")
    s = result.settings
    print(
        f"{PROG}: role {s.role.value}, network {'static' if s.static else 'DHCP'}, "
        f"{'pairing token set' if s.pairing_token else 'unpaired'}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
