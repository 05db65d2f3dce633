"""Every exit code the README documents, reached through the real ``vzrep-source`` command line.

The source runs as a subprocess, as a user runs it; the target is in this process (so a test can
make it fail in one chosen way) or is something else listening on 127.0.0.1 (OpenSSH's sshd, a
server that speaks garbage). Where a pass got as far as the replica, the replica is checked to be
byte-for-byte what it was before.
"""

from __future__ import annotations

import asyncio
import errno
import json
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from target_agent import session as target_session
from target_agent.server import Stream, start_server
from target_agent.storage import failover
from target_agent.storage import replica as target_replica
from target_agent.storage.lock import VmLock
from tests.support.agents import Keys, Target, snapshot, wait_idle
from tests.support.jobs import write_job
from tests.support.openssh import free_port
from tests.support.tools import change_blocks, make_image
from vzcommon.errors import ExitCode
from vzcommon.keys import generate, known_hosts_line
from vzcommon.ssh import asyncssh

REPO = Path(__file__).resolve().parents[2]
VM = "web01"


def documented_codes() -> set[int]:
    text = (REPO / "README.md").read_text()
    table = text[text.index("### Exit codes") :]
    table = table[: table.index("\n\n", table.index("| code |"))]
    return {int(m) for m in re.findall(r"^\| (\d+) \|", table, re.M)}


async def source(*args: str, prelude: str = "", timeout: float = 120) -> tuple[int, str]:
    """Run ``vzrep-source ARGS`` (after ``prelude``, Python run first in the same process)."""
    code = f"{prelude}\nimport sys\nfrom source_agent.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


class Setup:
    def __init__(self, tmp_path: Path, keys: Keys, target: Target) -> None:
        self.tmp, self.keys, self.target = tmp_path, keys, target
        self.disk = make_image(tmp_path / "disk0.img", 8 << 20, data_blocks=40)
        self.state = tmp_path / "state"

    def args(
        self, port: int | None = None, known_hosts: Path | None = None, identity: Path | None = None
    ) -> list[str]:
        port = port or self.target.port
        kh = known_hosts or self.keys.known_hosts(port, f"kh-{port}")
        return [
            "pass",
            "--target",
            f"127.0.0.1:{port}",
            "--identity",
            str(identity or self.keys.client_key),
            "--known-hosts",
            str(kh),
            "--vm",
            VM,
            "--disk",
            str(self.disk),
            "--state-dir",
            str(self.state),
            "--no-progress",
        ]

    async def replicated(self) -> dict[str, str]:
        """A first pass committed, then the source changed: what the replica holds now."""
        rc, err = await source(*self.args())
        assert rc == 0, err
        change_blocks(self.disk, 10, seed=5)
        return snapshot(self.target.vm(VM))


async def fails_and_keeps_the_replica(
    setup: Setup, before: dict[str, str], code: ExitCode, text: str
) -> None:
    """A pass through the CLI exits with ``code`` saying ``text``; the replica is as it was."""
    rc, err = await source(*setup.args())
    assert rc == code, err
    assert text in err
    await wait_idle(setup.target.vm(VM))
    assert snapshot(setup.target.vm(VM)) == before


@pytest.fixture
async def setup(tmp_path: Path, session_keys: Keys, target: Target) -> AsyncIterator[Setup]:
    yield Setup(tmp_path, session_keys, target)


async def test_0_success(setup: Setup) -> None:
    rc, err = await source(*setup.args())
    assert (rc, err) == (0, "")
    assert (setup.target.vm(VM) / "disk0-flat.vmdk").exists()


async def test_1_internal_error_is_one_line_naming_the_bug(setup: Setup) -> None:
    before = await setup.replicated()
    boom = (
        "from source_agent import pipeline\n"
        "def scan(*a, **k): raise RuntimeError('injected bug')\n"
        "pipeline.DiskScanner.scan = scan\n"
        "pipeline.DiskScanner._scan_ahead = scan\n"
    )
    rc, err = await source(*setup.args(), prelude=boom)
    assert rc == ExitCode.INTERNAL == 1
    assert "vzrep-source: internal error: RuntimeError: injected bug (rerun with VZREP_DEBUG=1" in err
    await wait_idle(setup.target.vm(VM))
    assert snapshot(setup.target.vm(VM)) == before


async def test_2_bad_command_line(setup: Setup) -> None:
    rc, err = await source(*setup.args(), "--block-size", "3K")
    assert rc == ExitCode.USAGE == 2
    assert "--block-size" in err


async def test_3_bad_input(setup: Setup) -> None:
    args = setup.args()
    args[args.index(str(setup.disk))] = str(setup.tmp / "no-such-disk.img")
    rc, err = await source(*args)
    assert rc == ExitCode.INPUT == 3
    assert "no-such-disk.img" in err


async def test_4_connection_refused(setup: Setup) -> None:
    rc, err = await source(*setup.args(port=free_port()))
    assert rc == ExitCode.CONNECTION == 4
    assert err.startswith("vzrep-source: ") and err.count("\n") == 1


async def test_a_failed_pass_with_json_prints_a_json_error(setup: Setup) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "source_agent.cli", *setup.args(port=free_port()), "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == ExitCode.CONNECTION
    doc = json.loads(out)
    assert doc["ok"] is False and doc["exit_code"] == ExitCode.CONNECTION and doc["vm"] == VM
    assert doc["error"] in err.decode()  # the same message, also as the one line on stderr


async def test_5_host_key_not_the_pinned_one(setup: Setup) -> None:
    other_pub, _ = generate(setup.tmp / "other_host_key")
    kh = setup.tmp / "kh-other"
    kh.write_text(known_hosts_line("127.0.0.1", setup.target.port, other_pub))
    rc, err = await source(*setup.args(known_hosts=kh))
    assert rc == ExitCode.HOST_KEY == 5
    assert "host key" in err


async def test_6_our_key_refused(setup: Setup) -> None:
    generate(setup.tmp / "stranger")
    rc, err = await source(*setup.args(identity=setup.tmp / "stranger"))
    assert rc == ExitCode.AUTH == 6
    assert "refused our key" in err


async def source_against_asyncssh(setup: Setup, **algs: list[str]) -> tuple[int, str]:
    """A pass against a bare asyncssh server offering only ``algs`` (it answers a failed negotiation
    with a DISCONNECT; OpenSSH's sshd may reset the connection instead, see test_bad_input)."""
    server = await asyncssh.create_server(
        asyncssh.SSHServer, "127.0.0.1", 0, server_host_keys=[str(setup.keys.host_key)], **algs
    )
    try:
        return await source(*setup.args(port=server.sockets[0].getsockname()[1]))
    finally:
        server.close()
        await server.wait_closed()


async def test_7_no_aes256_cipher_in_common(setup: Setup) -> None:
    """A server that offers only AES-128."""
    rc, err = await source_against_asyncssh(setup, encryption_algs=["aes128-ctr", "aes128-gcm@openssh.com"])
    assert rc == ExitCode.CIPHER == 7, err
    assert "no AES-256 cipher" in err


async def test_7_no_key_exchange_in_common(setup: Setup) -> None:
    """A server that offers only ecdh-sha2-nistp256 (an ssh-audit failure): the source refuses it and
    says that key exchange is what failed."""
    rc, err = await source_against_asyncssh(setup, kex_algs=["ecdh-sha2-nistp256"])
    assert rc == ExitCode.CIPHER == 7, err
    assert "no key exchange in common" in err and "curve25519-sha256" in err and err.count("\n") == 1


async def test_8_protocol_error_from_a_target_speaking_garbage(setup: Setup) -> None:
    async def garbage(stream: Stream, peer: str) -> None:
        await stream.write(b"HTTP/1.1 400 Bad Request\r\n\r\n" * 4)
        await stream.read()

    server, port = await start_server(
        garbage, "127.0.0.1", 0, setup.keys.host_key, setup.keys.authorized_keys
    )
    try:
        rc, err = await source(*setup.args(port=port))
    finally:
        server.close()
        await server.wait_closed()
    assert rc == ExitCode.PROTOCOL == 8
    assert "frame magic" in err


async def test_9_target_storage_full(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    before = await setup.replicated()

    def full(self: object, *args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(target_replica.DiskWriter, "write_block", full)
    assert ExitCode.STORAGE == 9
    await fails_and_keeps_the_replica(setup, before, ExitCode.STORAGE, "No space left on device")


async def test_10_a_pass_of_this_vm_is_running(setup: Setup) -> None:
    before = await setup.replicated()
    with VmLock(setup.target.vm(VM), VM):
        rc, err = await source(*setup.args())
    assert rc == ExitCode.BUSY == 10
    assert "already running" in err
    assert snapshot(setup.target.vm(VM)) == before


async def test_11_a_block_fails_its_hash(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    before = await setup.replicated()
    monkeypatch.setattr(target_session, "hash_block", lambda data: bytes(32))
    assert ExitCode.INTEGRITY == 11
    await fails_and_keeps_the_replica(setup, before, ExitCode.INTEGRITY, "does not match its hash")


async def test_12_vsphere_refused_or_unreachable(setup: Setup) -> None:
    creds = setup.tmp / "creds"
    creds.write_text("user=administrator@vsphere.local\npassword=x\n")
    creds.chmod(0o600)
    rc, err = await source(
        *setup.args()[:9], "--vcenter", f"127.0.0.1:{free_port()}", "--credentials", str(creds), "--insecure"
    )
    assert rc == ExitCode.VSPHERE == 12, err
    assert "cannot reach" in err


async def test_the_credentials_files_host_line_stands_for_vcenter(setup: Setup) -> None:
    """docs/vsphere.md documents a host line in the credentials file: `pass` uses it without --vcenter."""
    creds = setup.tmp / "creds"
    creds.write_text(f"host = 127.0.0.1:{free_port()}\nuser = administrator@vsphere.local\npassword = x\n")
    creds.chmod(0o600)
    rc, err = await source(*setup.args()[:9], "--credentials", str(creds), "--insecure")
    assert rc == ExitCode.VSPHERE, err  # it tried that host (nothing listens there)
    assert "cannot reach" in err and "unrecognized arguments" not in err


async def test_13_the_target_failed_the_pass_itself_and_rolled_back(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = await setup.replicated()

    def bug(self: object, *args: object, **kwargs: object) -> None:
        raise KeyError("a bug on the target")

    monkeypatch.setattr(target_replica.DiskWriter, "write_block", bug)
    assert ExitCode.ROLLED_BACK == 13
    await fails_and_keeps_the_replica(
        setup, before, ExitCode.ROLLED_BACK, "target failed the pass: internal error on the target: KeyError"
    )


async def test_14_pairing_with_a_wrong_code(setup: Setup) -> None:
    port = free_port()
    serve = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "target_agent.cli", "pair", "--keys-dir", str(setup.tmp / "tkeys"), "--code",
        "KX7P-22QM", "--listen", f"127.0.0.1:{port}", "--expires", "60", "--agent-port", "2222",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the pairing port did not open"
                await asyncio.sleep(0.05)
        rc, err = await source(
            "pair", "--keys-dir", str(setup.tmp / "skeys"), "--port", str(port), "127.0.0.1", "AAAA-BBBB"
        )
    finally:
        serve.terminate()
        await serve.wait()
    assert rc == ExitCode.PAIRING == 14, err
    assert err.strip()
    assert not (setup.tmp / "skeys" / "known_hosts").exists()


async def test_15_the_replica_is_failed_over(setup: Setup) -> None:
    await setup.replicated()
    failover.start(setup.target.data_dir, VM, None)
    before = snapshot(setup.target.vm(VM))
    rc, err = await source(*setup.args())
    assert rc == ExitCode.FAILED_OVER == 15
    assert "is failed-over" in err and "failover --undo" in err
    assert snapshot(setup.target.vm(VM)) == before


async def job_run(*args: str) -> tuple[int, str, str]:
    """``vzrep-source job run ARGS`` as a user runs it: exit code, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "source_agent.cli", "job", "run", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_16_a_job_with_seeding_skips_a_vm_the_target_holds_no_replica_of(setup: Setup) -> None:
    await setup.replicated()  # web01 has a replica (seeded); db01 has none
    other = make_image(setup.tmp / "db01.img", 4 << 20, data_blocks=5)
    vms = [{"name": VM, "disks": [f"disk0={setup.disk}"]}, {"name": "db01", "disks": [f"disk0={other}"]}]
    job = write_job(setup.tmp / "job.toml", setup.target, vms, state_dir=setup.state, seeding=True)
    rc, out, err = await job_run(str(job))
    assert rc == ExitCode.NOT_SEEDED == 16, err
    assert "vzrep pass of VM web01 to 127.0.0.1" in out and "committed, generation" in out
    assert (
        "vzrep pass of VM db01: SKIPPED" in out and "1 replicated, 1 skipped, 0 failed; exit code 16" in out
    )
    assert not setup.target.vm("db01").exists()
    rc, out, _ = await job_run(str(job), "--json")
    doc = json.loads(out)
    assert rc == 16 and doc["summary"]["replicated"] == [VM] and doc["summary"]["skipped"][0]["vm"] == "db01"
    assert [v["status"] for v in doc["vms"]] == ["replicated", "skipped"] and doc["summary"][
        "exit_code"
    ] == 16


async def test_17_a_job_in_which_a_vm_failed(setup: Setup) -> None:
    vms = [
        {"name": VM, "disks": [f"disk0={setup.disk}"]},
        {"name": "db01", "disks": [f"disk0={setup.tmp / 'no-such.img'}"]},
    ]
    job = write_job(setup.tmp / "job.toml", setup.target, vms, state_dir=setup.state, parallel=2)
    rc, out, err = await job_run(str(job))
    assert rc == ExitCode.JOB_FAILED == 17, err
    assert "1 replicated, 0 skipped, 1 failed; exit code 17" in out
    assert "failed: db01 (exit code 3): " in out and "no-such.img" in out
    assert (setup.target.vm(VM) / "disk0-flat.vmdk").exists()  # the other VM went on


async def test_130_ctrl_c_rolls_the_pass_back(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    before = await setup.replicated()
    change_blocks(setup.disk, 60, seed=9)
    writing = asyncio.Event()
    real = target_replica.DiskWriter.write_block
    loop = asyncio.get_running_loop()

    def slow(self: target_replica.DiskWriter, *args: object, **kwargs: object) -> object:
        loop.call_soon_threadsafe(writing.set)
        time.sleep(0.2)  # the target's writer thread: a slow replica disk
        return real(self, *args, **kwargs)

    monkeypatch.setattr(target_replica.DiskWriter, "write_block", slow)
    # A shell starts background jobs with SIGINT ignored, and Python keeps an ignored SIGINT ignored:
    # give the source the disposition a terminal gives it, whatever ran this suite.
    code = (
        "import signal, sys\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from source_agent.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        *setup.args(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await asyncio.wait_for(writing.wait(), 60)
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == ExitCode.INTERRUPTED == 130
    assert "vzrep-source: interrupted; the target rolls the pass back" in err.decode()
    await wait_idle(setup.target.vm(VM), limit=60)
    assert snapshot(setup.target.vm(VM)) == before


def test_every_documented_code_has_its_test_here() -> None:
    """The README's table, the ExitCode enum and the tests above name the same codes."""
    tested = {int(n) for n in re.findall(r"^async def test_(\d+)_", Path(__file__).read_text(), re.M)}
    assert documented_codes() == {int(c) for c in ExitCode} == tested
