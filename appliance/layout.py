"""Where the appliance keeps its files, relative to a root (``/`` on the appliance, a temp dir in tests).

/etc/vzrep is written only at first boot and by the console; everything that changes at run time
(keys, pins, pairing token, replica data) lives under /var/lib/vzrep so the agents' units can keep
``ProtectSystem=strict`` with ``ReadWritePaths`` limited to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path = Path("/")

    @property
    def config_dir(self) -> Path:
        return self.root / "etc" / "vzrep"

    @property
    def appliance_json(self) -> Path:
        return self.config_dir / "appliance.json"

    @property
    def agent_env(self) -> Path:
        return self.config_dir / "agent.env"

    @property
    def problems(self) -> Path:
        return self.config_dir / "firstboot-problems.txt"

    def role_marker(self, role: str) -> Path:
        return self.config_dir / f"role-{role}"

    @property
    def state_dir(self) -> Path:
        return self.root / "var" / "lib" / "vzrep"

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "data"

    @property
    def jobs_dir(self) -> Path:
        """A source's job files (root writes them, the scheduler only reads them)."""
        return self.state_dir / "jobs"

    @property
    def source_dir(self) -> Path:
        """A source scheduler's own state (``StateDirectory=vzrep/source``): its history, cached maps."""
        return self.state_dir / "source"

    @property
    def history_db(self) -> Path:
        return self.source_dir / "history.sqlite"

    @property
    def keys_dir(self) -> Path:
        return self.state_dir / "keys"

    @property
    def pairing_dir(self) -> Path:
        return self.state_dir / "pairing"

    @property
    def token_file(self) -> Path:
        return self.pairing_dir / "token"

    @property
    def host_key(self) -> Path:
        return self.keys_dir / "ssh_host_ed25519_key"

    @property
    def authorized_keys(self) -> Path:
        return self.keys_dir / "authorized_keys"

    @property
    def identity(self) -> Path:
        return self.keys_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.keys_dir / "known_hosts"

    @property
    def peer_json(self) -> Path:
        return self.keys_dir / "peer.json"

    @property
    def firstboot_done(self) -> Path:
        return self.state_dir / "firstboot.done"

    @property
    def network_file(self) -> Path:
        return self.root / "etc" / "systemd" / "network" / "10-vzrep.network"
