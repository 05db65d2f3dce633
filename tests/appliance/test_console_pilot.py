"""Every console page and action, driven headless with Textual's pilot against a fake backend."""

from __future__ import annotations

import subprocess
import tarfile
from dataclasses import dataclass, field
from typing import Any

from textual.widgets import DataTable, Input, RadioButton, Static

from appliance.console.app import ConfirmScreen, ConsoleApp
from appliance.console.backend import Backend, CommandResult, NetworkSettings
from appliance.layout import Layout

STATUS = {
    "data_dir": "/var/lib/vzrep/data",
    "vms": [
        {"vm": "web01", "disks": {}, "pending_rollback": False, "pass_running": False, "last_failure": None,
         "last_pass": {"finished": "2026-11-21T10:00:00Z", "generation": 4, "bytes_sent": 2**30, "duration": 8}},
        {"vm": "db01", "disks": {}, "pending_rollback": True, "pass_running": False,
         "last_failure": {"rolled_back_at": "x"}, "last_pass": None},
    ],
}


@dataclass
class FakeBackend(Backend):
    calls: list[tuple[str, Any]] = field(default_factory=list)
    fake_role: str = "target"
    paired: bool = False
    shadow_ok: str = "letmein"
    pairing_done: CommandResult | None = None

    @property  # type: ignore[override]
    def role(self) -> str:
        return self.fake_role

    def hostname(self) -> str:
        return "dr-target-01"

    def addresses(self) -> list[str]:
        return ["10.20.30.41/24 (eth0)"]

    def problems(self) -> list[str]:
        return ["vzrep.dns='x' is invalid"]

    def agent_health(self) -> str:
        return "active"

    def pairing_status(self) -> dict[str, Any]:
        peer = {"role": "source", "name": "src01", "address": "10.1.1.1", "fingerprint": "SHA256:peerfp"}
        return {"own_fingerprint": "SHA256:ownfp", "paired": self.paired, "peer": peer if self.paired else None}

    def replication_status(self) -> dict[str, Any]:
        return STATUS

    def agent_log(self, lines: int = 300) -> str:
        return "listening port=2222\npass finished vm=web01"

    def rollback(self, vm: str) -> CommandResult:
        self.calls.append(("rollback", vm))
        return CommandResult(0, f"rolled back {vm}")

    def start_pairing_code(self, code: str) -> None:
        self.calls.append(("show-code", code))

    def pairing_result(self) -> CommandResult | None:
        result, self.pairing_done = self.pairing_done, None
        return result

    def pair_with(self, host: str, code: str) -> CommandResult:
        self.calls.append(("pair", (host, code)))
        return CommandResult(0, "paired with target tgt at 10.0.0.9:2222; pinned host key SHA256:x")

    def unpair(self) -> CommandResult:
        self.calls.append(("unpair", None))
        return CommandResult(0, "unpaired")

    def check_admin_password(self, password: str) -> bool:
        return password == self.shadow_ok


class PilotApp(ConsoleApp):
    def run_shell(self) -> None:
        self.backend.calls.append(("shell", None))  # type: ignore[attr-defined]


async def click(pilot, selector: str) -> None:
    """Click, then let the button's press effect end (a button ignores clicks while it shows one)."""
    await pilot.click(selector)
    await pilot.pause(0.3)


def text(app: ConsoleApp, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


async def test_status_page_shows_role_pairing_problems_and_jobs(tmp_path):
    app = PilotApp(FakeBackend(Layout(tmp_path), paired=True))
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.pause()
        assert "Role: target" in text(app, "#appliance") and "Agent: active" in text(app, "#appliance")
        assert "10.20.30.41/24" in text(app, "#appliance")
        assert "SHA256:peerfp" in text(app, "#pairing") and "SHA256:ownfp" in text(app, "#pairing")
        assert "vzrep.dns" in text(app, "#problems")
        table = app.screen.query_one("#jobs", DataTable)
        rows = [table.get_row_at(i) for i in range(table.row_count)]
        assert rows[0][0] == "web01" and rows[0][3] == "ok" and rows[0][4] == "128.0 MiB/s"
        assert rows[1][0] == "db01" and rows[1][7] == "PENDING" and rows[1][6] == "never" and "rolled back" in rows[1][3]


async def test_network_page_validates_applies_and_reverts(tmp_path):
    backend = FakeBackend(Layout(tmp_path), systemd=False)
    app = PilotApp(backend)
    async with app.run_test(size=(120, 50)) as pilot:
        await pilot.press("n")
        await pilot.pause()
        assert app.screen.query_one("#dhcp", RadioButton).value
        await click(pilot, "#static")
        app.screen.query_one("#address", Input).value = "10.0.0.300/24"
        await click(pilot, "#apply")
        assert "Not applied: Address" in text(app, "#message")
        app.screen.query_one("#address", Input).value = "10.0.0.5/24"
        app.screen.query_one("#gateway", Input).value = "10.0.0.1"
        app.screen.query_one("#dns", Input).value = "10.0.0.2"
        await click(pilot, "#apply")
        assert "applied: static 10.0.0.5/24" in text(app, "#message")
        written = backend.layout.network_file.read_text()
        assert "Address=10.0.0.5/24" in written and "Gateway=10.0.0.1" in written and "DNS=10.0.0.2" in written
        await click(pilot, "#dhcp")
        await click(pilot, "#apply")
        assert "DHCP=yes" in backend.layout.network_file.read_text()
        await click(pilot, "#revert")
        assert "reverted" in text(app, "#message")
        assert "Address=10.0.0.5/24" in backend.layout.network_file.read_text()


def test_network_settings_validation():
    assert NetworkSettings("static", "10.0.0.5/24", "10.0.0.1", "1.1.1.1", "a-b").validate()[0] is not None
    for bad in (NetworkSettings("static", "10.0.0.5"), NetworkSettings("static", "10.0.0.5/24", "10.9.9.9"),
                NetworkSettings("dhcp", dns="nope"), NetworkSettings("dhcp", hostname="bad name"),
                NetworkSettings("bogus")):
        try:
            bad.validate()
        except ValueError:
            continue
        raise AssertionError(f"{bad} validated")


async def test_pairing_page_on_the_target_shows_a_code_and_reports_the_result(tmp_path):
    backend = FakeBackend(Layout(tmp_path))
    app = PilotApp(backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("p")
        await click(pilot, "#show-code")
        code = backend.calls[-1][1]
        assert backend.calls[-1][0] == "show-code" and len(code) == 9 and code[4] == "-"
        assert code in text(app, "#code")
        backend.pairing_done = CommandResult(0, "paired with source src01")
        await pilot.pause(1.3)
        assert "Paired." in text(app, "#message")


async def test_pairing_page_on_the_source_pairs_and_unpairs_with_confirmation(tmp_path):
    backend = FakeBackend(Layout(tmp_path), fake_role="source")
    app = PilotApp(backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("p")
        await click(pilot, "#pair")
        assert "Enter the target's address" in text(app, "#message")
        app.screen.query_one("#peer", Input).value = "10.0.0.9"
        app.screen.query_one("#pair-code", Input).value = "KX7P-22QM"
        await click(pilot, "#pair")
        assert backend.calls[-1] == ("pair", ("10.0.0.9", "KX7P-22QM"))
        assert "pinned host key" in text(app, "#message")
        await click(pilot, "#unpair")
        assert isinstance(app.screen, ConfirmScreen)
        await click(pilot, "#no")
        assert ("unpair", None) not in backend.calls
        await click(pilot, "#unpair")
        await click(pilot, "#yes")
        assert backend.calls[-1] == ("unpair", None)


async def test_rollback_page_asks_before_rolling_back(tmp_path):
    backend = FakeBackend(Layout(tmp_path))
    app = PilotApp(backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("r")
        table = app.screen.query_one("#vms", DataTable)
        assert table.row_count == 2
        table.move_cursor(row=1)
        await click(pilot, "#rollback")
        assert isinstance(app.screen, ConfirmScreen) and "db01" in str(app.screen.question)
        await click(pilot, "#yes")
        assert backend.calls == [("rollback", "db01")]
        assert "rolled back db01" in text(app, "#message")


async def test_log_page_shows_the_agent_log(tmp_path):
    app = PilotApp(FakeBackend(Layout(tmp_path)))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("l")
        await pilot.pause()
        log = app.screen.query_one("#log")
        assert any("pass finished vm=web01" in line.text for line in log.lines)  # type: ignore[attr-defined]


async def test_support_bundle_has_logs_and_configs_but_no_secrets(tmp_path):
    layout = Layout(tmp_path / "root")
    layout.keys_dir.mkdir(parents=True)
    layout.config_dir.mkdir(parents=True)
    layout.appliance_json.write_text('{"role": "target"}')
    layout.host_key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n")
    layout.authorized_keys.write_text("ssh-ed25519 AAAA src\n")
    layout.pairing_dir.mkdir(parents=True)
    layout.token_file.write_text("correct-horse")
    app = PilotApp(FakeBackend(layout))
    out = tmp_path / "bundle.tar.gz"
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("b")
        app.screen.query_one("#path", Input).value = str(out)
        await click(pilot, "#write")
        assert "Wrote" in text(app, "#message")
    with tarfile.open(out) as tar:
        names = tar.getnames()
        blob = b"".join(tar.extractfile(m).read() for m in tar.getmembers() if m.isfile())  # type: ignore[union-attr]
    assert "vzrep-support/agent.log" in names and "vzrep-support/versions.txt" in names
    assert "vzrep-support/files/etc/vzrep/appliance.json" in names
    assert b"PRIVATE KEY" not in blob and b"correct-horse" not in blob
    assert out.stat().st_mode & 0o777 == 0o600


async def test_shell_needs_the_admin_password(tmp_path):
    backend = FakeBackend(Layout(tmp_path))
    app = PilotApp(backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("x")
        app.screen.query_one("#password", Input).value = "wrong"
        await click(pilot, "#open")
        assert "Wrong password" in text(app, "#message") and backend.calls == []
        assert app.screen.query_one("#password", Input).value == ""
        app.screen.query_one("#password", Input).value = "letmein"
        await click(pilot, "#open")
        assert backend.calls == [("shell", None)]


def test_admin_password_is_checked_against_shadow(tmp_path):
    # the hash as Debian's passwd writes it (yescrypt), made by an independent tool
    hashed = subprocess.run(
        ["mkpasswd", "--method=yescrypt", "s3cret"], capture_output=True, text=True, check=True
    ).stdout.strip()
    layout = Layout(tmp_path)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/shadow").write_text(f"root:!:1::::::\nvzadmin:{hashed}:19000:0:99999:7:::\n")
    backend = Backend(layout, systemd=False)
    assert backend.check_admin_password("s3cret")
    assert not backend.check_admin_password("nope")
    (tmp_path / "etc/shadow").write_text("vzadmin:!:19000:0:99999:7:::\n")
    assert not backend.check_admin_password("")
