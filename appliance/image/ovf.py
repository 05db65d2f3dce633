"""OVF 1.x descriptor, SHA256 manifest, streamOptimized VMDK conversion and OVA packing.

Nobody has imported the result into a real ESXi yet; the descriptor follows what vSphere exports
(vmx-13, pvscsi, vmxnet3, guestInfo transport). The VMDK conversion stays behind
:func:`convert_to_stream_vmdk` so another converter (e.g. VMware's vmware-vdiskmanager) can replace it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from appliance.properties import PROPERTIES

OVF = "http://schemas.dmtf.org/ovf/envelope/1"
RASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
VSSD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
VMW = "http://www.vmware.com/schema/ovf"
CIM = "http://schemas.dmtf.org/wbem/wscim/1/common"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
STREAM_FORMAT = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
for _prefix, _uri in (("ovf", OVF), ("rasd", RASD), ("vssd", VSSD), ("vmw", VMW), ("cim", CIM), ("xsi", XSI)):
    ET.register_namespace(_prefix, _uri)


@dataclass(frozen=True)
class Hardware:
    name: str = "vzrep"
    version: str = "0.1.0"
    vmx: str = "vmx-13"
    cpus: int = 2
    memory_mib: int = 2048
    network: str = "VM Network"


def convert_to_stream_vmdk(raw: Path, vmdk: Path) -> None:
    """The one place that makes the VMDK: qemu-img's streamOptimized subformat."""
    subprocess.run(
        ["qemu-img", "convert", "-q", "-f", "raw", "-O", "vmdk",
         "-o", "subformat=streamOptimized,adapter_type=lsilogic", str(raw), str(vmdk)],
        check=True,
    )  # fmt: skip


def _q(ns: str, tag: str) -> str:
    return f"{{{ns}}}{tag}"


def _sub(parent: ET.Element, ns: str, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, _q(ns, tag), {_attr(k): v for k, v in attrs.items()})
    if text is not None:
        el.text = text
    return el


def _attr(key: str) -> str:
    prefix, _, name = key.partition("_")
    return _q({"ovf": OVF, "vmw": VMW}[prefix], name)


def _item(section: ET.Element, fields: dict[str, str]) -> None:
    # CIM RASD elements must appear in alphabetical order.
    item = _sub(section, OVF, "Item")
    for name in sorted(fields):
        _sub(item, RASD, name, fields[name])


def descriptor(vmdk_name: str, vmdk_size: int, capacity_bytes: int, hw: Hardware = Hardware()) -> bytes:
    """The OVF envelope for one VM with one streamOptimized disk and the vApp properties."""
    env = ET.Element(_q(OVF, "Envelope"))
    refs = _sub(env, OVF, "References")
    _sub(refs, OVF, "File", ovf_href=vmdk_name, ovf_id="file1", ovf_size=str(vmdk_size))
    disks = _sub(env, OVF, "DiskSection")
    _sub(disks, OVF, "Info", "Virtual disk information")
    _sub(
        disks,
        OVF,
        "Disk",
        ovf_capacity=str(capacity_bytes),
        ovf_capacityAllocationUnits="byte",
        ovf_diskId="vmdisk1",
        ovf_fileRef="file1",
        ovf_format=STREAM_FORMAT,
    )
    nets = _sub(env, OVF, "NetworkSection")
    _sub(nets, OVF, "Info", "The list of logical networks")
    net = _sub(nets, OVF, "Network", ovf_name=hw.network)
    _sub(net, OVF, "Description", f"The {hw.network} network")

    vs = _sub(env, OVF, "VirtualSystem", ovf_id=hw.name)
    _sub(vs, OVF, "Info", "vzrep replication appliance")
    _sub(vs, OVF, "Name", hw.name)
    os_section = _sub(vs, OVF, "OperatingSystemSection", ovf_id="96", vmw_osType="debian12_64Guest")
    _sub(os_section, OVF, "Info", "The kind of installed guest operating system")

    vhs = _sub(vs, OVF, "VirtualHardwareSection", ovf_transport="com.vmware.guestInfo")
    _sub(vhs, OVF, "Info", "Virtual hardware requirements")
    system = _sub(vhs, OVF, "System")
    _sub(system, VSSD, "ElementName", "Virtual Hardware Family")
    _sub(system, VSSD, "InstanceID", "0")
    _sub(system, VSSD, "VirtualSystemIdentifier", hw.name)
    _sub(system, VSSD, "VirtualSystemType", hw.vmx)
    _item(
        vhs,
        {
            "AllocationUnits": "hertz * 10^6",
            "Description": "Number of Virtual CPUs",
            "ElementName": f"{hw.cpus} virtual CPU(s)",
            "InstanceID": "1",
            "ResourceType": "3",
            "VirtualQuantity": str(hw.cpus),
        },
    )
    _item(
        vhs,
        {
            "AllocationUnits": "byte * 2^20",
            "Description": "Memory Size",
            "ElementName": f"{hw.memory_mib}MB of memory",
            "InstanceID": "2",
            "ResourceType": "4",
            "VirtualQuantity": str(hw.memory_mib),
        },
    )
    _item(
        vhs,
        {
            "Address": "0",
            "Description": "SCSI Controller",
            "ElementName": "SCSI Controller 0",
            "InstanceID": "3",
            "ResourceSubType": "VirtualSCSI",
            "ResourceType": "6",
        },
    )
    _item(
        vhs,
        {
            "AddressOnParent": "0",
            "ElementName": "Hard Disk 1",
            "HostResource": "ovf:/disk/vmdisk1",
            "InstanceID": "4",
            "Parent": "3",
            "ResourceType": "17",
        },
    )
    _item(
        vhs,
        {
            "AddressOnParent": "7",
            "AutomaticAllocation": "true",
            "Connection": hw.network,
            "Description": "VmxNet3 ethernet adapter",
            "ElementName": "Network adapter 1",
            "InstanceID": "5",
            "ResourceSubType": "VmxNet3",
            "ResourceType": "10",
        },
    )
    # disk.EnableUUID: the guest sees each disk's UUID (/dev/disk/by-id/wwn-0x6000c2...), by which the
    # agents find the disks HotAdded to them (docs/vsphere.md); without it they fall back to SCSI units.
    for key, value in (
        ("tools.syncTimeWithHost", "false"),
        ("powerOpInfo.powerOffType", "soft"),
        ("disk.EnableUUID", "TRUE"),
    ):
        _sub(vhs, VMW, "Config", ovf_required="false", vmw_key=key, vmw_value=value)

    product = _sub(vs, OVF, "ProductSection", ovf_required="false")
    _sub(product, OVF, "Info", "Deployment settings of the vzrep appliance")
    _sub(product, OVF, "Product", "vzrep replication appliance")
    _sub(product, OVF, "Vendor", "vzrep")
    _sub(product, OVF, "Version", hw.version)
    category = None
    for prop in PROPERTIES:
        if prop.category != category:
            category = prop.category
            _sub(product, OVF, "Category", category)
        attrs = {
            "ovf_key": prop.key,
            "ovf_type": "string",
            "ovf_userConfigurable": "true",
            "ovf_value": prop.default,
        }
        if prop.qualifiers:
            attrs["ovf_qualifiers"] = prop.qualifiers
        if prop.password:
            attrs["ovf_password"] = "true"
        el = _sub(product, OVF, "Property", **attrs)
        _sub(el, OVF, "Label", prop.label)
        _sub(el, OVF, "Description", prop.description)
    ET.indent(env)
    body: bytes = ET.tostring(env, encoding="utf-8", xml_declaration=True)
    return body + b"\n"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def manifest(files: list[Path]) -> bytes:
    """The ``.mf`` manifest: one ``SHA256(name)= hex`` line per file, as ovftool writes it."""
    return "".join(f"SHA256({p.name})= {sha256_file(p)}\n" for p in files).encode()


def pack_ova(ova: Path, ovf_file: Path, mf_file: Path, disks: list[Path]) -> None:
    """An OVA is a ustar archive with the descriptor first, then the manifest, then the disks."""
    with tarfile.open(ova, "w", format=tarfile.USTAR_FORMAT) as tar:
        for path in (ovf_file, mf_file, *disks):
            info = tar.gettarinfo(str(path), arcname=path.name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = 0o644
            with path.open("rb") as f:
                tar.addfile(info, f)


def make_ova(raw: Path, outdir: Path, hw: Hardware = Hardware()) -> Path:
    """raw disk -> streamOptimized VMDK -> descriptor + manifest -> ``outdir/<name>.ova``."""
    outdir.mkdir(parents=True, exist_ok=True)
    vmdk = outdir / f"{hw.name}-disk1.vmdk"
    # Convert beside and rename, so a VM still booting the previous image keeps its file.
    tmp = outdir / f".{vmdk.name}.tmp"
    tmp.unlink(missing_ok=True)
    convert_to_stream_vmdk(raw, tmp)
    os.replace(tmp, vmdk)
    ovf_file = outdir / f"{hw.name}.ovf"
    ovf_file.write_bytes(descriptor(vmdk.name, vmdk.stat().st_size, raw.stat().st_size, hw))
    mf_file = outdir / f"{hw.name}.mf"
    mf_file.write_bytes(manifest([ovf_file, vmdk]))
    ova = outdir / f"{hw.name}.ova"
    pack_ova(ova, ovf_file, mf_file, [vmdk])
    return ova


def main(argv: list[str] | None = None) -> int:
    """``python -m appliance.image.ovf RAW OUTDIR``: pack a raw disk (e.g. from packer) as an OVA."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m appliance.image.ovf", description=main.__doc__)
    ap.add_argument("raw", type=Path)
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--name", default=Hardware.name)
    args = ap.parse_args(argv)
    print(make_ova(args.raw, args.outdir, Hardware(name=args.name)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
