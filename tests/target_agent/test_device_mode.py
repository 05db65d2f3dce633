"""Device-backed replicas (vSphere jobs): the flat bytes live in a given device, not in DATA_DIR.

Regular files stand in for the HotAdded device here (a datastore file is exactly that in the vSphere
tests); a character device (``/dev/null``) stands in for a device node recovery must not trust.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from protocol.messages import MapStatus
from target_agent.storage.status import vm_status
from target_agent.storage.transaction import (
    DeviceNotAttached,
    VmPass,
    read_journal,
    recover_all,
    recover_vm,
)
from tests.support.tools import sha256_py
from vzcommon.blockhash import hash_block

BS = 64 * 1024
SIZE = 16 * BS


def block(fill: int) -> bytes:
    return bytes([fill]) * BS


def write(p: VmPass, device: Path, blocks: dict[int, int], *, fresh: bool = False, size: int = SIZE) -> None:
    w, res = p.open_disk(
        "d0", size, "", "cid-1", device=device, device_info={"file_name": "[ds] r/r.vmdk"}, fresh=fresh
    )
    if fresh:
        assert res.map_status == MapStatus.EMPTY and res.replica_size == 0 and not res.notes
    for idx, fill in blocks.items():
        w.write_block(idx * BS, block(fill), hash_block(block(fill)))
    w.flush()


def committed_device(tmp_path: Path) -> tuple[Path, Path]:
    data, dev = tmp_path / "data", tmp_path / "disk-flat.vmdk"
    dev.touch()
    os.truncate(dev, SIZE)
    p = VmPass(data, "vm", block_size=BS)
    p.begin()
    write(p, dev, {0: 1, 5: 2}, fresh=True)
    p.commit({"result": "ok"})
    p.close()
    return data, dev


def test_commit_writes_the_device_and_no_descriptor(tmp_path: Path) -> None:
    data, dev = committed_device(tmp_path)
    vdir = data / "vm"
    assert sorted(x.name for x in vdir.iterdir() if not x.name.startswith(".")) == [
        "d0-flat.vmdk.vzmap",
        "vzrep-status.json",
    ]
    with open(dev, "rb") as f:
        assert f.read(BS) == block(1) and os.path.getsize(dev) == SIZE
    p = VmPass(data, "vm", block_size=BS)  # the map is trusted next time (no descriptor CID to check)
    p.begin()
    _w, res = p.open_disk("d0", SIZE, "", "", device=dev)
    assert res.map_status == MapStatus.SENDING and not res.notes
    p.close()


def test_a_device_is_never_grown_or_truncated(tmp_path: Path) -> None:
    data, dev = committed_device(tmp_path)
    p = VmPass(data, "vm", block_size=BS)
    p.begin()
    with pytest.raises(Exception, match="must be extended first"):
        write(p, dev, {}, size=SIZE + BS)
    p.close()
    assert os.path.getsize(dev) == SIZE


def test_a_failed_pass_is_rolled_back_on_the_device(tmp_path: Path) -> None:
    data, dev = committed_device(tmp_path)
    before = sha256_py(dev)
    p = VmPass(data, "vm", block_size=BS)
    p.begin()
    write(p, dev, {0: 9, 7: 9, 15: 9})
    assert sha256_py(dev) != before
    p.rollback()
    p.close()
    assert sha256_py(dev) == before and os.path.getsize(dev) == SIZE


def test_crash_then_startup_recovery_uses_the_journaled_file(tmp_path: Path) -> None:
    data, dev = committed_device(tmp_path)
    before = sha256_py(dev)
    p = VmPass(data, "vm", block_size=BS)
    p.begin()
    write(p, dev, {0: 9, 3: 9})
    p._lock.release()  # the process dies: no rollback, the lock goes with it
    journal = read_journal(data / "vm")
    assert journal is not None and journal["devices"]["d0"]["file_name"] == "[ds] r/r.vmdk"
    assert "rolled back" in recover_all(data)["vm"]
    assert sha256_py(dev) == before


def test_a_device_node_is_not_trusted_after_a_restart(tmp_path: Path) -> None:
    data, dev = committed_device(tmp_path)
    before = sha256_py(dev)
    p = VmPass(data, "vm", block_size=BS)
    p.begin()
    write(p, dev, {0: 9})
    p._lock.release()
    # what the journal says was written is now a device node that may be another disk
    journal_path = data / "vm" / ".vzpass"
    from vzcommon.records import read_record, write_record

    body = read_record(journal_path, "vzrep-pass-journal")
    body["devices"]["d0"]["path"] = os.devnull
    write_record(journal_path, "vzrep-pass-journal", body)
    report = recover_all(data)
    assert report["vm"].startswith("NOT recovered") and "--vcenter" in report["vm"]
    assert vm_status(data / "vm")["pending_rollback"]  # nothing was dropped
    with pytest.raises(DeviceNotAttached):
        VmPass(data, "vm", block_size=BS).begin()  # the next pass is refused with the same message
    assert "restored" in (recover_vm(data, "vm", {"d0": dev}) or "")  # the disk, attached again
    assert sha256_py(dev) == before and not vm_status(data / "vm")["pending_rollback"]
