"""``make demo``: replicate three real disk images to a local target, change them, replicate again.

Everything happens in a temporary directory and on 127.0.0.1:

1. build the disks with real tools: an ext4 filesystem from real files (``mkfs.ext4 -d``), a flat
   VMDK (``qemu-img create -f vmdk -o subformat=monolithicFlat``) filled from another image with
   ``qemu-img convert -n``, and a sparse raw image with random data in a few places;
2. make keys with ``vzrep keygen`` and start ``vzrep-target serve`` on port 0;
3. a full pass, then change the filesystem with ``debugfs -w`` and overwrite some random blocks,
   then an incremental pass (vzrep's own report is printed for each);
4. judge the replicas with independent tools: ``qemu-img compare`` per disk, ``e2fsck -fn`` and
   ``debugfs`` on the replicated filesystem; print PASS/FAIL lines and exit non-zero on any FAIL.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1 << 20
VM = "demo-vm"


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise SystemExit(f"demo: {name} is missing: run `make sysdeps`")
    return path


def agent(script: str, module: str) -> list[str]:
    """The installed console script next to this Python, or the module when not installed."""
    exe = Path(sys.executable).parent / script
    return [str(exe)] if exe.exists() else [sys.executable, "-m", module]


def sh(*cmd: str | Path, quiet: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], check=True, text=True, capture_output=quiet)


class Demo:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.src = work / "source"
        self.data = work / "target-data"
        self.keys = work / "keys"
        self.target: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.results: list[tuple[bool, str]] = []
        self.disks: dict[str, Path] = {}
        self.rng = random.Random(2024)

    # -------------------------------------------------------------- disks

    def build_disks(self) -> None:
        self.src.mkdir(parents=True)
        files = self.work / "files"
        (files / "doc").mkdir(parents=True)
        copied = 0
        for p in sorted(Path("/usr/share/doc").rglob("*")):
            if copied > 12 * MiB:
                break
            if p.is_file() and not p.is_symlink():
                rel = p.relative_to("/usr/share/doc")
                (files / "doc" / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, files / "doc" / rel)
                copied += p.stat().st_size
        gen = files / "generated"
        gen.mkdir()
        for i in range(40):
            lines = [f"record {i:03d}-{j:05d} value={self.rng.random():.12f}\n" for j in range(2000)]
            (gen / f"log-{i:03d}.txt").write_text("".join(lines))
        fs = self.src / "fs.img"
        sh(tool("mkfs.ext4"), "-q", "-F", "-L", "demo", "-d", files, fs, "96M")
        shutil.rmtree(files)
        self.disks["fs"] = fs

        # a flat VMDK filled from another image (random data, text and zeros)
        filler = self.work / "filler.raw"
        with open(filler, "wb") as f:
            f.truncate(48 * MiB)
            for k in range(12):
                f.seek(self.rng.randrange(0, 46) * MiB)
                f.write(os.urandom(512 * 1024) if k % 2 else (b"vzrep demo text " * 32768))
        flat = self.src / "flat.vmdk"
        sh(tool("qemu-img"), "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", flat, "48M")
        sh(tool("qemu-img"), "convert", "-n", "-f", "raw", "-O", "vmdk", filler, flat)
        filler.unlink()
        self.disks["flat"] = flat

        sparse = self.src / "sparse.img"
        with open(sparse, "wb") as f:
            f.truncate(256 * MiB)
            for _ in range(16):
                f.seek(self.rng.randrange(0, 255) * MiB)
                f.write(os.urandom(256 * 1024))
        self.disks["sparse"] = sparse

    def change_disks(self) -> None:
        """debugfs: add a file, remove one, make a directory; random blocks into the other disks."""
        new = self.work / "new-file.txt"
        new.write_text("".join(f"added after the first pass, line {i}\n" for i in range(20000)))
        victim = sh(tool("debugfs"), "-R", "ls -p /generated", self.disks["fs"]).stdout.split("\n")
        names = [ln.split("/")[5] for ln in victim if ln.count("/") >= 6 and ln.split("/")[5].endswith(".txt")]
        script = self.work / "debugfs.cmds"
        script.write_text(
            f"write {new} /added.txt\nmkdir /new-dir\nrm /generated/{names[0]}\n"
        )
        sh(tool("debugfs"), "-w", "-f", script, self.disks["fs"])
        self.new_file = new
        self.removed = f"/generated/{names[0]}"
        for path, size in ((self.src / "flat-flat.vmdk", 48 * MiB), (self.disks["sparse"], 256 * MiB)):
            with open(path, "r+b") as f:
                for _ in range(8):
                    f.seek(self.rng.randrange(0, size // (64 * 1024)) * 64 * 1024)
                    f.write(os.urandom(64 * 1024))

    # -------------------------------------------------------------- agents

    def start_target(self) -> None:
        self.keys.mkdir()
        for name in ("host_key", "client_key"):
            sh(*agent("vzrep", "vzcommon.keycli"), "keygen", self.keys / name)
        (self.keys / "authorized_keys").write_text((self.keys / "client_key.pub").read_text())
        ready = self.keys / "ready"
        self.log = open(self.work / "target.log", "wb")
        self.target = subprocess.Popen(
            [*agent("vzrep-target", "target_agent.cli"), "--log-level", "warning", "serve",
             "--data-dir", str(self.data), "--listen", "127.0.0.1:0",
             "--host-key", str(self.keys / "host_key"), "--authorized-keys", str(self.keys / "authorized_keys"),
             "--ready-file", str(ready)],
            stdout=self.log, stderr=self.log, env={**os.environ, "VZREP_LOG_FORMAT": "json"},
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not ready.exists() or not ready.read_text().strip():
            if self.target.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the target agent did not start: " + (self.work / "target.log").read_text()[-1500:])
            time.sleep(0.05)
        self.port = int(ready.read_text())
        keytype, b64 = (self.keys / "host_key.pub").read_text().split()[:2]
        (self.keys / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {keytype} {b64}\n")
        print(f"target agent listening on 127.0.0.1:{self.port} (pid {self.target.pid}), replicas in {self.data}")

    def stop_target(self) -> None:
        if self.target and self.target.poll() is None:
            self.target.terminate()
            try:
                self.target.wait(15)
            except subprocess.TimeoutExpired:
                self.target.kill()
                self.target.wait()
        if self.target:
            self.log.close()

    def replicate(self, label: str) -> None:
        base = [*agent("vzrep-source", "source_agent.cli"), "pass", "--target", f"127.0.0.1:{self.port}",
                "--identity", str(self.keys / "client_key"), "--known-hosts", str(self.keys / "known_hosts"),
                "--vm", VM, "--state-dir", str(self.work / "source-state"), "--no-progress",
                *[a for name, p in self.disks.items() for a in ("--disk", f"{name}={p}")]]  # fmt: skip
        print(f"\n== {label} ==")
        t0 = time.monotonic()
        text = subprocess.run(base, text=True, capture_output=True)
        print(text.stdout.rstrip() or text.stderr.rstrip())
        self.check(text.returncode == 0, f"{label}: vzrep-source exited {text.returncode} in {time.monotonic() - t0:.1f} s")
        if text.returncode:
            raise RuntimeError(f"{label} failed: {text.stderr.strip()[-500:]}")

    # -------------------------------------------------------------- judges

    def check(self, ok: bool, what: str) -> None:
        self.results.append((ok, what))

    def judge(self, label: str) -> None:
        vm_dir = self.data / VM
        for name, path in self.disks.items():
            replica = vm_dir / f"{name}.vmdk"
            fmt = "vmdk" if path.suffix == ".vmdk" else "raw"
            cmp = subprocess.run(
                [tool("qemu-img"), "compare", "-q", "-f", fmt, "-F", "vmdk", str(path), str(replica)],
                capture_output=True, text=True,
            )  # fmt: skip
            self.check(cmp.returncode == 0, f"{label}: qemu-img compare {path.name} = replica {replica.name}"
                       + ("" if cmp.returncode == 0 else f" ({cmp.stdout.strip() or cmp.stderr.strip()})"))
        flat = vm_dir / "fs-flat.vmdk"
        fsck = subprocess.run([tool("e2fsck"), "-fn", str(flat)], capture_output=True, text=True)
        self.check(fsck.returncode == 0, f"{label}: e2fsck -fn on the replicated filesystem is clean"
                   + ("" if fsck.returncode == 0 else f" (exit {fsck.returncode})"))

    def judge_changes(self) -> None:
        flat = self.data / VM / "fs-flat.vmdk"
        cat = subprocess.run([tool("debugfs"), "-R", "cat /added.txt", str(flat)], capture_output=True)
        self.check(cat.stdout == self.new_file.read_bytes(), "incremental: /added.txt in the replica has the bytes debugfs wrote")
        ls = subprocess.run([tool("debugfs"), "-R", "ls -p /", str(flat)], capture_output=True, text=True).stdout
        self.check("/new-dir/" in ls, "incremental: /new-dir exists in the replica")
        gone = subprocess.run([tool("debugfs"), "-R", f"stat {self.removed}", str(flat)], capture_output=True, text=True)
        self.check("File not found" in gone.stderr + gone.stdout, f"incremental: {self.removed} is gone from the replica")
        leftovers = [p.name for p in (self.data / VM).iterdir() if p.name.endswith(".vzundo") or p.name == "vzundo-script"]
        self.check(not leftovers, "incremental: no .vzundo or vzundo-script left after commit"
                   + (f" (found {leftovers})" if leftovers else ""))


def main() -> int:
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="vzrep-demo-"))
    demo = Demo(work)
    try:
        print(f"building disks in {work} (mkfs.ext4 -d, qemu-img monolithicFlat, sparse raw) ...")
        demo.build_disks()
        for name, p in demo.disks.items():
            print(f"  {name}: {p.name}")
        demo.start_target()
        demo.replicate("full pass")
        demo.judge("full")
        print("\nchanging the disks: debugfs -w (write /added.txt, mkdir /new-dir, rm a file), 8 random 64 KiB blocks in flat and sparse")
        demo.change_disks()
        demo.replicate("incremental pass")
        demo.judge("incremental")
        demo.judge_changes()
    except (subprocess.CalledProcessError, RuntimeError, OSError) as exc:
        detail = getattr(exc, "stderr", "") or ""
        demo.check(False, f"demo step failed: {exc} {detail}".strip())
    finally:
        demo.stop_target()
        shutil.rmtree(work, ignore_errors=True)
    print("\n== summary ==")
    for ok, what in demo.results:
        print(f"{'PASS' if ok else 'FAIL'}  {what}")
    failed = sum(1 for ok, _ in demo.results if not ok)
    print(f"\n{len(demo.results) - failed} passed, {failed} failed in {time.monotonic() - t0:.1f} s;"
          f" temporary files removed, target stopped")
    return 1 if failed or not demo.results else 0


if __name__ == "__main__":
    sys.exit(main())
