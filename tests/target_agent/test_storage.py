"""The target's storage primitives, broken on purpose: torn undo tails, crashes at every commit step,
interrupted rollbacks, a second pass on a busy VM."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol.messages import MapStatus
from target_agent.storage import transaction as txn
from target_agent.storage.paths import ReplicaPaths
from target_agent.storage.rollback import rollback_disk
from target_agent.storage.status import vm_status
from target_agent.storage.transaction import VmPass, recover_vm
from target_agent.storage.undo import HEADER_SIZE, RecordKind, encode_record, read_records
from tests.support.tools import sha256_py
from vzcommon.blockhash import hash_block
from vzcommon.errors import BusyError
from vzcommon.vzmap import MapFile

BS = 64 * 1024
SIZE = 2 * 1024 * 1024


def rand(seed: int, n: int = BS) -> bytes:
    return random.Random(seed).randbytes(n)


def first_pass(data_dir: Path, vm: str = "vm") -> dict[str, str]:
    p = VmPass(data_dir, vm, block_size=BS)
    p.begin()
    w, res = p.open_disk("d", SIZE, "", "cid-1")
    assert res.map_status == MapStatus.EMPTY
    for i in range(0, SIZE // BS, 3):
        data = rand(i)
        w.write_block(i * BS, data, hash_block(data))
    w.flush()
    p.commit({"result": "ok"})
    p.close()
    return state(data_dir / vm)


def state(vdir: Path) -> dict[str, str]:
    return {p.name: sha256_py(p) for p in sorted(vdir.iterdir()) if p.name.endswith((".vmdk", ".vzmap"))}


def start_second_pass(data_dir: Path, vm: str = "vm") -> VmPass:
    p = VmPass(data_dir, vm, block_size=BS)
    p.begin()
    w, res = p.open_disk("d", SIZE + 4 * BS, "", "cid-2")  # grows too
    assert res.map_status == MapStatus.SENDING
    for i in range(0, (SIZE + 4 * BS) // BS, 2):
        data = rand(1000 + i)
        w.write_block(i * BS, data, hash_block(data))
    w.write_zeros(3 * BS, BS)
    w.flush()
    return p


def crash(p: VmPass) -> None:
    """Simulate a process death: drop file descriptors and the lock without any clean-up."""
    for w in p.disks.values():
        for fd in (w._fd, w.builder._fd if w.builder else -1):
            if fd >= 0:
                os.close(fd)
        w._fd = -1
        if w.builder:
            w.builder._fd = -1
        if w._undo:
            w._undo.close()
    p._lock.release()
    p._active = False


def test_commit_then_second_pass_rolled_back_after_crash(tmp_path: Path) -> None:
    before = first_pass(tmp_path)
    p = start_second_pass(tmp_path)
    assert state(tmp_path / "vm") != before  # blocks really were overwritten
    assert (tmp_path / "vm" / "vzundo-script").exists()
    crash(p)
    assert "rolled back" in (recover_vm(tmp_path, "vm") or "")
    assert state(tmp_path / "vm") == before
    assert recover_vm(tmp_path, "vm") is None  # idempotent: nothing left to do
    assert not list((tmp_path / "vm").glob("*.vzundo")) and not (tmp_path / "vm" / "vzundo-script").exists()


def test_torn_tail_record_is_ignored(tmp_path: Path) -> None:
    before = first_pass(tmp_path)
    p = start_second_pass(tmp_path)
    w = p.disks["d"]
    # A record that was being appended when the power went: its block was never written.
    rec = encode_record(5 * BS, RecordKind.DATA, b"\xee" * BS)
    undo = w.paths.undo
    good = len(list(read_records(undo)))
    with open(undo, "ab") as f:
        f.write(rec[: len(rec) // 2])
    assert len(list(read_records(undo))) == good
    crash(p)
    recover_vm(tmp_path, "vm")
    assert state(tmp_path / "vm") == before


def test_corrupt_record_stops_replay_at_it(tmp_path: Path) -> None:
    path = tmp_path / "u"
    from target_agent.storage.undo import UndoLog

    log = UndoLog.create(path, old_size=0, created=False, pass_id="p", disk="d")
    log.append(encode_record(0, RecordKind.DATA, b"a" * 10) + encode_record(10, RecordKind.ZERO, length=5))
    log.close()
    raw = bytearray(path.read_bytes())
    assert len(list(read_records(path))) == 2
    raw[HEADER_SIZE + 25] ^= 0xFF  # flip a data byte of the first record
    path.write_bytes(bytes(raw))
    assert list(read_records(path)) == []


@pytest.mark.parametrize("step", ["after_prepare", "after_commit_point", "after_rename", "after_unlink"])
def test_crash_at_each_commit_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    """Crash between the documented commit steps: recovery gives the old state or the new, never a mix."""
    before = first_pass(tmp_path)
    reference = tmp_path / "ref"
    shutil.copytree(tmp_path / "vm", reference / "vm", ignore=shutil.ignore_patterns(".lock"))
    p = start_second_pass(tmp_path)

    class Crash(Exception):
        pass

    def boom(*a, **k):
        raise Crash

    if step == "after_prepare":
        monkeypatch.setattr(
            txn.VmPass, "_journal", lambda self, state, *a: boom() if state == "committed" else None
        )
    elif step == "after_commit_point":
        monkeypatch.setattr(txn, "roll_forward_disk", boom)
    elif step == "after_rename":
        monkeypatch.setattr(
            txn,
            "unlink_durable",
            lambda *a: boom() if any(str(x).endswith("vzundo-script") for x in a) else None,
        )
    else:
        monkeypatch.setattr(txn, "_write_status", boom)
    with pytest.raises(Crash):
        p.commit({"result": "ok"})
    monkeypatch.undo()
    crash(p)
    recover_vm(tmp_path, "vm")
    after = state(tmp_path / "vm")
    if step == "after_prepare":
        assert after == before
    else:
        assert after != before
        assert (tmp_path / "vm" / "d-flat.vmdk").stat().st_size == SIZE + 4 * BS
        m = MapFile.open(tmp_path / "vm" / "d-flat.vmdk.vzmap")  # the new map, checksum valid
        assert m.header.change_id == "cid-2" and m.header.disk_size == SIZE + 4 * BS
        m.close()
    leftovers = [
        x.name
        for x in (tmp_path / "vm").iterdir()
        if x.name.endswith((".next", ".vzundo", "-script", ".vzpass"))
    ]
    assert leftovers == []


def test_rollback_interrupted_and_repeated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = first_pass(tmp_path)
    p = start_second_pass(tmp_path)
    crash(p)
    paths = ReplicaPaths(tmp_path / "vm", "d")
    # The first rollback dies after restoring some records (before it could delete the undo log).
    import target_agent.storage.rollback as replica

    real = replica.undo.read_records
    monkeypatch.setattr(
        replica.undo, "read_records", lambda path: (r for i, r in enumerate(real(path)) if i < 3)
    )
    monkeypatch.setattr(replica, "unlink_durable", lambda *a: (_ for _ in ()).throw(OSError(5, "EIO")))
    with pytest.raises(OSError):
        rollback_disk(paths)
    monkeypatch.undo()
    recover_vm(tmp_path, "vm")
    assert state(tmp_path / "vm") == before


def test_first_pass_rolled_back_removes_the_new_disk(tmp_path: Path) -> None:
    p = VmPass(tmp_path, "new", block_size=BS)
    p.begin()
    w, _ = p.open_disk("d", SIZE, "", "")
    w.write_block(0, rand(1), hash_block(rand(1)))
    w.flush()
    crash(p)
    recover_vm(tmp_path, "new")
    left = [x.name for x in (tmp_path / "new").iterdir() if not x.name.startswith(".")]
    assert left == ["vzrep-status.json"]  # only the record of the failed pass remains
    assert vm_status(tmp_path / "new")["last_failure"]


def test_second_pass_on_busy_vm_is_refused(tmp_path: Path) -> None:
    first_pass(tmp_path)
    p = VmPass(tmp_path, "vm", block_size=BS)
    p.begin()
    try:
        with pytest.raises(BusyError, match="already running"):
            VmPass(tmp_path, "vm", block_size=BS).begin()
        # Another VM is not affected.
        q = VmPass(tmp_path, "other", block_size=BS)
        q.begin()
        q.close()
    finally:
        p.close()


def test_untouched_blocks_are_not_written_and_equal_blocks_skip_undo(tmp_path: Path) -> None:
    first_pass(tmp_path)
    p = VmPass(tmp_path, "vm", block_size=BS)
    p.begin()
    w, _ = p.open_disk("d", SIZE, "", "")
    same = rand(0)  # block 0 already holds exactly this
    w.write_block(0, same, hash_block(same))
    w.write_zeros(BS, BS)  # block 1 was a hole already
    w.flush()
    assert w.stats.blocks_unchanged == 1 and w.stats.undo_bytes == 0 and w.stats.bytes_zeroed == 0
    p.close()  # closing without commit rolls back


def test_status_lists_file_and_map_only_disks(tmp_path: Path) -> None:
    first_pass(tmp_path)
    vdir = tmp_path / "vm"
    # A device-backed (vSphere) disk has only its map in DATA_DIR.
    shutil.copy(vdir / "d-flat.vmdk.vzmap", vdir / "sys-flat.vmdk.vzmap")
    st = vm_status(vdir)
    assert st["disks"]["d"]["backing"] == "file" and st["disks"]["d"]["size"] == SIZE
    assert st["disks"]["sys"] == {"size": SIZE, "allocated": None, "has_map": True, "backing": "vSphere replica disk"}
    assert st["pending_rollback"] is False and st["last_pass"]["result"] == "ok"


def test_undo_log_is_kept_when_its_disk_cannot_be_found(tmp_path: Path) -> None:
    """A pending pass whose disk is missing at recovery (moved, or a device whose journal entry was
    lost) keeps its undo log and stays pending, instead of dropping the original bytes."""
    before = first_pass(tmp_path)
    p = start_second_pass(tmp_path)
    crash(p)
    vdir = tmp_path / "vm"
    (vdir / ".vzpass").write_text("damaged at rest")  # the journal is unreadable
    os.replace(vdir / "d-flat.vmdk", tmp_path / "moved-flat.vmdk")
    done = txn.recover_all(tmp_path)
    assert done["vm"].startswith("NOT recovered") and "undo log is kept" in done["vm"]
    assert (vdir / "d-flat.vmdk.vzundo").exists()
    os.replace(tmp_path / "moved-flat.vmdk", vdir / "d-flat.vmdk")  # the disk is back
    assert "rolled back" in (recover_vm(tmp_path, "vm") or "")
    assert state(vdir) == before


def test_a_flush_starts_writeback_of_the_range_it_wrote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from target_agent.storage import replica

    first_pass(tmp_path)
    calls: list[tuple[int, int]] = []
    real = replica.start_writeback
    monkeypatch.setattr(replica, "start_writeback", lambda fd, off, n: (calls.append((off, n)), real(fd, off, n)))
    p = VmPass(tmp_path, "vm", block_size=BS)
    p.begin()
    w, _ = p.open_disk("d", SIZE, "", "")
    blocks = {5: rand(500), 2: rand(200), 9: rand(900)}
    for i, data in blocks.items():
        w.write_block(i * BS, data, hash_block(data))
    w.flush()
    assert calls == [(2 * BS, 8 * BS)]  # one hint from the lowest to the end of the highest block written
    w.write_zeros(3 * BS, BS)  # block 3 holds data from the first pass
    w.flush()
    assert w.stats.bytes_zeroed == BS and len(calls) == 1  # a punched hole has nothing to write back
    p.commit({"result": "ok"})
    p.close()
    flat = (tmp_path / "vm" / "d-flat.vmdk").read_bytes()
    assert all(flat[i * BS : (i + 1) * BS] == data for i, data in blocks.items())


class _CacheStat(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("cache", "dirty", "writeback", "evicted", "recently_evicted")]


_SYS_CACHESTAT = 451  # the same number on every architecture (Linux 6.5)


def dirty_pages(fd: int, offset: int, length: int) -> int | None:
    """The kernel's count of dirty page-cache pages of ``fd`` in a range (cachestat(2)); None if the
    kernel predates cachestat."""
    libc = ctypes.CDLL(None, use_errno=True)
    rng = (ctypes.c_uint64 * 2)(offset, length)
    st = _CacheStat()
    if libc.syscall(_SYS_CACHESTAT, fd, ctypes.byref(rng), ctypes.byref(st), 0) != 0:
        err = ctypes.get_errno()
        if err == errno.ENOSYS:
            return None
        raise OSError(err, os.strerror(err))
    return int(st.dirty)


@contextlib.contextmanager
def writeback_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on a filesystem with writeback: tmp_path, or beside the checkout when tmp_path is a
    tmpfs (CI mounts one on /tmp), whose pages are never dirty in the kernel's sense."""

    def tracks_dirty(d: Path) -> bool | None:
        fd = os.open(d / ".probe", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, b"x" * 4096, 0)
            n = dirty_pages(fd, 0, 4096)
            return None if n is None else n > 0
        finally:
            os.close(fd)
            os.unlink(d / ".probe")

    probe = tracks_dirty(tmp_path)
    if probe is None:
        pytest.skip("this kernel has no cachestat(2) (Linux < 6.5): dirty pages cannot be counted")
    if probe:
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(prefix=".writeback-", dir=Path(__file__).resolve().parents[2]) as d:
        if not tracks_dirty(Path(d)):
            pytest.skip("neither tmp_path nor the checkout is on a filesystem with writeback")
        yield Path(d)


def test_start_writeback_is_only_a_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hint asks the kernel to write exactly its range (SYNC_FILE_RANGE_WRITE, no waiting), is not
    made for an empty range, and ignores the kernel's refusal (a pipe)."""
    from vzcommon import durable

    real = durable._sync_file_range
    assert real is not None, "this libc has no sync_file_range"
    calls: list[tuple[int, int, int, int, int, int]] = []

    def recording(fd: int, offset: int, length: int, flags: int) -> int:
        ret = real(fd, offset, length, flags)
        calls.append((fd, offset, length, flags, ret, ctypes.get_errno() if ret else 0))
        return ret

    monkeypatch.setattr(durable, "_sync_file_range", recording)
    r, w = os.pipe()
    try:
        durable.start_writeback(w, 0, BS)  # sync_file_range fails on a pipe: the hint must not
    finally:
        os.close(r)
        os.close(w)
    assert calls == [(w, 0, BS, 2, -1, errno.ESPIPE)]  # 2 = SYNC_FILE_RANGE_WRITE
    calls.clear()
    with writeback_dir(tmp_path) as d:
        f = d / "f"
        fd = os.open(f, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.pwrite(fd, rand(1, 8 * BS), 0)
            assert dirty_pages(fd, 2 * BS, 4 * BS) == 4 * BS // 4096, "just written, the range must be dirty"
            durable.start_writeback(fd, 2 * BS, 4 * BS)
            assert calls == [(fd, 2 * BS, 4 * BS, 2, 0, 0)]
            # the kernel's word: every page of the range is now under writeback or clean
            assert dirty_pages(fd, 2 * BS, 4 * BS) == 0
            durable.start_writeback(fd, 0, 0)
            assert len(calls) == 1  # nothing to hint for an empty range
            assert os.pread(fd, 8 * BS, 0) == rand(1, 8 * BS)
            os.fsync(fd)
        finally:
            os.close(fd)
        assert f.read_bytes() == rand(1, 8 * BS)
