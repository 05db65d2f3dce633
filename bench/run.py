"""``make bench``: vzrep against OpenSSH and rsync over loopback, the tuning sweeps, and ABM.

Benchmarks, not tests: they print figures and ratios against the peers measured in the same run,
and write everything to ``build/bench.json`` (``--results FILE`` also writes the tables as
Markdown). ``--quick`` uses a 1 GiB image and fewer sweeps. All traffic stays on 127.0.0.1; the
throwaway sshd, the replicas and the images live in one temporary directory, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import abm, full_pass, incremental, points, seed, tuning, verify
from .context import Context
from .images import ChangeSet, build_mixed
from .peers import GiB, MiB

Table = tuple[str, list[str], list[list[str]]]
#: the packages the agents run from; byte-compiled before measuring (see :func:`byte_compile`)
PACKAGES = ("protocol", "source_agent", "target_agent", "vzcommon", "vsphere", "pairing", "bench")
CONCLUSIONS = "## Conclusions"


def mib(n: float) -> str:
    return f"{n / MiB:,.1f} MiB"


def row(label: str, r: dict[str, Any], extra: list[str] | None = None) -> list[str]:
    wire = r["app_bytes_sent"] + r["app_bytes_received"]
    return [
        label,
        f"{r['seconds']:.2f} s",
        f"{r['disk_bytes'] / r['seconds'] / 1e6:,.0f} MB/s",
        mib(wire),
        mib(r["rss_source"]),
        mib(r["rss_target"]),
        *(extra or []),
    ]


HEAD = ["", "wall", "disk MB/s", "app bytes on wire", "peak RSS source", "peak RSS target"]


def tables(rep: dict[str, Any]) -> list[Table]:
    out: list[Table] = []
    a, b = rep["full"], rep["incremental"]
    out.append(
        (
            f"(a) full pass, {rep['image']['size'] / GiB:.0f} GiB image ({rep['image']['data_share']:.0%} random data,"
            f" rest zeros: holes and written zeros), block 64 KiB",
            [*HEAD, "ratio"],
            [
                row("vzrep", a["vzrep"], [f"{a['ratio']['throughput_ratio']:.2f}x OpenSSH throughput"]),
                row("dd | ssh aes256-gcm | cat", a["openssh"], ["1.00x"]),
            ],
        )
    )
    out.append(
        (
            f"(b) incremental pass after {b['changed_blocks']} random 64 KiB blocks changed (2 %)",
            [*HEAD, "ratio"],
            [
                row("vzrep", b["vzrep"], [f"{b['ratio']['speedup']:.2f}x faster, {b['ratio']['wire_ratio']:.2f}x the bytes"]),
                row("rsync --inplace --no-whole-file", b["rsync"], ["1.00x"]),
            ],
        )
    )
    if "wan" in rep:
        w = rep["wan"]
        out.append(
            (
                f"(c) WAN link {w['rate_mbit']:g} Mbit/s, {w['rtt_ms']:g} ms RTT (HTB + a delay line, bench/wan.py)",
                ["", "wall", "bytes over the link", "link limit", "wall / limit", "ratio"],
                [
                    [f"{kind}: {who}", f"{w[kind][who]['seconds']:.1f} s", mib(w[kind][who]["app_bytes"]),
                     f"{w[kind][who]['link_limit_seconds']:.1f} s", f"{w[kind][who]['vs_link_limit']:.2f}x",
                     f"{w[kind]['speedup_vs_rsync']:.2f}x faster" if who == "vzrep" else "1.00x"]
                    for kind in ("full", "incremental") for who in ("vzrep", "rsync")
                ],
            )
        )  # fmt: skip
    if "verify" in rep:
        v = rep["verify"]
        out.append(
            (
                "(e) a clean verify of the whole image: every byte read and hashed on both sides",
                [*HEAD, "ratio"],
                [
                    row("vzrep-source verify", v["vzrep"], [f"{v['ratio']['speedup']:.2f}x faster"]),
                    row("rsync --checksum --dry-run", v["rsync"], ["1.00x"]),
                ],
            )
        )
    if "points" in rep:
        e, f = rep["points"]["export"], rep["points"]["failback"]
        out.append(
            (
                "(d) export of the point before (b)'s last pass, as a thin monolithicFlat VMDK",
                ["", "wall", "peak RSS", "ratio"],
                [
                    ["vzrep-target export", f"{e['vzrep']['seconds']:.2f} s", mib(e["vzrep"]["rss"]),
                     f"{e['ratio']:.2f}x qemu-img's speed"],
                    ["qemu-img convert (raw copy -> flat VMDK) + sync", f"{e['qemu_img_convert']['seconds']:.2f} s",
                     mib(e["qemu_img_convert"]["rss"]), "1.00x"],
                ],
            )
        )  # fmt: skip
        out.append(
            (
                f"(d) failback: {f['changed_blocks']} blocks written at DR (2 %) onto the original, one pass behind",
                [*HEAD, "ratio"],
                [
                    row("vzrep (serve --map onto the original)", f["vzrep"],
                        [f"{f['ratio']['speedup']:.2f}x faster, {f['ratio']['wire_ratio']:.2f}x the bytes"]),
                    row("rsync --inplace --no-whole-file", f["rsync"], ["1.00x"]),
                ],
            )
        )  # fmt: skip
    t = rep.get("tuning", {})
    if "block_sizes" in t:
        rows = []
        for bs, r in t["block_sizes"].items():
            f, i = r["full"], r["incremental"]
            rows.append(
                [
                    bs,
                    f"{f['seconds']:.2f} s",
                    f"{f['disk_bytes'] / f['seconds'] / 1e6:,.0f} MB/s",
                    mib(f["rss_source"]),
                    mib(f["rss_target"]),
                    f"{i['seconds']:.2f} s",
                    mib(i["app_bytes_sent"] + i["app_bytes_received"]),
                    mib(i["rss_source"]),
                    mib(i["rss_target"]),
                ]
            )
        out.append(
            (
                "(t) block size: full pass | incremental pass (2 % of 64 KiB blocks changed)",
                ["block", "full wall", "full MB/s", "full RSS src", "full RSS tgt", "incr wall", "incr wire",
                 "incr RSS src", "incr RSS tgt"],
                rows,
            )
        )
    if "windows" in t:
        base = t["windows"]["2 MiB / 32 KiB"]["seconds"]
        out.append(
            (
                f"(t) channel window / max packet: full pass of a {t['sweep_image_size'] / GiB:.0f} GiB mixed image"
                " (median of interleaved rounds)",
                [*HEAD, "vs asyncssh defaults"],
                [row(k, r, [f"{base / r['seconds']:.2f}x"]) for k, r in t["windows"].items()],
            )
        )
    if "event_loop" in t:
        base = t["event_loop"]["asyncio"]["seconds"]
        out.append(
            (
                "(t) event loop (both agents, 16 MiB / 256 KiB): full pass, same image, same rounds",
                [*HEAD, "vs asyncio"],
                [row(k, r, [f"{base / r['seconds']:.2f}x"]) for k, r in t["event_loop"].items()],
            )
        )
    if "compression" in t:
        c = t["compression"]
        base = c["none"]
        out.append(
            (
                f"(t) compression: full pass of a {c['image']['size'] / MiB:.0f} MiB ext4 image holding"
                f" {c['image']['text_bytes'] / MiB:.0f} MiB of text files (mkfs.ext4 -d)",
                [*HEAD, "payload ratio", "vs none"],
                [
                    row(k, r, [f"{r['compression_ratio']:.2f}x", f"{base['seconds'] / r['seconds']:.2f}x"])
                    for k, r in c.items()
                    if k != "image"
                ],
            )
        )
    if "zstd_levels" in t:
        out.append(
            (
                "(t) zstd per 64 KiB block on mixed data (1/3 text, 1/3 /usr/bin, 1/3 random), one core",
                ["level", "compress MB/s", "ratio"],
                [[k, f"{r['mb_s']:,.0f}", f"{r['ratio']:.2f}x"] for k, r in t["zstd_levels"].items()],
            )
        )
    return out


def print_tables(tabs: list[Table]) -> None:
    for title, head, rows in tabs:
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
        print(f"\n{title}")
        for r in [head, *rows]:
            print("  " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True)))


def markdown(tabs: list[Table], rep: dict[str, Any]) -> str:
    lines = [
        "# vzrep benchmark results",
        "",
        f"Measured by `{rep['command']}` on {rep['machine']} ({rep['cpus']} CPUs, shared with other work),"
        f" {rep['date']}, total bench time {rep['bench_seconds']:.0f} s. Both peers read the source image"
        " from the same warm page cache (read once before each run, dirty pages flushed first);"
        " best of the repeats where a row says so in build/bench.json. Bytes on the wire are application"
        " bytes (vzrep protocol frames; rsync --stats totals; dd's bytes into ssh).",
        "",
    ]
    for title, head, rows in tabs:
        lines += [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
        lines.append("")
    return "\n".join(lines)


def byte_compile() -> None:
    """Compile the agents' modules once, as installing a package does (pip, Debian's postinst).

    The project is installed editable, and with PYTHONDONTWRITEBYTECODE set (as in some CI
    sandboxes) every agent start would otherwise compile our sources again: ~0.07 s of each pass.
    """
    import compileall

    root = Path(__file__).resolve().parent.parent
    for pkg in PACKAGES:
        compileall.compile_dir(root / pkg, quiet=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 GiB image, one run each, fewer sweeps")
    ap.add_argument("--size-gib", type=float, help="mixed image size (default 4, quick 1)")
    ap.add_argument("--repeat", type=int, help="runs of (a) and (b) per side, best kept (default 2, quick 1)")
    ap.add_argument("--no-tuning", action="store_true")
    ap.add_argument("--no-abm", action="store_true")
    ap.add_argument("--no-seed", action="store_true", help="skip seeding (bench.seed) against qemu-img convert")
    ap.add_argument("--no-points", action="store_true", help="skip scenario (d): export and failback")
    ap.add_argument("--no-verify", action="store_true", help="skip scenario (e): a clean verify")
    ap.add_argument("--no-wan", action="store_true", help="skip scenario (c): the passes over a WAN link")
    ap.add_argument("--json", type=Path, default=Path("build/bench.json"))
    ap.add_argument("--results", type=Path, help="also write the tables as Markdown here")
    ap.add_argument("--workdir", type=Path, help="parent for the temporary directory (default: $TMPDIR)")
    args = ap.parse_args(argv)
    size = int((args.size_gib or (1 if args.quick else 4)) * GiB) // MiB * MiB
    repeat = args.repeat or (1 if args.quick else 2)
    t_start = time.perf_counter()
    byte_compile()
    work = Path(tempfile.mkdtemp(prefix="vzrep-bench-", dir=args.workdir))
    rep: dict[str, Any] = {
        "command": "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.system()} {platform.machine()} {platform.python_implementation()} {platform.python_version()}",
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cache": "warm: each side's source is read once before its run (same page cache for both)",
    }
    ctx = Context(work, quick=args.quick, repeat=repeat)
    try:
        ctx.start()
        image = work / "mixed.img"
        print(f"building a {size / GiB:.0f} GiB mixed image in {work} ...", flush=True)
        lay = build_mixed(image, size)
        rep["image"] = {"size": size, "data_share": lay.data / size, "zeros_written": lay.zeros_written, "holes": lay.holes}
        changes = ChangeSet(image)

        print("(a) full pass: OpenSSH, then vzrep ...", flush=True)
        a_peer = full_pass.openssh(ctx, image)
        a_vz = full_pass.vzrep(ctx, image, "bench", "64K", repeat=repeat)
        rep["full"] = {"openssh": a_peer, "vzrep": a_vz, "ratio": full_pass.compare(a_vz, a_peer)}

        print("(b) incremental pass: rsync, then vzrep ...", flush=True)
        dest = incremental.baseline_copy(ctx, image)
        n = changes.apply()
        try:
            b_peer = incremental.rsync_runs(ctx, image, dest, changes)
            dest.unlink()
            b_vz = incremental.vzrep(ctx, image, "bench", changes, "64K", repeat=repeat)
        finally:
            changes.undo()
            dest.unlink(missing_ok=True)
        if not args.no_points:
            print("(d) restore points: export, then failback ...", flush=True)
            rep["points"] = {"export": points.export(ctx, image, "bench"), "failback": points.failback(ctx, image, "bench")}
        if not args.no_wan:  # in a network namespace of its own: a process of its own
            print("(c) WAN link: vzrep and rsync over 100 Mbit/s, 40 ms RTT ...", flush=True)
            subprocess.run([sys.executable, "-m", "bench.wan", "--size-gib", f"{size / GiB:g}",
                            "--json", str(work / "wan.json")], check=True)  # fmt: skip
            if (work / "wan.json").exists():
                rep["wan"] = json.loads((work / "wan.json").read_text())
        if not args.no_verify:
            print("(e) verify: rsync --checksum --dry-run, then vzrep-source verify ...", flush=True)
            rep["verify"] = verify.verify(ctx, image, "bench")
        ctx.forget("bench")
        rep["incremental"] = {"changed_blocks": n, "rsync": b_peer, "vzrep": b_vz,
                              "ratio": incremental.compare(b_vz, b_peer)}
        print_tables(tables(rep))

        if not args.no_tuning:
            t: dict[str, Any] = {}
            rep["tuning"] = t
            print("\n(t) tuning: block sizes ...", flush=True)
            done = {"64K": {"full": a_vz, "incremental": b_vz}}
            if args.quick:
                tuning.BLOCK_SIZES[:] = ["64K", "1M"]
            t["block_sizes"] = tuning.block_sizes(ctx, image, done, changes)
            if size > 1 * GiB:  # the loop and window sweeps use a 1 GiB image: relative figures, less time
                image.unlink()
                image = work / "sweep.img"
                build_mixed(image, 1 * GiB)
            t["sweep_image_size"] = image.stat().st_size
            print("(t) tuning: window / packet size, event loop ...", flush=True)
            t["windows"], t["event_loop"] = tuning.link(ctx, image)
            image.unlink()
            print("(t) tuning: compression ...", flush=True)
            t["compression"] = tuning.compression(ctx, 512 * MiB if args.quick else 1 * GiB)
            t["zstd_levels"] = tuning.zstd_levels()
        if not args.no_abm:
            print("\nABM ...", flush=True)
            (work / "abm").mkdir()
            abm.run(rep, size=2 * GiB if args.quick else 8 * GiB, workdir=work / "abm")
        if not args.no_seed:
            print("\nseeding ...", flush=True)
            (work / "seed").mkdir()
            seed.run(rep, size=1 * GiB if args.quick else 4 * GiB, workdir=work / "seed")
    finally:
        ctx.stop()
        shutil.rmtree(work, ignore_errors=True)
    rep["bench_seconds"] = time.perf_counter() - t_start
    tabs = tables(rep)
    print("\n==== vzrep benchmark (loopback, warm page cache for both sides) ====")
    print_tables(tabs)
    if "abm" in rep:
        print()
        abm.print_table(rep)
    if "seed" in rep:
        print()
        seed.print_table(rep)
    print(f"\nbench time {rep['bench_seconds']:.0f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rep, indent=2, default=str))
    print(f"figures: {args.json}")
    if args.results:
        # keep the hand-written conclusions (everything from "## Conclusions" on) across reruns
        old = args.results.read_text() if args.results.exists() else ""
        keep = old[old.index(CONCLUSIONS) :] if CONCLUSIONS in old else ""
        args.results.write_text(markdown(tabs, rep) + ("\n" + keep if keep else ""))
        print(f"tables: {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
