"""Power and network state of a VM: power on and off, connect or disconnect its NICs.

The DR side needs these to fail a replica over (revert it to a restore point, power it on, connect
its NICs) and to undo that. A replica's NICs are kept disconnected while it replicates, so it never
clashes with the source on the network.
"""

from __future__ import annotations

from vsphere.faults import blocking
from vsphere.inventory import Inventory
from vsphere.vmomi import vim

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

    @blocking("connect or disconnect a VM's NICs")
    def set_nics_connected(self, vm_moid: str, connected: bool) -> list[str]:
        """Every NIC's ``startConnected`` (and ``connected`` while the VM runs) set to ``connected``;
        what changed, one line a NIC."""
        vm = self._vm(vm_moid)
        p = self._props(vm, ["runtime.powerState", "config.hardware.device"])
        running = p["runtime.powerState"] == _ON
        changes, done = [], []
        for dev in p["config.hardware.device"] or []:
            if not isinstance(dev, vim.vm.device.VirtualEthernetCard):
                continue
            label = dev.deviceInfo.label if dev.deviceInfo else str(dev.key)
            dev.connectable = vim.vm.device.VirtualDevice.ConnectInfo(
                startConnected=connected,
                connected=connected and running,
                allowGuestControl=bool(dev.connectable and dev.connectable.allowGuestControl),
            )
            done.append(f"{label}: {'connected' if connected else 'disconnected'}")
            changes.append(vim.vm.device.VirtualDeviceSpec(operation="edit", device=dev))
        if changes:
            spec = vim.vm.ConfigSpec(deviceChange=changes)
            self._wait(vm.ReconfigVM_Task(spec=spec), f"set the NICs of {vm_moid}")
        return done
