"""Everything the console does to the machine, behind one class.

The console talks to the agent only through its CLI's ``--json`` output and its control commands
(``status``, ``rollback``, ``pair``, ``pair-status``, ``unpair``; on a source ``history``, ``job``,
``points`` and ``test-failover``, which ask the target), never its internals. Tests replace
this class (pilot tests) or point it at a temporary root and a real agent (the tmux test).
"""

from __future__ import annotations

import ipaddress
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance import netconfig, ovfenv
from appliance.console import password as password_check
from appliance.layout import Layout

SECRET_NAMES = ("ssh_host_ed25519_key", "id_ed25519", "token")


#: A replica's failover state (``DATA_DIR/<vm>/failover``) as the Status page says it.
FAILOVER_STATES = {
    "test": "test failover",
    "testing": "test failover",
    "failing-over": "failing over",
    "failed-over": "failed over",
    "committing": "failed over (committing)",
    "committed": "failed over (final)",
    "failing-back": "failing back",
    "failed-back": "failed back: release once it runs at home",
    "undoing": "ending failover",
}


def vm_state(vm: dict[str, Any]) -> str:
    """One word or two for a VM row of ``vzrep-target status --json``: its failover state if it has one,
    else replicating (a pass holds its lock) or idle."""
    failover = vm.get("failover") or {}
    if failover.get("state"):
        return FAILOVER_STATES.get(str(failover["state"]), str(failover["state"]))
    return "replicating" if vm.get("pass_running") else "idle"


def verify_state(vm: dict[str, Any]) -> str:
    """The Status page's "Last verify" cell from ``status --json``: when, and whether the replica's
    bytes matched (the source's, or for ``vzrep-target verify`` its own records)."""
    last = vm.get("last_verify") or {}
    if not last:
        return "never"
    if last.get("ok"):
        return f"ok {last.get('time', '')}"
    what = "blocks differ" if last.get("by") == "source" else "ranges differ"
    damaged = (
        f", {len(last.get('damaged_points') or [])} point(s) damaged" if last.get("damaged_points") else ""
    )
    return f"DAMAGED {last.get('time', '')}: {last.get('differing', 0)} {what}{damaged}"


@dataclass
class CommandResult:
    rc: int
    output: str


@dataclass(frozen=True)
class NetworkSettings:
    """What the network page edits; ``validate`` turns it into networkd settings or says why not."""

    mode: str = "dhcp"
    address: str = ""
    gateway: str = ""
    dns: str = ""
    hostname: str = ""

    def validate(
        self,
    ) -> tuple[ovfenv.StaticIPv4 | None, list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
        """Raises ValueError with a message for the user."""
        static = None
        if self.mode == "static":
            try:
                interface = ovfenv.parse_interface(self.address.strip(), "")
            except ValueError as exc:
                raise ValueError(f"Address: {exc} (write it as 10.0.0.5/24)") from None
            gateway = None
            if self.gateway.strip():
                try:
                    gateway = ipaddress.IPv4Address(self.gateway.strip())
                except ValueError:
                    raise ValueError("Gateway: not an IPv4 address") from None
                if gateway not in interface.network or gateway == interface.ip:
                    raise ValueError(f"Gateway: not a host in {interface.network}")
            static = ovfenv.StaticIPv4(interface, gateway)
        elif self.mode != "dhcp":
            raise ValueError("Mode: choose DHCP or static")
        dns = []
        for item in filter(None, (s.strip() for s in self.dns.split(","))):
            try:
                dns.append(ipaddress.ip_address(item))
            except ValueError:
                raise ValueError(f"DNS: {item!r} is not an IP address") from None
        if self.hostname and not ovfenv._HOSTNAME.match(self.hostname):
            raise ValueError("Hostname: letters, digits and '-' only, at most 63")
        return static, dns


@dataclass
class Backend:
    layout: Layout = field(default_factory=Layout)
    agent_cli: dict[str, list[str]] = field(
        default_factory=lambda: {"target": [_sibling("vzrep-target")], "source": [_sibling("vzrep-source")]}
    )
    systemd: bool = True  # False in tests on a temporary root: no systemctl/networkctl/journalctl
    pairing_listen: str | None = None  # HOST:PORT for the target's pairing port (default: all, 2223)
    pairing_process: subprocess.Popen[str] | None = None
    pass_process: subprocess.Popen[str] | None = None  # a pass started from the Jobs page

    # --- reading ---------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        try:
            data = json.loads(self.layout.appliance_json.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    @property
    def role(self) -> str:
        role = self.config().get("role")
        return role if role in ("source", "target") else "target"

    def hostname(self) -> str:
        try:
            return (self.layout.root / "etc" / "hostname").read_text().strip() or platform.node()
        except OSError:
            return platform.node()

    def addresses(self) -> list[str]:
        if not shutil.which("ip"):
            return []
        out = self._run(["ip", "-j", "-4", "addr", "show", "scope", "global"]).output
        try:
            return [
                f"{a['local']}/{a['prefixlen']} ({i['ifname']})"
                for i in json.loads(out)
                for a in i["addr_info"]
            ]
        except (ValueError, KeyError, TypeError):
            return []

    def problems(self) -> list[str]:
        try:
            return [line for line in self.layout.problems.read_text().splitlines() if line]
        except OSError:
            return []

    def agent_health(self) -> str:
        if not self.systemd:
            return self._probe_agent()
        return self._run(["systemctl", "is-active", f"vzrep-{self.role}.service"]).output.strip() or "unknown"

    def _probe_agent(self) -> str:
        port = self.config().get("agent_port", 2222)
        try:
            with socket.create_connection(("127.0.0.1", int(str(port))), timeout=2) as sock:
                sock.settimeout(2)
                banner = sock.recv(64)
        except (OSError, ValueError):
            return f"not answering on port {port}"
        return (
            f"answering on port {port}" if banner.startswith(b"SSH-") else f"unexpected reply on port {port}"
        )

    def pairing_status(self) -> dict[str, Any]:
        result = self._agent(["pair-status", "--keys-dir", str(self.layout.keys_dir), "--json"])
        try:
            data = json.loads(result.output)
            return data if isinstance(data, dict) else {}
        except ValueError:
            return {"error": result.output.strip()[-200:]}

    def replication_status(self) -> dict[str, Any]:
        if self.role != "target":
            return {"vms": []}
        result = self._agent(["status", "--data-dir", str(self.layout.data_dir), "--json"])
        try:
            data = json.loads(result.output)
            return data if isinstance(data, dict) else {"vms": []}
        except ValueError:
            return {"vms": [], "error": result.output.strip()[-300:] or f"status exited {result.rc}"}

    def agent_log(self, lines: int = 300) -> str:
        if self.systemd:
            unit = f"vzrep-{self.role}.service"
            return self._run(
                [
                    "journalctl",
                    "-u",
                    unit,
                    "-u",
                    "vzrep-pairing.service",
                    "-u",
                    "vzrep-firstboot.service",
                    "-n",
                    str(lines),
                    "--no-pager",
                ]
            ).output
        log = self.layout.state_dir / "agent.log"
        try:
            return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no agent log)"

    def network(self) -> NetworkSettings:
        try:
            static, dns, _ = netconfig.parse_network(self.layout.network_file.read_text())
        except (OSError, ValueError):
            static, dns = None, []
        if static is None:
            return NetworkSettings("dhcp", "", "", ", ".join(dns), self.hostname())
        return NetworkSettings(
            "static",
            static.interface.with_prefixlen,
            str(static.gateway or ""),
            ", ".join(dns),
            self.hostname(),
        )

    # --- acting ----------------------------------------------------------------------------------

    def apply_network(self, settings: NetworkSettings) -> str:
        """Write the new settings (keeping the old ones for revert) and apply them."""
        static, dns = settings.validate()
        _, _, ntp = netconfig.parse_network(self._read(self.layout.network_file))
        backup = self.layout.network_file.with_suffix(".network.previous")
        if self.layout.network_file.exists():
            shutil.copy2(self.layout.network_file, backup)
        self.layout.network_file.parent.mkdir(parents=True, exist_ok=True)
        self.layout.network_file.write_text(netconfig.render_network(static, dns, ntp))
        if settings.hostname and settings.hostname != self.hostname():
            (self.layout.root / "etc" / "hostname").write_text(settings.hostname + "\n")
            if self.systemd:
                self._run(["hostnamectl", "set-hostname", settings.hostname])
        self._reload_network()
        return "applied: " + ("static " + str(static.interface) if static else "DHCP")

    def revert_network(self) -> str:
        backup = self.layout.network_file.with_suffix(".network.previous")
        if not backup.exists():
            return "nothing to revert"
        os.replace(backup, self.layout.network_file)
        self._reload_network()
        return "reverted to the previous network settings"

    def _reload_network(self) -> None:
        if self.systemd:
            self._run(["networkctl", "reload"])
            self._run(["networkctl", "reconfigure", "--", *self._ether_links()])

    def _ether_links(self) -> list[str]:
        out = self._run(["networkctl", "list", "--no-legend"]).output
        return [f.split()[1] for f in out.splitlines() if len(f.split()) > 2 and f.split()[2] == "ether"]

    # --- the source's scheduled jobs ------------------------------------------------------------

    def jobs_status(self) -> list[dict[str, Any]]:
        """One row a VM of each scheduled job, from the daemon's history (``history --json``): its job
        (name, file, paused), last success, next run, RPO state and last error."""
        if self.role != "source":
            return []
        result = self._agent(["history", "--db", str(self.layout.history_db), "--json", "--limit", "1"])
        try:
            doc = json.loads(result.output)
        except ValueError:
            return []
        jobs = {j["id"]: j for j in doc.get("jobs", [])}
        rows = []
        for v in doc.get("vms", []):
            if v.get("scheduled") is False:  # in no job file now: nothing to run or pause
                continue
            job = jobs.get(v.get("job"), {})
            path = Path(job.get("path") or "")
            rows.append(
                {**v, "job_name": job.get("name", v.get("job")), "file": str(path),
                 "paused": bool(job.get("path")) and path.with_suffix(".paused").exists()}
            )  # fmt: skip
        return rows

    def pause_job(self, file: str, pause: bool) -> CommandResult:
        return self._agent(["job", "pause" if pause else "resume", file])

    def run_now(self, file: str, vm: str) -> None:
        """Start one pass of a job's VM in the background (``job run FILE --vm VM --json``)."""
        argv = [*self.agent_cli["source"], "job", "run", file, "--vm", vm, "--json"]
        if self.layout.source_dir.exists():
            argv += ["--state-dir", str(self.layout.source_dir)]
        self.pass_process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def pass_result(self) -> str | None:
        """None while the pass started by :meth:`run_now` runs; then one line on how it ended."""
        proc = self.pass_process
        if proc is None or proc.poll() is None:
            return None
        out, err = proc.communicate()
        self.pass_process = None
        try:
            vm = json.loads(out)["vms"][0]
        except (ValueError, KeyError, IndexError):
            return f"the pass exited {proc.returncode}: {err.strip()[-300:]}"
        if vm.get("status") == "replicated":
            return f"{vm['vm']}: replicated"
        return (
            f"{vm.get('vm')}: {vm.get('status')} (exit {vm.get('exit_code')}): {vm.get('reason', '')[:300]}"
        )

    def target_points(self, file: str, vm: str) -> dict[str, Any]:
        """A job VM's restore points and failover state as its target holds them, asked over the job's
        tunnel (``vzrep-source points --job FILE --vm VM --json``); on failure ``ok`` is false and
        ``error``/``exit_code`` say why (exit 4: the target cannot be reached)."""
        return self._source_json(["points", "--job", file, "--vm", vm, "--json"], timeout=120)

    def target_test_failover(
        self, file: str, vm: str, point: str | None, end: bool = False
    ) -> dict[str, Any]:
        """Start a test failover of ``point`` on the target (``vzrep-source test-failover``), or end it;
        the replica's state afterwards, as :meth:`target_points` gives it. An export of a large disk
        takes a while: the console calls this from a worker thread."""
        argv = ["test-failover", "--job", file, "--vm", vm, "--json"]
        argv += ["--end"] if end else (["--point", point] if point else [])
        return self._source_json(argv, timeout=3600)

    def _source_json(self, args: list[str], timeout: float) -> dict[str, Any]:
        try:
            proc = subprocess.run(
                [*self.agent_cli["source"], *args],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return {"ok": False, "error": str(exc), "exit_code": 127}
        try:
            doc = json.loads(proc.stdout)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            error = proc.stderr.strip().splitlines()[-1:] or [f"exited {proc.returncode}"]
            return {
                "ok": False,
                "error": error[0].removeprefix("vzrep-source: "),
                "exit_code": proc.returncode,
            }
        return doc

    def points(self, vm: str) -> list[dict[str, Any]]:
        """A replica's restore points (``points --json``), newest first; [] when it has none or on error."""
        result = self._agent(["points", "--data-dir", str(self.layout.data_dir), "--vm", vm, "--json"])
        try:
            rows = json.loads(result.output).get("points", [])
        except (ValueError, AttributeError):
            return []
        return rows if isinstance(rows, list) else []

    def failover(self, vm: str, action: str, point: str | None = None) -> CommandResult:
        """``failover`` of a file replica: action ``test``, ``start`` (permanent), ``undo`` or ``commit``."""
        argv = ["failover", "--data-dir", str(self.layout.data_dir), "--vm", vm]
        if point and action in ("test", "start"):
            argv += ["--point", point]
        if action != "start":
            argv.append(f"--{action}")
        return self._agent(argv)

    def rollback(self, vm: str) -> CommandResult:
        return self._agent(["rollback", "--data-dir", str(self.layout.data_dir), "--vm", vm])

    def start_pairing_code(self, code: str) -> None:
        """Target: serve the pairing port with ``code`` in the background until paired or expired."""
        self.stop_pairing()
        argv = [*self.agent_cli["target"], "pair", "--keys-dir", str(self.layout.keys_dir), "--code", code]
        if self.pairing_listen:
            argv += ["--listen", self.pairing_listen]
        port = self.config().get("agent_port")
        if isinstance(port, int):
            argv += ["--agent-port", str(port)]
        self.pairing_process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def pairing_result(self) -> CommandResult | None:
        """None while the pairing port is still open."""
        proc = self.pairing_process
        if proc is None or proc.poll() is None:
            return None
        output = proc.stdout.read() if proc.stdout else ""
        self.pairing_process = None
        if proc.returncode == 0 and self.systemd:
            self._run(["systemctl", "restart", "vzrep-target.service"])
        return CommandResult(proc.returncode, output)

    def stop_pairing(self) -> None:
        if self.pairing_process is not None and self.pairing_process.poll() is None:
            self.pairing_process.terminate()
            self.pairing_process.wait(5)
        self.pairing_process = None

    def pair_with(self, host: str, code: str) -> CommandResult:
        # A target pairing someone else says "busy": retry it, but answer within _run's 60 s.
        return self._agent(["pair", "--keys-dir", str(self.layout.keys_dir), "--busy-wait", "40", host, code])

    def unpair(self) -> CommandResult:
        return self._agent(["unpair", "--keys-dir", str(self.layout.keys_dir)])

    def write_support_bundle(self, path: Path) -> Path:
        """A tar.gz of logs, configs without secrets, versions and pairing fingerprints."""
        path.parent.mkdir(parents=True, exist_ok=True)
        texts = {
            "versions.txt": self._versions(),
            "agent.log": self.agent_log(2000),
            "pair-status.json": json.dumps(self.pairing_status(), indent=2),
            "status.json": json.dumps(self.replication_status(), indent=2),
        }
        files = [
            self.layout.appliance_json,
            self.layout.agent_env,
            self.layout.problems,
            self.layout.network_file,
            self.layout.keys_dir / "peer.json",
            self.layout.known_hosts,
            self.layout.authorized_keys,
        ]
        with tarfile.open(path, "w:gz") as tar:
            for name, text in texts.items():
                _add_text(tar, f"vzrep-support/{name}", text)
            for f in files:
                if f.is_file() and f.name not in SECRET_NAMES:
                    tar.add(f, arcname=f"vzrep-support/files/{f.relative_to(self.layout.root)}")
        path.chmod(0o600)
        return path

    def _versions(self) -> str:
        from importlib.metadata import PackageNotFoundError, version

        try:
            vz = version("vzrep")
        except PackageNotFoundError:
            vz = "unknown"
        os_release = self._read(self.layout.root / "etc" / "os-release")
        return f"vzrep {vz}\nkernel {platform.release()}\npython {platform.python_version()}\n\n{os_release}"

    def check_admin_password(self, password: str) -> bool:
        """Against vzadmin's hash in /etc/shadow (the console runs as root on tty1)."""
        try:
            lines = (self.layout.root / "etc" / "shadow").read_text().splitlines()
        except OSError:
            return False
        entry = next((line.split(":") for line in lines if line.startswith("vzadmin:")), None)
        if entry is None or len(entry) < 2:
            return False
        try:
            return password_check.verify(password, entry[1])
        except password_check.CryptUnavailable:
            return False

    def shell_command(self) -> list[str]:
        return ["login", "-f", "vzadmin"] if os.geteuid() == 0 else [os.environ.get("SHELL", "/bin/sh")]

    # --- helpers ---------------------------------------------------------------------------------

    def _agent(self, args: list[str]) -> CommandResult:
        return self._run([*self.agent_cli[self.role], *args])

    def _run(self, argv: list[str]) -> CommandResult:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return CommandResult(127, str(exc))
        return CommandResult(proc.returncode, proc.stdout + proc.stderr)

    @staticmethod
    def _read(path: Path) -> str:
        try:
            return path.read_text()
        except OSError:
            return ""


def _sibling(command: str) -> str:
    """The agent CLI installed beside this Python (the appliance's venv is not on getty's PATH)."""
    candidate = Path(sys.executable).parent / command
    return str(candidate) if candidate.exists() else command


def _add_text(tar: tarfile.TarFile, name: str, text: str) -> None:
    import io

    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
    tar.addfile(info, io.BytesIO(data))
