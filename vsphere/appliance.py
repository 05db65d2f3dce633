"""Which VM the agent itself runs in: found by the BIOS UUID the hypervisor gives the guest.

Linux shows it in ``/sys/class/dmi/id/product_uuid``. With SMBIOS older than 2.6 (old VM hardware)
the first three fields appear byte-swapped relative to vSphere's ``config.uuid``, so both spellings
are looked up.
"""

from __future__ import annotations

import os
import uuid as uuidlib
from pathlib import Path
from typing import TYPE_CHECKING

from vsphere.model import VmInfo
from vzcommon.errors import InputError, VSphereError

if TYPE_CHECKING:  # PRODUCT_UUID is read by the CLIs before they decide to load pyVmomi
    from vsphere.client import VSphereClient

PRODUCT_UUID = Path("/sys/class/dmi/id/product_uuid")


def read_bios_uuid(path: str | os.PathLike[str] = PRODUCT_UUID) -> str:
    p = Path(path)
    try:
        text = p.read_text().strip()
    except OSError as e:
        raise InputError(
            f"cannot read this machine's BIOS UUID from {p} ({e.strerror}); run the agent as root in the "
            "appliance VM, or name the appliance VM explicitly (--appliance-vm)"
        ) from e
    try:
        return str(uuidlib.UUID(text))
    except ValueError as e:
        raise InputError(f"{p} does not hold a UUID: {text!r}") from e


def uuid_candidates(value: str) -> list[str]:
    u = uuidlib.UUID(value)
    swapped = str(uuidlib.UUID(bytes=u.bytes_le))
    return [str(u)] if swapped == str(u) else [str(u), swapped]


async def find_appliance(
    client: VSphereClient, *, uuid_path: str | os.PathLike[str] = PRODUCT_UUID, name: str | None = None
) -> VmInfo:
    """The appliance VM: by name when given, else by this machine's BIOS UUID."""
    if name:
        return await client.find_vm(name)
    bios = read_bios_uuid(uuid_path)
    vm = await client.find_vm_by_bios_uuid(uuid_candidates(bios))
    if vm is None:
        raise VSphereError(
            f"no VM on {client.host} has this machine's BIOS UUID {bios}: the agent must run in a VM of "
            "that vCenter/ESXi for HotAdd (or name the appliance VM with --appliance-vm)"
        )
    return vm
