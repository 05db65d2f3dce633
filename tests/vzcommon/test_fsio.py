"""The storage seam: free when nothing records, and it sees every durable step when something does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.reliability.record import recording
from vzcommon import fsio
from vzcommon.durable import atomic_write, unlink_durable
from vzcommon.sparse import punch_hole


def test_unrecorded_the_seam_is_the_os_functions_themselves() -> None:
    assert fsio.pwrite is os.pwrite and fsio.fsync is os.fsync and fsio.replace is os.replace
    assert fsio.open is os.open and fsio.punch_hole is punch_hole
    for name in fsio.NAMES:
        assert getattr(fsio, name) is fsio.original(name)


def test_install_routes_the_calls_and_uninstall_restores_them(tmp_path: Path) -> None:
    seen: list[str] = []

    def unlink(path: str) -> None:
        seen.append(os.fspath(path))
        fsio.original("unlink")(path)

    (tmp_path / "x").write_bytes(b"x")
    uninstall = fsio.install({"unlink": unlink})
    try:
        unlink_durable(tmp_path / "x")
    finally:
        uninstall()
    assert seen == [str(tmp_path / "x")] and not (tmp_path / "x").exists()
    assert fsio.unlink is os.unlink
    with pytest.raises(ValueError, match="no call named"):
        fsio.install({"chmod": os.chmod})


def test_an_atomic_write_is_recorded_step_by_step(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"old")
    with recording(tmp_path) as rec:
        atomic_write(tmp_path / "f", b"new bytes")
    kinds = [op.kind for op in rec.ops]
    assert kinds == ["create", "write", "fsync", "rename", "dirsync"]  # no leftover temporary to unlink
    create = next(op for op in rec.ops if op.kind == "create")
    write = next(op for op in rec.ops if op.kind == "write")
    assert create.path == ".f.tmp" and write.node == create.node and write.data == b"new bytes"
    assert rec.ops[-2].path == ".f.tmp" and rec.ops[-2].path2 == "f" and rec.ops[-1].path == "."
    assert (tmp_path / "f").read_bytes() == b"new bytes"
    assert fsio.write is os.write  # the recorder is gone after the block
