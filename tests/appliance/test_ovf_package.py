"""OVF descriptor, manifest and OVA packing on a small dummy disk (real qemu-img conversion)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tarfile
import xml.etree.ElementTree as ET

import pytest

from appliance.image import disk, ovf
from appliance.properties import PROPERTIES
from vzcommon.errors import InputError

NS = {"ovf": ovf.OVF, "rasd": ovf.RASD, "vssd": ovf.VSSD, "vmw": ovf.VMW}
pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")


@pytest.fixture
def ova_dir(tmp_path):
    raw = tmp_path / "dummy.raw"
    with raw.open("wb") as f:
        f.truncate(64 * disk.MiB)
        f.seek(10 * disk.MiB)
        f.write(b"vzrep" * 1000)
    ova = ovf.make_ova(raw, tmp_path / "out", ovf.Hardware(name="vzrep-test"))
    return raw, ova, tmp_path / "out"


def test_vmdk_is_stream_optimized(ova_dir):
    _, _, out = ova_dir
    info = subprocess.run(["qemu-img", "info", str(out / "vzrep-test-disk1.vmdk")], capture_output=True,
                          text=True, check=True).stdout
    assert "streamOptimized" in info and "64 MiB" in info


def test_descriptor_matches_files_and_hardware(ova_dir):
    raw, _, out = ova_dir
    tree = ET.parse(out / "vzrep-test.ovf")
    root = tree.getroot()
    assert root.tag == f"{{{ovf.OVF}}}Envelope"
    ref = root.find("ovf:References/ovf:File", NS)
    assert ref is not None
    href = ref.get(f"{{{ovf.OVF}}}href")
    assert href == "vzrep-test-disk1.vmdk"
    assert int(ref.get(f"{{{ovf.OVF}}}size") or 0) == (out / href).stat().st_size
    disk_el = root.find("ovf:DiskSection/ovf:Disk", NS)
    assert disk_el is not None
    assert int(disk_el.get(f"{{{ovf.OVF}}}capacity") or 0) == raw.stat().st_size
    assert disk_el.get(f"{{{ovf.OVF}}}format") == ovf.STREAM_FORMAT

    vhs = root.find("ovf:VirtualSystem/ovf:VirtualHardwareSection", NS)
    assert vhs is not None and vhs.get(f"{{{ovf.OVF}}}transport") == "com.vmware.guestInfo"
    vtype = vhs.findtext("ovf:System/vssd:VirtualSystemType", namespaces=NS) or ""
    assert int(vtype.removeprefix("vmx-")) >= 13
    items = {it.findtext("rasd:ResourceType", namespaces=NS): it for it in vhs.findall("ovf:Item", NS)}
    assert items["3"].findtext("rasd:VirtualQuantity", namespaces=NS) == "2"
    assert items["4"].findtext("rasd:VirtualQuantity", namespaces=NS) == "2048"
    assert items["6"].findtext("rasd:ResourceSubType", namespaces=NS) == "VirtualSCSI"
    assert items["10"].findtext("rasd:ResourceSubType", namespaces=NS) == "VmxNet3"
    assert items["17"].findtext("rasd:HostResource", namespaces=NS) == "ovf:/disk/vmdisk1"
    for item in items.values():  # CIM requires RASD elements in alphabetical order
        names = [child.tag.split("}")[1] for child in item]
        assert names == sorted(names)

    config = {c.get(f"{{{ovf.VMW}}}key"): c.get(f"{{{ovf.VMW}}}value") for c in vhs.findall("vmw:Config", NS)}
    assert config["disk.EnableUUID"] == "TRUE"  # the agents find HotAdded disks by their UUID

    keys = [p.get(f"{{{ovf.OVF}}}key") for p in root.iter(f"{{{ovf.OVF}}}Property")]
    assert keys == [p.key for p in PROPERTIES]
    token = next(p for p in root.iter(f"{{{ovf.OVF}}}Property") if p.get(f"{{{ovf.OVF}}}key") == "vzrep.pairing_token")
    assert token.get(f"{{{ovf.OVF}}}password") == "true"


def test_manifest_digests_and_ova_order(ova_dir):
    _, ova, out = ova_dir
    lines = (out / "vzrep-test.mf").read_text().splitlines()
    assert len(lines) == 2
    for line in lines:
        name = line[len("SHA256(") : line.index(")")]
        digest = line.split("= ")[1]
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    with tarfile.open(ova) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["vzrep-test.ovf", "vzrep-test.mf", "vzrep-test-disk1.vmdk"]
        assert all(m.isfile() and m.uid == 0 for m in members)
        extracted = tar.extractfile("vzrep-test.ovf")
        assert extracted is not None and extracted.read() == (out / "vzrep-test.ovf").read_bytes()


def test_disk_layout_scripts():
    layout = disk.DiskLayout(size=2048 * disk.MiB, root_uuid="0e4a3c2e-1111-4222-8333-444455556666")
    script = disk.sfdisk_script(layout)
    assert "start=2048, size=131072, type=c, bootable" in script
    assert f"size={(2048 - 65) * 2048}, type=83" in script
    assert "root=UUID=0e4a3c2e-1111-4222-8333-444455556666" in disk.syslinux_cfg(layout.root_uuid)
    assert disk.fstab(layout.root_uuid).startswith("UUID=0e4a3c2e")


def test_missing_mbr_code_names_the_package(tmp_path, monkeypatch):
    """syslinux only recommends syslinux-common, which holds the MBR code: say so, touch nothing."""
    monkeypatch.setattr(disk, "MBR_CODE", tmp_path / "absent" / "mbr.bin")
    raw = tmp_path / "disk.raw"
    with pytest.raises(InputError, match="install syslinux-common"):
        disk.assemble(tmp_path / "root", raw)
    assert not raw.exists()
