"""qemu's block layer, the one place vzrep runs qemu-img and qemu-nbd: every image format we read that is
not a raw file (VMDK of any create type and snapshot chains, qcow2 with backing files, VHDX, OVA
members) is opened by qemu, never by a parser of ours.

Three steps, each turning qemu's failures into :class:`ImageError` naming the file:

* :func:`inspect` -- ``qemu-img info --backing-chain``: the format (checked against what the file's
  name promises, so a file whose magic was overwritten is not silently read as raw), the virtual
  size, and every file of the chain (a missing parent fails here);
* :func:`check` -- ``qemu-img check`` of every image of the chain that qemu can check (qcow2, VMDK,
  VHDX, ...): a truncated image or a grain table pointing past the end of the file is refused before a
  byte is read (``qemu-img convert`` itself would read such a qcow2 without a word);
* :func:`allocated` -- ``qemu-img map --output=json``: where the merged view holds data, so holes are
  never read and stay holes;

and :class:`NbdServer` exports the image read-only on a unix socket in a private directory
(``qemu-nbd``; nothing listens on TCP) for :class:`vzcommon.nbd.NbdClient`. It is started without
``--persistent`` and we hold one connection open from start to :meth:`NbdServer.close`: qemu-nbd ends
when its last client goes, so if our process dies (SIGKILL included) the kernel closes that
connection and no qemu-nbd is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ImageError
from .nbd import NbdClient

#: formats a seed or source may have; others (dmg, bochs, ...) are refused rather than trusted
FORMATS = frozenset({"raw", "vmdk", "qcow2", "vhdx", "vpc", "vdi"})
#: what a file's extension promises (a file of another format under that name is damaged)
EXPECTED = {
    ".vmdk": "vmdk",
    ".qcow2": "qcow2",
    ".qcow": "qcow2",
    ".vhdx": "vhdx",
    ".vhd": "vpc",
    ".vdi": "vdi",
}
#: ``qemu-img check`` exit codes that mean the data is readable (0 clean, 3 leaked clusters only,
#: 63 the format has no check)
_CHECK_OK = (0, 3, 63)
TIMEOUT = 600.0


@dataclass(frozen=True)
class ImageInfo:
    #: what qemu opens: a file name, or a ``json:`` spec (an OVA member read in place)
    spec: str
    #: for messages: the path the user gave (``x.ova/disk1.vmdk`` for a member)
    where: str
    format: str
    size: int
    #: every image of the chain, top first: (file name, format)
    chain: list[tuple[str, str]] = field(default_factory=list)
    create_type: str = ""


def _run(args: list[str], where: str, what: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which(args[0])
    if exe is None:
        raise ImageError(
            f"{where}: {args[0]} is not installed (apt-get install qemu-utils); needed to {what}"
        )
    try:
        return subprocess.run(
            [exe, *args[1:]], capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise ImageError(f"{where}: {args[0]} did not finish {what} within {TIMEOUT:.0f} s") from None


def _qemu_message(stderr: str) -> str:
    lines = [ln.removeprefix("qemu-img: ").strip() for ln in stderr.splitlines() if ln.strip()]
    return "; ".join(lines[:3]) or "no message"


def inspect(spec: str, where: str, *, name_hint: str | None = None) -> ImageInfo:
    """What the image is; ImageError if qemu cannot open it, its chain, or it is not what its name says."""
    proc = _run(["qemu-img", "info", "--backing-chain", "--output=json", spec], where, "open the image")
    if proc.returncode != 0:
        msg = _qemu_message(proc.stderr)
        if "backing" in msg.lower() or "parent" in msg.lower():
            raise ImageError(f"{where}: a file of its snapshot chain is missing or unreadable ({msg})")
        raise ImageError(f"{where}: qemu cannot open it ({msg})")
    try:
        raw: Any = json.loads(proc.stdout)
        chain_info: list[dict[str, Any]] = raw if isinstance(raw, list) else [raw]
        top = chain_info[0]
        fmt, size = str(top["format"]), int(top["virtual-size"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise ImageError(f"{where}: cannot read qemu-img info's answer") from None
    expected = EXPECTED.get(Path(name_hint or where).suffix.lower())
    named = Path(name_hint or where).name
    if expected == "vmdk" and fmt == "raw" and named.endswith("-flat.vmdk"):
        expected = None  # a flat extent, given by itself, is a raw image
    if expected is not None and fmt != expected:
        raise ImageError(
            f"{where}: the name says {expected} but the file has no valid {expected} header (qemu reads it as"
            f" {fmt}): a wrong magic, or the file is damaged"
        )
    for img in chain_info:
        f = str(img.get("format", "?"))
        if f not in FORMATS:
            raise ImageError(
                f"{where}: image format {f} ({img.get('filename')}) is not supported; use one of {', '.join(sorted(FORMATS))}"
            )
        specific = img.get("format-specific", {}).get("data", {})
        if specific.get("corrupt"):
            raise ImageError(f"{where}: qemu marked {img.get('filename')} corrupt")
    if size <= 0 or size % 512:
        raise ImageError(f"{where}: virtual size {size} is not a non-empty multiple of 512 bytes")
    create_type = str(top.get("format-specific", {}).get("data", {}).get("create-type", ""))
    chain = [(str(i.get("filename", "")), str(i.get("format", ""))) for i in chain_info]
    return ImageInfo(spec, where, fmt, size, chain, create_type)


def check(info: ImageInfo) -> None:
    """``qemu-img check`` every image of the chain (read-only); ImageError with qemu's findings."""
    for filename, fmt in info.chain:
        spec = info.spec if filename == info.chain[0][0] else filename
        proc = _run(["qemu-img", "check", "-f", fmt, "--output=human", spec], info.where, "check the image")
        if proc.returncode in _CHECK_OK:
            continue
        label = info.where if spec == info.spec else f"{filename} (in the chain of {info.where})"
        found = _qemu_message(proc.stderr.replace("ERROR: ", "") + "\n" + proc.stdout)
        what = "is corrupt" if proc.returncode == 2 else "could not be checked (damaged or truncated?)"
        raise ImageError(f"{label} {what}: {found}")


def allocated(info: ImageInfo) -> list[tuple[int, int]]:
    """``(offset, length)`` of the merged view's ranges that hold data, in order, adjacent ones joined."""
    proc = _run(
        ["qemu-img", "map", "--output=json", "-f", info.format, info.spec], info.where, "map the image"
    )
    if proc.returncode != 0:
        raise ImageError(f"{info.where}: qemu cannot map its allocated areas ({_qemu_message(proc.stderr)})")
    try:
        entries = json.loads(proc.stdout)
        out: list[tuple[int, int]] = []
        for e in entries:
            if not e.get("data"):
                continue
            start, length = int(e["start"]), int(e["length"])
            if out and out[-1][0] + out[-1][1] == start:
                out[-1] = (out[-1][0], out[-1][1] + length)
            else:
                out.append((start, length))
    except (ValueError, KeyError, TypeError):
        raise ImageError(f"{info.where}: cannot read qemu-img map's answer") from None
    return out


def _guarded(exe: str) -> list[str]:
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", exe] if setpriv else [exe]


def _node(info: ImageInfo) -> dict[str, Any]:
    """The image as a block node tree (what ``json:`` takes): a file name becomes format over file."""
    if info.spec.startswith("json:"):
        node: dict[str, Any] = json.loads(info.spec[5:])
        return node
    return {"driver": info.format, "file": {"driver": "file", "filename": os.path.abspath(info.spec)}}


class ConvertRange:
    """``qemu-img convert`` of bytes ``[offset, offset+length)`` of the image into the same range of
    ``dest``, a raw file of the image's size that reads as zeros there (``-n --target-is-zero``): qemu
    writes only what is not zeros (``-S 4k``), so holes stay holes. Started at once; :meth:`wait`
    returns when the range is written (not yet fsynced) or raises ImageError. Several ranges in turn
    let the caller hash one range while qemu writes the next. Under ``setpriv --pdeathsig KILL`` where
    util-linux has it (see :func:`_run`): the thread that starts it must be the one that waits."""

    def __init__(self, info: ImageInfo, dest: str | os.PathLike[str], offset: int, length: int) -> None:
        self.info, self.offset, self.length = info, offset, length
        exe = shutil.which("qemu-img")
        if exe is None:
            raise ImageError(f"{info.where}: qemu-img is not installed (apt-get install qemu-utils)")
        src = {"driver": "raw", "offset": offset, "size": length, "file": _node(info)}
        target = f"driver=raw,offset={offset},size={length},file.driver=file,file.filename=" + os.fspath(
            dest
        ).replace(",", ",,")
        self._proc: subprocess.Popen[str] | None = subprocess.Popen(
            [*_guarded(exe), "convert", "-q", "-n", "--target-is-zero", "--target-image-opts",
             "json:" + json.dumps(src), target],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def wait(self) -> None:
        assert self._proc is not None
        try:
            _, err = self._proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ImageError(
                f"{self.info.where}: qemu-img took over {TIMEOUT:.0f} s for {self.length} bytes at {self.offset}"
            ) from None
        code, self._proc = self._proc.returncode, None
        if code != 0:
            raise ImageError(
                f"{self.info.where}: qemu could not read it all ({_qemu_message(err)}): damaged or truncated?"
            )

    def kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.communicate()
            self._proc = None


class NbdServer:
    """``qemu-nbd`` exporting one image read-only on a unix socket in a private temporary directory."""

    def __init__(self, info: ImageInfo, *, connections: int = 8) -> None:
        self.info = info
        self._proc: subprocess.Popen[bytes] | None = None
        self._anchor: NbdClient | None = None
        self._dir = tempfile.mkdtemp(prefix="vzrep-nbd-")  # 0700: only we can connect
        self.socket = os.path.join(self._dir, "s")
        self._err = open(os.path.join(self._dir, "stderr"), "w+")
        exe = shutil.which("qemu-nbd")
        if exe is None:
            self.close()
            raise ImageError(f"{info.where}: qemu-nbd is not installed (apt-get install qemu-utils)")
        self._proc = subprocess.Popen(
            [exe, "--read-only", f"--shared={connections + 1}", f"--socket={self.socket}",
             "-f", info.format, info.spec],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._err,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while self._anchor is None:  # the socket exists at bind(), before listen(): connecting tells
            try:
                self._anchor = NbdClient(self.socket, info.where)
            except ImageError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self._err.seek(0)
                    msg = _qemu_message(self._err.read().replace("qemu-nbd: ", ""))
                    self.close()
                    raise ImageError(f"{info.where}: qemu-nbd could not export it ({msg})") from None
                time.sleep(0.01)

    def close(self) -> None:
        if self._anchor is not None:
            self._anchor.close()
            self._anchor = None
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        with contextlib.suppress(OSError):
            self._err.close()
        shutil.rmtree(self._dir, ignore_errors=True)
