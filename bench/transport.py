"""The transport floor: what asyncssh alone costs to move the bytes of an incremental pass.

Scenario (b) sends 1311 changed 64 KiB blocks (82 MiB). This measures, side by side on loopback:

* **asyncssh alone**: one process writes the same number of bytes in 64 KiB writes (draining every
  MiB, as the source does) into the ``vzrep`` subsystem of another, which reads and discards them;
  both with the tunnel's policy (AES-256-GCM, 16 MiB window, 256 KiB packets). CPU per side from
  ``getrusage`` around the transfer only.
* **a vzrep pass of the same bytes**: an image of that size, every block changed (a new random
  image over the replica of another one), so each block is read, hashed, framed, sent, verified,
  saved to ``.vzundo`` and written. Source CPU is the whole process (start-up included); target CPU
  is the pass's share of the running target's.

The gap between the two is what vzrep itself adds per byte moved (framing, the writer, undo, the
GIL between threads); the floor is what any pass pays for asyncssh's Python packet path.

Run: ``python -m bench.transport`` (standalone; not part of ``make bench``'s default tables).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .peers import MiB, VzrepKeys, VzrepTarget, knob_env, run_measured

WRITE = 64 * 1024 + 64  # one BLOCK frame: a 64 KiB payload and its header
BLOCKS = 1311  # scenario (b)'s changed blocks


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _serve(keys: Path, port_file: Path) -> None:
    from vzcommon import tunnel_policy as policy
    from vzcommon.ssh import asyncssh, kex_algs

    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def sink(proc: Any) -> None:
        c0, t0, n = _cpu(), time.perf_counter(), 0
        while data := await proc.stdin.read(policy.read_size()):
            n += len(data)
        result = {"bytes": n, "cpu": _cpu() - c0, "seconds": time.perf_counter() - t0}
        proc.stdout.write(json.dumps(result).encode())
        await proc.stdout.drain()
        proc.exit(0)
        done.set_result(None)

    server = await asyncssh.listen(
        "127.0.0.1", 0, server_host_keys=[str(keys / "host_key")],
        authorized_client_keys=str(keys / "authorized_keys"), process_factory=sink, encoding=None,
        encryption_algs=list(policy.ENCRYPTION_ALGS), mac_algs=list(policy.MAC_ALGS),
        kex_algs=kex_algs(), compression_algs=list(policy.COMPRESSION_ALGS),
        window=policy.WINDOW, max_pktsize=policy.MAX_PKTSIZE, password_auth=False,
    )  # fmt: skip
    port_file.write_text(str(server.sockets[0].getsockname()[1]))
    await done
    await asyncio.sleep(0.2)  # let the exit status reach the client
    server.close()


async def _send(keys: Path, port: int, nbytes: int) -> dict[str, Any]:
    from vzcommon import tunnel_policy as policy
    from vzcommon.ssh import asyncssh, kex_algs

    conn = await asyncssh.connect(
        "127.0.0.1", port, username="vzrep", client_keys=[str(keys / "client_key")],
        known_hosts=str(keys / f"known_hosts-{port}"), config=[], agent_path=None,
        encryption_algs=list(policy.ENCRYPTION_ALGS), mac_algs=list(policy.MAC_ALGS),
        kex_algs=kex_algs(), compression_algs=list(policy.COMPRESSION_ALGS),
    )  # fmt: skip
    async with conn:
        writer, reader, _ = await conn.open_session(
            subsystem=policy.SUBSYSTEM, encoding=None, window=policy.WINDOW, max_pktsize=policy.MAX_PKTSIZE
        )
        frames = [os.urandom(WRITE) for _ in range(8)]
        c0, t0, sent, unflushed = _cpu(), time.perf_counter(), 0, 0
        while sent < nbytes:
            frame = frames[(sent // WRITE) % len(frames)][: nbytes - sent]
            writer.write(frame)
            sent += len(frame)
            unflushed += len(frame)
            if unflushed >= 1 << 20:  # the source drains every MiB (source_agent.session.DRAIN_BYTES)
                await writer.drain()
                unflushed = 0
        writer.write_eof()
        server = json.loads(await reader.read())
        result = {"seconds": time.perf_counter() - t0, "cpu_client": _cpu() - c0, "cpu_server": server["cpu"]}
    return result


def asyncssh_alone(keys: VzrepKeys, nbytes: int) -> dict[str, Any]:
    port_file = keys.dir / f"transport-port-{time.monotonic_ns()}"
    me = [sys.executable, "-m", "bench.transport"]
    server = subprocess.Popen([*me, "serve", str(keys.dir), str(port_file)], env=knob_env(None))
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the asyncssh sink did not start")
            time.sleep(0.02)
        port = int(port_file.read_text())
        keys.known_hosts(port)
        out = subprocess.run([*me, "send", str(keys.dir), str(port), str(nbytes)], capture_output=True,
                             check=True, env=knob_env(None))  # fmt: skip
        return dict(json.loads(out.stdout))
    finally:
        server.wait(10)
        port_file.unlink(missing_ok=True)


def _target_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vzrep_same_bytes(work: Path, keys: VzrepKeys, nbytes: int) -> dict[str, Any]:
    """A pass that overwrites every block of an ``nbytes`` replica (undo included)."""
    disk, state = work / "transport.img", work / "transport-state"
    target = VzrepTarget(work / "transport-replicas", keys, work / "transport-target.log").start()
    try:
        cmd = [
            sys.executable, "-m", "bench.agent", "source", "pass", "--target", f"127.0.0.1:{target.port}",
            "--identity", str(keys.client_key), "--known-hosts", str(keys.known_hosts(target.port)),
            "--vm", "transport", "--disk", f"d={disk}", "--json", "--no-progress", "--state-dir", str(state),
            "--compress", "none",
        ]  # fmt: skip
        runs = []
        for _ in range(2):  # the first pass creates the replica; the second overwrites every block
            disk.write_bytes(os.urandom(nbytes))
            subprocess.run(["cat", str(disk)], stdout=subprocess.DEVNULL, check=True)  # warm, as (b)
            assert target.proc is not None
            c0 = _target_cpu(target.proc.pid)
            done = run_measured(timed_cpu(cmd), env=knob_env(None))
            if done.returncode:
                raise RuntimeError(done.stderr.decode(errors="replace")[-1500:])
            report = json.loads(done.stdout)
            runs.append({
                "seconds": done.seconds, "pass_seconds": report["seconds"],
                "disk_seconds": report["disks"][0]["seconds"],
                "cpu_source": _source_cpu(done.stderr), "cpu_target": _target_cpu(target.proc.pid) - c0,
                "blocks_changed": report["total"]["blocks_changed"],
            })  # fmt: skip
        return runs[-1]
    finally:
        target.stop()


def timed_cpu(cmd: list[str]) -> list[str]:
    """``cmd`` under ``/usr/bin/time``, which appends the child's user + system CPU to stderr."""
    return ["/usr/bin/time", "-f", "vzbench-cpu %U %S", *cmd]


def _source_cpu(stderr: bytes) -> float:
    for line in reversed(stderr.decode(errors="replace").splitlines()):
        if line.startswith("vzbench-cpu "):
            _, user, system = line.split()
            return float(user) + float(system)
    return 0.0


def run(nbytes: int = BLOCKS * 64 * 1024, repeat: int = 3) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="vzrep-transport-"))
    try:
        keys = VzrepKeys(work / "keys").make()
        raw = [asyncssh_alone(keys, nbytes) for _ in range(repeat)]
        vz = [vzrep_same_bytes(work, keys, nbytes) for _ in range(repeat)]
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return {"bytes": nbytes, "asyncssh": raw, "vzrep": vz}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "serve":
        asyncio.run(_serve(Path(args[1]), Path(args[2])))
        return 0
    if args and args[0] == "send":
        print(json.dumps(asyncio.run(_send(Path(args[1]), int(args[2]), int(args[3])))))
        return 0
    ap = argparse.ArgumentParser(prog="python -m bench.transport", description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path, default=Path("build/transport.json"))
    opts = ap.parse_args(args)
    rep = run(repeat=opts.repeat)
    opts.json.parent.mkdir(parents=True, exist_ok=True)
    opts.json.write_text(json.dumps(rep, indent=2))
    print(f"moving {rep['bytes'] / MiB:.1f} MiB over loopback (all runs; vzrep: every block overwritten):")
    for r in rep["asyncssh"]:
        print(f"  asyncssh alone  {r['seconds']:.3f} s   CPU client {r['cpu_client']:.2f} s, server {r['cpu_server']:.2f} s")
    for r in rep["vzrep"]:
        print(
            f"  vzrep pass      {r['disk_seconds']:.3f} s (disk phase; pass {r['pass_seconds']:.2f} s,"
            f" process {r['seconds']:.2f} s)"
            f"   CPU source {r['cpu_source']:.2f} s (start-up included), target {r['cpu_target']:.2f} s"
        )
    print(f"figures: {opts.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
