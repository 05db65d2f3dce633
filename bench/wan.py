"""Scenario (c): the full and the 2 % incremental pass over a WAN link, against rsync over OpenSSH.

The link is made here, on 127.0.0.1, in a network namespace of its own (``unshare -n``: nothing of
the host's network is touched, and it is gone when the benchmark ends): an HTB qdisc on ``lo``
limits the traffic to and from the far side's ports to the link rate (100 Mbit/s), and a user-space
delay line -- this kernel has no ``netem`` -- holds every chunk for half the round-trip time in each
direction (40 ms RTT), pipelined, so the bandwidth-delay product is in flight as on a real link.
vzrep's target and OpenSSH's sshd sit behind the same link. Each run is reported against the link's
limit (the bytes that crossed it / its rate) and against rsync. Where a namespace or a qdisc cannot
be made, the scenario says so in one line and is skipped.

    python -m bench.wan [--size-gib 4] [--rate-mbit 100] [--rtt-ms 40]   (make bench-wan)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .context import Context, prepare
from .images import ChangeSet, build_mixed
from .peers import GiB, VzrepTarget, run_measured, ssh_transferred, tool

IN_NAMESPACE = "VZREP_BENCH_WAN_NETNS"


class DelayLine:
    """A TCP relay on 127.0.0.1 that delivers every chunk ``delay`` seconds after it arrived, in each
    direction, without waiting for one chunk before reading the next (at most ``cap`` bytes held)."""

    def __init__(self, upstream: int, delay: float, cap: int) -> None:
        self.upstream, self.delay, self.cap = upstream, delay, cap
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> DelayLine:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held: collections.deque[tuple[float, bytes]] = collections.deque()
        size = 0
        more, room = asyncio.Event(), asyncio.Event()
        room.set()
        done = False

        async def read() -> None:
            nonlocal size, done
            while data := await r.read(65536):
                held.append((time.monotonic() + self.delay, data))
                size += len(data)
                more.set()
                if size >= self.cap:
                    room.clear()
                    await room.wait()
            done = True
            more.set()

        async def write() -> None:
            nonlocal size
            while True:
                while not held:
                    if done:
                        if w.can_write_eof():
                            w.write_eof()
                        return
                    more.clear()
                    await more.wait()
                due, data = held.popleft()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                w.write(data)
                await w.drain()
                size -= len(data)
                if size < self.cap:
                    room.set()

        await asyncio.gather(read(), write())

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection("127.0.0.1", self.upstream)
        try:
            await asyncio.gather(self._pipe(cr, sw), self._pipe(sr, cw))
        except (ConnectionError, OSError, asyncio.CancelledError):  # closed, or the line stops
            pass
        finally:
            for w in (cw, sw):
                w.close()


def _tc(*args: str) -> None:
    subprocess.run([tool("tc"), *args], check=True, capture_output=True)


def shape(ports: list[int], rate_mbit: float) -> None:
    """HTB on lo: traffic to and from ``ports`` at the link rate each way, the rest unlimited."""
    _tc("qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "10")
    _tc("class", "add", "dev", "lo", "parent", "1:", "classid", "1:10", "htb", "rate", "40gbit")
    for cls in ("1:20", "1:30"):
        _tc("class", "add", "dev", "lo", "parent", "1:", "classid", cls, "htb",
            "rate", f"{rate_mbit}mbit", "ceil", f"{rate_mbit}mbit", "burst", "64k", "cburst", "64k")  # fmt: skip
    for port in ports:
        for field, cls in (("dport", "1:20"), ("sport", "1:30")):
            _tc("filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
                "match", "ip", field, str(port), "0xffff", "flowid", cls)  # fmt: skip


def vzrep_over(target: VzrepTarget, port: int, image: Path, state: Path, ctx: Context) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "bench.agent", "source", "pass", "--target", f"127.0.0.1:{port}",
        "--identity", str(ctx.keys.client_key), "--known-hosts", str(ctx.keys.known_hosts(port)),
        "--vm", "wan", "--disk", str(image), "--json", "--no-progress", "--state-dir", str(state),
    ]  # fmt: skip
    prepare(image)
    done = run_measured(cmd)
    if done.returncode:
        raise RuntimeError(f"vzrep over the WAN link failed: {done.stderr.decode(errors='replace')[-1500:]}")
    report = json.loads(done.stdout)
    return {"seconds": done.seconds, "app_bytes": report["wire_bytes_sent"] + report["wire_bytes_received"]}


def rsync_over(ctx: Context, port: int, image: Path, dest: Path) -> dict[str, Any]:
    args = ctx.sshd.ssh_args()
    args[args.index("-p") + 1] = str(port)
    args[1:1] = ["-o", f"HostKeyAlias=[127.0.0.1]:{ctx.sshd.port}"]  # the pinned key, through the relay
    cmd = [tool("rsync"), "--inplace", "--no-whole-file", "--stats", "-e", " ".join(args), str(image),
           f"127.0.0.1:{dest}"]  # fmt: skip
    prepare(image)
    done = run_measured(cmd)
    if done.returncode:
        raise RuntimeError(f"rsync over the WAN link failed: {done.stderr.decode(errors='replace')[-800:]}")
    sent, recv = ssh_transferred(done.stderr)
    return {"seconds": done.seconds, "app_bytes": sent + recv}


def run(size: int, rate_mbit: float, rtt_ms: float, work: Path) -> dict[str, Any]:
    subprocess.run([tool("ip"), "link", "set", "lo", "up"], check=True)
    rate = rate_mbit * 1e6 / 8
    ctx = Context(work).start()
    target = VzrepTarget(ctx.data_dir, ctx.keys, work / "target.log")
    target.start()
    lines: list[DelayLine] = []
    try:
        shape([target.port, ctx.sshd.port], rate_mbit)
        bdp = int(rate * rtt_ms / 1000)
        vz_line = DelayLine(target.port, rtt_ms / 2000, cap=2 * bdp + (1 << 20)).start()
        ssh_line = DelayLine(ctx.sshd.port, rtt_ms / 2000, cap=2 * bdp + (1 << 20)).start()
        lines += [vz_line, ssh_line]
        image = work / "wan.img"
        build_mixed(image, size)
        dest = work / "rsync-dest.img"
        out: dict[str, Any] = {"size": size, "rate_mbit": rate_mbit, "rtt_ms": rtt_ms}
        print(f"(c) WAN {rate_mbit:g} Mbit/s, {rtt_ms:g} ms RTT: full passes ...", flush=True)
        out["full"] = {"vzrep": vzrep_over(target, vz_line.port, image, work / "state", ctx),
                       "rsync": rsync_over(ctx, ssh_line.port, image, dest)}  # fmt: skip
        changes = ChangeSet(image)
        out["changed_blocks"] = changes.apply()
        old = time.time() - 3600
        os.utime(dest, (old, old))  # rsync's quick check must not skip it
        print("(c) WAN: incremental passes after 2 % changed ...", flush=True)
        out["incremental"] = {"vzrep": vzrep_over(target, vz_line.port, image, work / "state", ctx),
                              "rsync": rsync_over(ctx, ssh_line.port, image, dest)}  # fmt: skip
        for kind in ("full", "incremental"):
            for who in ("vzrep", "rsync"):
                r = out[kind][who]
                r["link_limit_seconds"] = r["app_bytes"] / rate
                r["vs_link_limit"] = r["seconds"] / r["link_limit_seconds"] if r["app_bytes"] else 0.0
            out[kind]["speedup_vs_rsync"] = out[kind]["rsync"]["seconds"] / out[kind]["vzrep"]["seconds"]
        out["ssh_window_cap_mb_s"] = (16 << 20) / (rtt_ms / 1000) / 1e6  # tunnel_policy.WINDOW / RTT
        return out
    finally:
        for line in lines:
            line.stop()
        target.stop()
        ctx.stop()


def table(out: dict[str, Any]) -> str:
    rows = [f"(c) WAN link {out['rate_mbit']:g} Mbit/s, {out['rtt_ms']:g} ms RTT, {out['size'] / GiB:g} GiB image"
            f" ({out['changed_blocks']} blocks changed for the incremental pass)",
            "| pass | tool | wall | bytes over the link | link limit | wall / limit | vs rsync |",
            "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for kind in ("full", "incremental"):
        for who in ("vzrep", "rsync"):
            r = out[kind][who]
            vs = f"{out[kind]['speedup_vs_rsync']:.2f}x faster" if who == "vzrep" else "1.00x"
            rows.append(
                f"| {kind} | {who} | {r['seconds']:.1f} s | {r['app_bytes'] / 2**20:.1f} MiB |"
                f" {r['link_limit_seconds']:.1f} s | {r['vs_link_limit']:.2f}x | {vs} |"
            )
    rows.append(f"SSH window cap at this RTT: {out['ssh_window_cap_mb_s']:.0f} MB/s (16 MiB / RTT)")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.wan", description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gib", type=float, default=4.0)
    ap.add_argument("--rate-mbit", type=float, default=100.0)
    ap.add_argument("--rtt-ms", type=float, default=40.0)
    ap.add_argument("--json", type=Path, default=Path("build/bench-wan.json"))
    args = ap.parse_args(argv)
    if os.environ.get(IN_NAMESPACE) != "1":
        unshare = shutil.which("unshare")
        probe = subprocess.run([unshare or "unshare", "-n", "true"], capture_output=True) if unshare else None
        if probe is None or probe.returncode != 0:
            print("(c) WAN: skipped: cannot make a network namespace here (unshare -n)")
            return 0
        env = {**os.environ, IN_NAMESPACE: "1"}
        cmd = [str(unshare), "-n", sys.executable, "-m", "bench.wan", *(argv if argv is not None else sys.argv[1:])]
        return subprocess.run(cmd, env=env).returncode
    with tempfile.TemporaryDirectory(prefix="vzrep-wan-") as tmp:
        try:
            out = run(int(args.size_gib * GiB), args.rate_mbit, args.rtt_ms, Path(tmp))
        except subprocess.CalledProcessError as exc:
            if exc.cmd and Path(str(exc.cmd[0])).name == "tc":
                print(f"(c) WAN: skipped: the link cannot be shaped here ({exc.stderr.decode(errors='replace').strip()})")
                return 0
            raise
    print(table(out))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
