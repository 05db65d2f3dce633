"""vcsim (the govmomi vSphere simulator, patched with CBT) for the vSphere tests.

One vcsim per test session, on 127.0.0.1 port 0, with a fixed user and a random password; every
test gets a logged-in client (TLS pinned to vcsim's certificate) and, through ``lab``, a fresh
source VM on host DC0_H0 with DC0_H0_VM1 as the appliance. vcsim keeps its datastores in local
directories, so tests write guest data straight into the source VM's ``-flat.vmdk``.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from vsphere.client import VSphereClient
from vsphere.connection import connect
from vsphere.devices import DatastoreFileLocator
from vsphere.hardware import DiskRecord, HardwareRecord, NicRecord
from vsphere.model import VmInfo, split_datastore_path
from vsphere.options import ConnectOptions, Credentials, server_thumbprint

ROOT = Path(__file__).resolve().parents[2]
VCSIM = ROOT / ".vcsim" / "bin" / "vcsim-patched"
BLOCK = 64 * 1024  # vcsim-patched tracks changes in 64 KiB blocks
APPLIANCE = "DC0_H0_VM1"
HOST = "DC0_H0"


@dataclass(frozen=True)
class Vcsim:
    host: str
    port: int
    user: str
    password: str
    thumbprint: str

    def options(self, **kw: object) -> ConnectOptions:
        base: dict[str, object] = {
            "host": self.host,
            "port": self.port,
            "credentials": Credentials(None, self.user, self.password),
            "thumbprint": self.thumbprint,
            "task_timeout": 30.0,
        }
        base.update(kw)
        return ConnectOptions(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def vcsim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vcsim]:
    if not os.access(VCSIM, os.X_OK):
        pytest.fail(f"{VCSIM} is missing: run `make vcsim` (make test builds it first)")
    env_file = tmp_path_factory.mktemp("vcsim") / "vcsim.env"
    password = secrets.token_urlsafe(12)
    proc = subprocess.Popen(
        [str(VCSIM), "-l", "127.0.0.1:0", "-E", str(env_file), "-username", "vzrep", "-password", password],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        url = None
        while time.monotonic() < deadline:
            text = env_file.read_text() if env_file.exists() else ""
            if "GOVC_URL=" in text and text.endswith("\n"):
                url = text.split("GOVC_URL=", 1)[1].split()[0]
                break
            if proc.poll() is not None:
                pytest.fail(f"vcsim exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            time.sleep(0.05)
        if url is None:
            pytest.fail("vcsim did not write its address within 20 s")
        parts = urlsplit(url)
        assert parts.hostname and parts.port
        yield Vcsim(
            parts.hostname, parts.port, "vzrep", password, server_thumbprint(parts.hostname, parts.port)
        )
    finally:
        proc.send_signal(signal.SIGTERM)  # vcsim removes its datastore directories on SIGTERM
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


@pytest.fixture
async def client(vcsim: Vcsim) -> AsyncIterator[VSphereClient]:
    c = await connect(vcsim.options())
    try:
        yield c
    finally:
        await c.close()


@dataclass
class Lab:
    client: VSphereClient
    vm: VmInfo  # the source VM, fresh for this test
    appliance: VmInfo
    uuid_path: Path  # a product_uuid file holding the appliance's BIOS UUID
    locator: DatastoreFileLocator
    roots: dict[str, Path]
    work_dir: Path

    def flat_file(self, file_name: str) -> Path:
        ds, rel = split_datastore_path(file_name)
        p = self.roots[ds] / rel
        return p.with_name(p.name.removesuffix(".vmdk") + "-flat.vmdk")

    def write_blocks(self, blocks: dict[int, int], disk: int = 0) -> None:
        """Write 64 KiB blocks of a byte value into the source VM's disk, as a guest would."""
        path = self.flat_file(self.vm.disks[disk].file_name)
        with open(path, "r+b") as f:
            for idx, fill in blocks.items():
                f.seek(idx * BLOCK)
                f.write(bytes([fill]) * BLOCK)
            f.flush()
            os.fsync(f.fileno())

    async def refresh(self) -> VmInfo:
        self.vm = await self.client.vm_info(self.vm.moid)
        return self.vm


async def make_vm(client: VSphereClient, name: str, capacity: int = 4 << 20, disks: int = 1) -> VmInfo:
    hardware = HardwareRecord(
        vm_name=name,
        hardware_version="vmx-13",
        guest_id="otherGuest64",
        firmware="bios",
        num_cpu=1,
        cores_per_socket=1,
        memory_mb=256,
        disks=tuple(
            DiskRecord(2000 + u, f"disk{u}", capacity, "ParaVirtualSCSIController", 0, u) for u in range(disks)
        ),
        nics=(NicRecord(4000, "VirtualVmxnet3", "VM Network"),),
    )
    vm = await client.create_vm(hardware, datastore=None, folder=None, resource_pool=None, host=HOST)
    roots = await client.datastore_paths()
    for d in vm.disks:  # a flat file of the full size, as ESXi makes it
        ds, rel = split_datastore_path(d.file_name)
        os.truncate(Path(roots[ds]) / rel.replace(".vmdk", "-flat.vmdk"), d.capacity)
    return vm


@pytest.fixture
async def lab(client: VSphereClient, tmp_path: Path) -> AsyncIterator[Lab]:
    vm = await make_vm(client, f"src-{uuid.uuid4().hex[:8]}")
    appliance = await client.find_vm(APPLIANCE)
    uuid_path = tmp_path / "product_uuid"
    uuid_path.write_text(appliance.bios_uuid.upper() + "\n")  # Linux prints it in upper case
    roots = {name: Path(url) for name, url in (await client.datastore_paths()).items()}
    work = tmp_path / "work"
    work.mkdir()
    lab = Lab(client, vm, appliance, uuid_path, DatastoreFileLocator(roots), roots, work)
    try:
        yield lab
    finally:
        await client.destroy_vm(vm.moid)
