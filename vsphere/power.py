"""Power and network state of a VM: power on and off, connect or disconnect its NICs.

The DR side needs these to fail a replica over (revert it to a restore point, power it on, connect
its NICs) and to undo that. A replica's NICs are kept disconnected while it replicates, so it never
clashes with the source on the network.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from vsphere.faults import blocking
from vsphere.inventory import Inventory
from vsphere.vmomi import vim
from vzcommon.errors import InputError, VSphereError

_ON = "poweredOn"


class Power(Inventory):
    @blocking("power on a VM")
    def power_on(self, vm_moid: str) -> None:
        """Power on (nothing to do when it is on already)."""
        vm = self._vm(vm_moid)
        if self._props(vm, ["runtime.powerState"])["runtime.powerState"] != _ON:
            self._wait(vm.PowerOnVM_Task(), f"power on {vm_moid}")

    @blocking("power off a VM")
    def power_off(self, vm_moid: str) -> None:
        """Hard power off (nothing to do when it is off): a failed-over copy is thrown away after it."""
        vm = self._vm(vm_moid)
        if self._props(vm, ["runtime.powerState"])["runtime.powerState"] == _ON:
            self._wait(vm.PowerOffVM_Task(), f"power off {vm_moid}")

    @blocking("stop a VM")
    def shut_down(self, vm_moid: str, timeout: float) -> str:
        """Stop the VM for a planned failover: a guest shutdown when VMware Tools run in it (waited for
        up to ``timeout`` seconds), else a power off; what was done, for the report."""
        vm = self._vm(vm_moid)
        p = self._props(vm, ["runtime.powerState", "guest.toolsRunningStatus"])
        if p["runtime.powerState"] != _ON:
            return "the VM was already off"
        if p["guest.toolsRunningStatus"] != "guestToolsRunning":
            self._wait(vm.PowerOffVM_Task(), f"power off {vm_moid}")
            return "powered off (no VMware Tools running in the guest to shut it down)"
        vm.ShutdownGuest()
        deadline = time.monotonic() + timeout
        while self._props(vm, ["runtime.powerState"])["runtime.powerState"] == _ON:
            if time.monotonic() > deadline:
                raise VSphereError(
                    f"VM {vm_moid}'s guest did not shut down within {timeout:.0f} s: nothing was failed"
                    " over; shut it down (or power it off) and run the planned failover again"
                )
            time.sleep(1.0)
        return "the guest shut down"

    @blocking("list the networks of a VM's host")
    def host_networks(self, vm_moid: str) -> list[str]:
        """The networks (and distributed port groups) a NIC of the VM can be put on."""
        host = self._props(self._vm(vm_moid), ["runtime.host"])["runtime.host"]
        return sorted(n.name for n in host.network) if host is not None else []

    @blocking("connect or disconnect a VM's NICs")
    def set_nics_connected(
        self,
        vm_moid: str,
        connected: bool,
        networks: Mapping[str, str] | None = None,
        by_key: Mapping[int, str] | None = None,
    ) -> list[str]:
        """Every NIC's ``startConnected`` (and ``connected`` while the VM runs) set to ``connected``;
        what changed, one line a NIC.

        ``networks`` moves the NICs on a network (by name) to another one (a failover's
        ``--network-map``); ``by_key`` puts NICs (by device key) on a named network (undo puts them
        back). A network that the VM's host does not have is refused before anything changes.
        """
        vm = self._vm(vm_moid)
        p = self._props(vm, ["runtime.powerState", "runtime.host", "config.hardware.device"])
        running = p["runtime.powerState"] == _ON
        host_nets = {n.name: n for n in p["runtime.host"].network} if p["runtime.host"] is not None else {}
        wanted: dict[int, str] = {}
        for dev in p["config.hardware.device"] or []:
            if isinstance(dev, vim.vm.device.VirtualEthernetCard):
                now = self._nic_network(dev)
                to = (by_key or {}).get(dev.key) or (networks or {}).get(now or "")
                if to and to != now:
                    wanted[dev.key] = to
        unknown = sorted({n for n in wanted.values() if n not in host_nets})
        if unknown:
            raise InputError(
                f"VM {vm_moid}'s host has no network {', '.join(map(repr, unknown))}"
                f" (it has {', '.join(map(repr, sorted(host_nets))) or 'none'}): check --network-map"
            )
        changes, done = [], []
        for dev in p["config.hardware.device"] or []:
            if not isinstance(dev, vim.vm.device.VirtualEthernetCard):
                continue
            label = dev.deviceInfo.label if dev.deviceInfo else str(dev.key)
            moved = ""
            if dev.key in wanted:
                moved = f" on {wanted[dev.key]} (was {self._nic_network(dev)})"
                dev.backing = network_backing(host_nets[wanted[dev.key]], wanted[dev.key])
            dev.connectable = vim.vm.device.VirtualDevice.ConnectInfo(
                startConnected=connected,
                connected=connected and running,
                allowGuestControl=bool(dev.connectable and dev.connectable.allowGuestControl),
            )
            done.append(f"{label}: {'connected' if connected else 'disconnected'}{moved}")
            changes.append(vim.vm.device.VirtualDeviceSpec(operation="edit", device=dev))
        if changes:
            spec = vim.vm.ConfigSpec(deviceChange=changes)
            self._wait(vm.ReconfigVM_Task(spec=spec), f"set the NICs of {vm_moid}")
        return done


def network_backing(net: Any, name: str) -> Any:
    """A NIC's backing for ``net`` (a standard network or a distributed port group) named ``name``."""
    if isinstance(net, vim.dvs.DistributedVirtualPortgroup):
        return vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
            port=vim.dvs.PortConnection(switchUuid=net.config.distributedVirtualSwitch.uuid, portgroupKey=net.key)
        )
    return vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName=name, network=net)
