"""The vzrep console: status, network, pairing, rollback, log, support bundle and an admin shell.

One Textual screen per page, switched with the keys shown in the footer (F-keys work on the VM
console, letters over SSH). All machine access goes through :class:`~appliance.console.backend.Backend`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, ClassVar

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import (
    Button,
    DataTable,
    Footer,
    Header,
    Input,
    Label,
    RadioButton,
    RadioSet,
    RichLog,
    Static,
)

from appliance.console.backend import FAILOVER_STATES, Backend, NetworkSettings, verify_state, vm_state
from appliance.layout import Layout
from pairing.protocol import new_code
from vzcommon.climain import run_main
from vzcommon.errors import ExitCode


class ConfirmScreen(ModalScreen[bool]):
    """Yes/No before anything destructive."""

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box"):
            yield Label(self.question, id="question")
            with Horizontal():
                yield Button("Yes", id="yes", variant="error")
                yield Button("No", id="no", variant="primary")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class Page(Screen[None]):
    """A console page: header, body, footer with the page keys."""

    # Focus the first control, not the scroll container, so Enter works right after switching pages.
    AUTO_FOCUS = "Input, Button, RadioSet, DataTable"

    @property
    def backend(self) -> Backend:
        app = self.app
        assert isinstance(app, ConsoleApp)
        return app.backend

    def say(self, text: str, widget_id: str = "message") -> None:
        self.query_one(f"#{widget_id}", Static).update(text)


class StatusPage(Page):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("f5,u", "refresh", "Refresh")]

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll():
            yield Static(id="appliance")
            yield Static(id="pairing")
            yield Static(id="problems")
            yield Label("Replication jobs")
            yield DataTable(id="jobs", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#jobs", DataTable)
        table.add_columns(
            "VM", "State", "Last pass", "Result", "Throughput", "Restore points", "Last verify", "Rollback"
        )
        self.action_refresh()
        self.set_interval(10, self.action_refresh)

    def action_refresh(self) -> None:
        b = self.backend
        addresses = ", ".join(b.addresses()) or "(no IPv4 address)"
        self.query_one("#appliance", Static).update(
            f"Role: {b.role}    Host: {b.hostname()}    Addresses: {addresses}\nAgent: {b.agent_health()}"
        )
        pairing = b.pairing_status()
        peer = pairing.get("peer")
        own = pairing.get("own_fingerprint") or "not created yet"
        if isinstance(peer, dict):
            text = f"Paired with {peer.get('role')} {peer.get('name')} at {peer.get('address')}\n  peer key {peer.get('fingerprint')}"
        elif "error" in pairing:
            text = f"Pairing state unknown: {pairing['error']}"
        else:
            text = "Not paired (Pairing page: F3 / p)"
        self.query_one("#pairing", Static).update(f"{text}\n  this appliance's key {own}")
        problems = b.problems()
        self.query_one("#problems", Static).update(
            "Deployment problems:\n" + "\n".join(f"  ! {p}" for p in problems) if problems else ""
        )
        status = b.replication_status()
        table = self.query_one("#jobs", DataTable)
        table.clear()
        for vm in status.get("vms", []):
            last: dict[str, Any] = vm.get("last_pass") or {}
            state = vm_state(vm)
            result = "failed, rolled back" if vm.get("last_failure") else ("ok" if last else "-")
            table.add_row(
                str(vm.get("vm")), state, str(last.get("finished", "never")), result, _throughput(last),
                str(len(vm.get("restore_points") or [])), verify_state(vm),
                "PENDING" if vm.get("pending_rollback") else "-",
            )  # fmt: skip
        if status.get("error"):
            self.notify(f"status: {status['error']}", severity="error")


def _throughput(last: dict[str, Any]) -> str:
    if isinstance(last.get("throughput"), (int, float)):
        return f"{last['throughput'] / 2**20:.1f} MiB/s"
    sent, secs = last.get("bytes_sent"), last.get("duration")
    if isinstance(sent, (int, float)) and isinstance(secs, (int, float)) and secs > 0:
        return f"{sent / secs / 2**20:.1f} MiB/s"
    return "-"


class NetworkPage(Page):
    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll():
            with RadioSet(id="mode"):
                yield RadioButton("DHCP", id="dhcp")
                yield RadioButton("Static", id="static")
            yield Label("Address/prefix (static)")
            yield Input(placeholder="10.0.0.5/24", id="address")
            yield Label("Gateway (static)")
            yield Input(placeholder="10.0.0.1", id="gateway")
            yield Label("DNS servers (comma-separated)")
            yield Input(id="dns")
            yield Label("Hostname")
            yield Input(id="hostname")
            with Horizontal():
                yield Button("Apply", id="apply", variant="primary")
                yield Button("Revert", id="revert")
            yield Static(id="message")
        yield Footer()

    def on_mount(self) -> None:
        current = self.backend.network()
        self.query_one(f"#{current.mode}", RadioButton).value = True
        for name in ("address", "gateway", "dns", "hostname"):
            self.query_one(f"#{name}", Input).value = getattr(current, name)

    def settings(self) -> NetworkSettings:
        pressed = self.query_one("#mode", RadioSet).pressed_button
        values = {n: self.query_one(f"#{n}", Input).value for n in ("address", "gateway", "dns", "hostname")}
        return NetworkSettings(mode=pressed.id if pressed and pressed.id else "dhcp", **values)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "apply":
            try:
                self.say(self.backend.apply_network(self.settings()))
            except ValueError as exc:
                self.say(f"Not applied: {exc}")
        elif event.button.id == "revert":
            self.say(self.backend.revert_network())
            self.on_mount()


class PairingPage(Page):
    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll():
            if self.backend.role == "target":
                yield Label("Show a one-time code, then type it on the source's console (valid 15 minutes).")
                yield Button("Show pairing code", id="show-code", variant="primary")
                yield Static(id="code")
            else:
                yield Label("Target address")
                yield Input(placeholder="dr-target.example.com", id="peer")
                yield Label("Code shown on the target")
                yield Input(placeholder="XXXX-XXXX", id="pair-code")
                yield Button("Pair", id="pair", variant="primary")
            yield Button("Unpair", id="unpair", variant="error")
            yield Static(id="message")
        yield Footer()

    def on_mount(self) -> None:
        self.set_interval(1, self.poll_pairing)

    def poll_pairing(self) -> None:
        result = self.backend.pairing_result()
        if result is not None:
            self.say(
                "Paired.\n" + result.output if result.rc == 0 else f"Pairing ended: {result.output.strip()}"
            )
            self.query_one("#code", Static).update("")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "show-code":
            code = new_code()
            self.backend.start_pairing_code(code)
            self.query_one("#code", Static).update(f"Pairing code:  {code}\nWaiting for the source...")
        elif event.button.id == "pair":
            host = self.query_one("#peer", Input).value.strip()
            code = self.query_one("#pair-code", Input).value.strip()
            if not host or not code:
                self.say("Enter the target's address and the code it shows.")
                return
            result = self.backend.pair_with(host, code)
            self.say(result.output.strip() or f"exit code {result.rc}")
        elif event.button.id == "unpair":

            def done(yes: bool | None) -> None:
                if yes:
                    self.say(self.backend.unpair().output.strip())

            self.app.push_screen(
                ConfirmScreen("Forget the paired appliance? Replication stops until you pair again."), done
            )


class RollbackPage(Page):
    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll():
            yield Label("Choose a VM and press Roll back (restores the replica to its last complete pass).")
            yield DataTable(id="vms", cursor_type="row")
            yield Button("Roll back", id="rollback", variant="error")
            yield Static(id="message")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#vms", DataTable)
        table.add_columns("VM", "Pending rollback", "Last pass")
        for vm in self.backend.replication_status().get("vms", []):
            last = vm.get("last_pass") or {}
            table.add_row(
                str(vm.get("vm")),
                "yes" if vm.get("pending_rollback") else "no",
                str(last.get("finished", "never")),
                key=str(vm.get("vm")),
            )
        if not table.row_count:
            self.say("No replicas on this appliance.")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        table = self.query_one("#vms", DataTable)
        if not table.row_count:
            return
        vm = str(table.get_row_at(table.cursor_row)[0])

        def done(yes: bool | None) -> None:
            if yes:
                result = self.backend.rollback(vm)
                self.say(f"{vm}: {result.output.strip() or 'exit code ' + str(result.rc)}")

        self.app.push_screen(ConfirmScreen(f"Roll back VM {vm}?"), done)


def _when(t: object) -> str:
    import time as _time

    return (
        _time.strftime("%Y-%m-%d %H:%M", _time.localtime(float(t))) if isinstance(t, int | float) else "never"
    )


class JobsPage(Page):
    """The source's scheduled jobs: each VM's last success, next run and RPO; run a pass now, pause or
    resume its job. For the chosen VM, its restore points and failover state as the target holds them
    (asked on demand, over the job's tunnel), and a test failover of one point there and its end."""

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll():
            yield Label("Scheduled jobs (vzrep-source run): one row a VM")
            yield DataTable(id="job-vms", cursor_type="row")
            with Horizontal():
                yield Button("Run a pass now", id="run-now", variant="primary")
                yield Button("Pause job", id="pause")
                yield Button("Resume job", id="resume")
            yield Static(id="message")
            yield Label("On the target: press Restore points to ask it about the chosen VM")
            yield Static(id="target-state")
            yield DataTable(id="points", cursor_type="row")
            with Horizontal():
                yield Button("Restore points", id="fetch-points")
                yield Button("Test failover", id="test", variant="warning")
                yield Button("End test", id="end-test")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#job-vms", DataTable).add_columns(
            "Job", "VM", "Last success", "Next run", "RPO", "Paused", "Last error"
        )
        self.query_one("#points", DataTable).add_columns("Point", "Time", "Origin", "Held")
        self.rows: list[dict[str, Any]] = []
        self.points_of: tuple[str, str] | None = None  # (job file, VM) the points table shows
        self.points_kind = ""  # its replica's kind: "file" or "vsphere"
        self.refresh_jobs()
        self.set_interval(1, self.poll_pass)
        self.set_interval(10, self.refresh_jobs)

    def refresh_jobs(self) -> None:
        table = self.query_one("#job-vms", DataTable)
        row = table.cursor_row
        table.clear()
        self.rows = self.backend.jobs_status()
        for v in self.rows:
            table.add_row(
                str(v["job_name"]), str(v["vm"]), _when(v.get("last_success")),
                _when(v["next_run"]) if v.get("next_run") is not None else "running",
                "MISSED" if v.get("rpo_missed") else "ok", "yes" if v["paused"] else "-",
                str(v.get("last_error") or "-")[:60],
            )  # fmt: skip
        if not self.rows:
            self.say("No scheduled jobs yet: put job files in the jobs directory (docs/appliance.md).")
        else:
            table.move_cursor(row=min(row, table.row_count - 1))

    def poll_pass(self) -> None:
        result = self.backend.pass_result()
        if result is not None:
            self.say(result)
            self.refresh_jobs()

    def selected(self) -> dict[str, Any] | None:
        table = self.query_one("#job-vms", DataTable)
        return self.rows[table.cursor_row] if self.rows and table.cursor_row < len(self.rows) else None

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        v = self.selected()
        if event.data_table.id == "job-vms" and v is not None and (v["file"], v["vm"]) != self.points_of:
            self.show_target(None, {})  # another VM: the points shown were not its

    def on_button_pressed(self, event: Button.Pressed) -> None:
        v = self.selected()
        if v is None:
            return
        action = event.button.id
        if action == "run-now":
            self.backend.run_now(v["file"], v["vm"])
            self.say(f"{v['vm']}: a pass is running ...")
        elif action in ("pause", "resume"):
            result = self.backend.pause_job(v["file"], action == "pause")
            self.say(result.output.strip() or f"exit code {result.rc}")
            self.refresh_jobs()
        elif action == "fetch-points":
            self.say(f"{v['vm']}: asking the target ...", "target-state")
            self.ask_target(v["file"], v["vm"], "points", None)
        elif action in ("test", "end-test"):
            self.confirm_test(v, action)

    def confirm_test(self, v: dict[str, Any], action: str) -> None:
        """Asked first, as the target's Failover page asks before anything it cannot take back."""
        vm = str(v["vm"])
        points = self.query_one("#points", DataTable)
        if action == "test" and (self.points_of != (v["file"], vm) or not points.row_count):
            self.say(f"{vm}: press Restore points first, then choose the point to test")
            return
        point = str(points.get_row_at(points.cursor_row)[0]) if action == "test" else None
        what = (
            "The replica VM runs from it with its NICs disconnected; passes wait until the test ends."
            if self.points_kind == "vsphere"
            else "Its disks are exported there for a test VM; replication goes on."
        )
        question = (
            f"Start a test failover of {vm} at restore point {point} on the target? {what}"
            if action == "test"
            else f"End the test failover of {vm} on the target? What the test VM wrote is discarded."
        )

        def run(yes: bool | None) -> None:
            if yes:
                self.say(f"{vm}: {'starting' if point else 'ending'} the test failover on the target ...")
                self.ask_target(v["file"], vm, action, point)

        self.app.push_screen(ConfirmScreen(question), run)

    @work(thread=True, group="target")
    def ask_target(self, file: str, vm: str, action: str, point: str | None) -> None:
        """The agent's CLI, off the UI thread: the target may be far, slow, or not there at all."""
        b = self.backend
        if action == "points":
            doc = b.target_points(file, vm)
        else:
            doc = b.target_test_failover(file, vm, point, end=action == "end-test")
        self.app.call_from_thread(self.show_answer, file, vm, action, doc)

    def show_answer(self, file: str, vm: str, action: str, doc: dict[str, Any]) -> None:
        if not doc.get("ok"):
            error = str(doc.get("error") or "no answer")
            why = (
                "the target cannot be reached"
                if doc.get("exit_code")
                in (ExitCode.CONNECTION, ExitCode.HOST_KEY, ExitCode.AUTH, ExitCode.CIPHER)
                else "the target said no"
            )
            text = f"{vm}: {why}: {error}"
            if action == "points":
                self.show_target(None, {})
                self.say(text, "target-state")
            else:
                self.say(text)
            return
        self.show_target((file, vm), doc)
        if action != "points":
            self.say(f"{vm}: {doc.get('note') or 'done'}")

    def show_target(self, which: tuple[str, str] | None, doc: dict[str, Any]) -> None:
        """The points table and state line for ``which`` (None: nothing shown)."""
        self.points_of, self.points_kind = which, str(doc.get("kind", ""))
        table = self.query_one("#points", DataTable)
        table.clear()
        if which is None:
            self.say("", "target-state")
            return
        for p in doc.get("points", []):
            held = "live replica" if p.get("live") else f"{int(p.get('held_bytes') or 0) / 2**20:.1f} MiB"
            table.add_row(
                str(p.get("id")), str(p.get("time")), str(p.get("origin", "")), held, key=str(p.get("id"))
            )
        fo = doc.get("failover") or {}
        state = FAILOVER_STATES.get(str(fo.get("state")), str(fo.get("state"))) if fo else "no failover"
        if fo:
            state += f" at point {fo.get('point')} since {fo.get('since')}"
            state += f": {fo['detail']}" if fo.get("detail") else ""
        n = len(doc.get("points", [])) + int(doc.get("older_points") or 0)
        busy = "; a pass is running" if doc.get("pass_running") else ""
        self.say(f"{which[1]} on the target: {state}; {n} restore point(s){busy}", "target-state")


class FailoverPage(Page):
    """Each replica's state and restore points; a test failover and its end, or a real failover."""

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll():
            yield Label("Replicas (choose one; its restore points are listed below, newest first)")
            yield DataTable(id="replicas", cursor_type="row")
            yield DataTable(id="points", cursor_type="row")
            with Horizontal():
                yield Button("Test failover", id="test", variant="primary")
                yield Button("End failover", id="undo")
                yield Button("Fail over", id="start", variant="warning")
                yield Button("Commit", id="commit", variant="error")
            yield Static(id="message")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#replicas", DataTable).add_columns("VM", "State", "Restore points")
        self.query_one("#points", DataTable).add_columns("Point", "Time", "Origin", "Held")
        self.refresh_replicas()

    def refresh_replicas(self) -> None:
        table = self.query_one("#replicas", DataTable)
        row = table.cursor_row
        table.clear()
        for vm in self.backend.replication_status().get("vms", []):
            table.add_row(str(vm.get("vm")), vm_state(vm), str(len(vm.get("restore_points") or [])))
        if not table.row_count:
            self.say("No replicas on this appliance.")
            return
        table.move_cursor(row=min(row, table.row_count - 1))
        self.show_points()

    def selected_vm(self) -> str | None:
        table = self.query_one("#replicas", DataTable)
        return str(table.get_row_at(table.cursor_row)[0]) if table.row_count else None

    def show_points(self) -> None:
        vm = self.selected_vm()
        table = self.query_one("#points", DataTable)
        table.clear()
        for p in self.backend.points(vm) if vm else []:
            held = "live replica" if p.get("live") else f"{int(p.get('held_bytes') or 0) / 2**20:.1f} MiB"
            table.add_row(
                str(p.get("id")), str(p.get("time")), str(p.get("origin", "")), held, key=str(p.get("id"))
            )

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "replicas":
            self.show_points()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        vm, action = self.selected_vm(), str(event.button.id)
        if vm is None:
            return
        points = self.query_one("#points", DataTable)
        point = str(points.get_row_at(points.cursor_row)[0]) if points.row_count else None

        def run(yes: bool | None = True) -> None:
            if yes:
                result = self.backend.failover(vm, action, point)
                self.say(f"{vm}: {result.output.strip() or 'exit code ' + str(result.rc)}")
                self.refresh_replicas()

        if action == "test":
            run()  # a copy of the point: nothing of the replica changes
            return
        question = {
            "undo": f"End the failover of {vm}? What its VM wrote since is discarded.",
            "start": f"Fail {vm} over to restore point {point}? Passes from the source are refused until undo.",
            "commit": f"Commit the failover of {vm}? The replica becomes production; the way back is failback.",
        }[action]
        self.app.push_screen(ConfirmScreen(question), run)


class LogPage(Page):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("f5,u", "refresh", "Refresh")]

    def compose(self) -> ComposeResult:
        yield Header()
        yield RichLog(id="log", wrap=True, max_lines=5000)
        yield Footer()

    def on_mount(self) -> None:
        self.action_refresh()

    def action_refresh(self) -> None:
        log = self.query_one("#log", RichLog)
        log.clear()
        log.write(self.backend.agent_log())


class SupportPage(Page):
    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll():
            yield Label("Write a support bundle (logs, configs without secrets, versions) to:")
            yield Input(value=f"/var/tmp/vzrep-support-{time.strftime('%Y%m%d-%H%M%S')}.tar.gz", id="path")
            yield Button("Write bundle", id="write", variant="primary")
            yield Static(id="message")
        yield Footer()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        path = Path(self.query_one("#path", Input).value.strip())
        try:
            written = self.backend.write_support_bundle(path)
        except OSError as exc:
            self.say(f"Could not write the bundle: {exc}")
            return
        self.say(f"Wrote {written} ({written.stat().st_size} bytes). Copy it off with scp as vzadmin.")


class ShellPage(Page):
    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll():
            yield Label("Admin shell: enter the vzadmin password.")
            yield Input(password=True, id="password")
            yield Button("Open shell", id="open", variant="warning")
            yield Static(id="message")
        yield Footer()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.open_shell()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.open_shell()

    def open_shell(self) -> None:
        box = self.query_one("#password", Input)
        password, box.value = box.value, ""
        if not self.backend.check_admin_password(password):
            time.sleep(1)  # slows down guessing at the console
            self.say("Wrong password (or no admin password was set at deployment).")
            return
        self.say("")
        app = self.app
        assert isinstance(app, ConsoleApp)
        app.run_shell()


PAGES = {
    "status": StatusPage,
    "network": NetworkPage,
    "pairing": PairingPage,
    "rollback": RollbackPage,
    "failover": FailoverPage,
    "jobs": JobsPage,
    "log": LogPage,
    "support": SupportPage,
    "shell": ShellPage,
}


class ConsoleApp(App[None]):
    TITLE = "vzrep appliance console"
    CSS = """
    #confirm-box { width: 60; height: auto; border: thick $error; padding: 1 2; background: $surface; }
    ConfirmScreen { align: center middle; }
    Input { width: 60; }
    Horizontal { height: auto; }
    #message { margin-top: 1; }
    """
    MODES: ClassVar[dict[str, Any]] = dict(PAGES)
    DEFAULT_MODE = "status"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f1,s", "switch_mode('status')", "Status"),
        Binding("f2,n", "switch_mode('network')", "Network"),
        Binding("f3,p", "switch_mode('pairing')", "Pairing"),
        Binding("f4,r", "switch_mode('rollback')", "Rollback"),
        Binding("f9,o", "switch_mode('failover')", "Failover"),
        Binding("f10,j", "switch_mode('jobs')", "Jobs"),
        Binding("f6,l", "switch_mode('log')", "Log"),
        Binding("f7,b", "switch_mode('support')", "Support"),
        Binding("f8,x", "switch_mode('shell')", "Shell"),
    ]

    def __init__(self, backend: Backend | None = None) -> None:
        super().__init__()
        self.backend = backend or Backend()
        self.sub_title = f"{self.backend.role} {self.backend.hostname()}"

    def run_shell(self) -> None:
        import subprocess

        with self.suspend():
            subprocess.call(self.backend.shell_command())

    def on_unmount(self) -> None:
        self.backend.stop_pairing()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vzrep-console", description="vzrep appliance console")
    ap.add_argument("--root", type=Path, default=Path("/"), help="appliance root (for testing)")
    ap.add_argument("--no-systemd", action="store_true", help="do not call systemctl/journalctl/networkctl")
    ap.add_argument(
        "--agent-cli",
        action="append",
        default=[],
        metavar="ROLE=COMMAND",
        help="command line of an agent CLI, e.g. 'target=python -m target_agent.cli'",
    )
    ap.add_argument(
        "--pairing-listen", metavar="HOST:PORT", help="pairing port address (default 0.0.0.0:2223)"
    )
    ap.set_defaults(func=_run)
    return run_main("vzrep-console", ap, argv, "the console closed")


def _run(args: argparse.Namespace) -> int:
    backend = Backend(Layout(args.root), systemd=not args.no_systemd, pairing_listen=args.pairing_listen)
    for item in args.agent_cli:
        role, _, command = item.partition("=")
        backend.agent_cli[role] = command.split()
    ConsoleApp(backend).run()
    return 0
