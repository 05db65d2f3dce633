"""The one module that imports pyVmomi: typed calls into vSphere, run in worker threads.

pyVmomi blocks, so every public method of :class:`VSphereClient` is ``async`` and runs its pyVmomi
calls in ``asyncio.to_thread``. Managed objects never leave this module: callers name them by moid
and get the plain records of :mod:`source_agent.vsphere.model` back. Faults are translated here, once,
into :class:`vzcommon.errors.VSphereError` (or ``InputError``) with a message that says what the user
can do; no pyVmomi exception escapes.

Tasks are awaited by polling ``info.state``/``info.error``/``info.result`` through the property
collector, with a timeout (``ConnectOptions.task_timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

from pyVim import connect as _pyvim_connect
from pyVmomi import vim as _vim
from pyVmomi import vmodl as _vmodl

from source_agent.vsphere.model import (
    HOTADD_MARKER_PREFIX,
    AttachedDisk,
    CbtNotEnabled,
    ChangeIdRejected,
    ControllerInfo,
    DiskInfo,
    DiskMode,
    NicInfo,
    SnapshotInfo,
    VmInfo,
)
from source_agent.vsphere.options import ConnectOptions, server_thumbprint, ssl_context
from vzcommon.errors import InputError, VSphereError, VzrepError

log = logging.getLogger(__name__)

# pyVmomi builds its types at run time; to the type checker they are Any.
vim: Any = _vim
vmodl: Any = _vmodl

P = ParamSpec("P")
T = TypeVar("T")

_SCSI_UNITS = [u for u in range(16) if u != 7]  # unit 7 is the controller itself


def translate_fault(exc: BaseException, action: str, host: str = "vSphere") -> VzrepError:
    """Map a pyVmomi fault (or socket/TLS error) to our error, naming what the user can do."""
    if isinstance(exc, VzrepError):
        return exc
    if isinstance(exc, vim.fault.InvalidLogin):
        return VSphereError(
            f"{host} refused the user name or password ({action}); "
            "check the user and password in the vSphere credentials file"
        )
    if isinstance(exc, vim.fault.NotAuthenticated):
        return VSphereError(
            f"{action}: the vSphere session is not (or no longer) valid on {host}; "
            "log in again or give a fresh session token"
        )
    if isinstance(exc, vim.fault.NoPermission):
        priv = exc.privilegeId or "(not named by the server)"
        obj = getattr(exc.object, "_moId", None) if exc.object is not None else None
        where = f" on {obj}" if obj else ""
        return VSphereError(
            f"{action}: the vSphere user lacks the privilege {priv}{where}; "
            "grant it to the user's role (docs/vsphere.md lists every privilege the agent needs)"
        )
    if isinstance(exc, vmodl.fault.ManagedObjectNotFound):
        obj = getattr(exc.obj, "_moId", "?") if exc.obj is not None else "?"
        return VSphereError(f"{action}: the vSphere object {obj} no longer exists (deleted meanwhile?)")
    if isinstance(exc, vim.fault.FileNotFound):
        return VSphereError(f"{action}: file not found on the datastore: {exc.file}")
    if isinstance(exc, vmodl.MethodFault):
        msg = exc.msg or (exc.faultMessage[0].message if exc.faultMessage else "")
        name = type(exc).__name__.rsplit(".", 1)[-1]
        return VSphereError(f"{action} failed on {host}: {name}{': ' + msg if msg else ''}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return VSphereError(
            f"{action}: the TLS certificate of {host} is not trusted ({exc.verify_message or exc}); "
            "install its CA, or check its SHA-256 thumbprint on the host console and pin it with "
            "--thumbprint"
        )
    if isinstance(exc, OSError):
        return VSphereError(f"{action}: cannot reach {host}: {exc}")
    return VSphereError(f"{action} failed on {host}: {type(exc).__name__}: {exc}")


def _threaded(
    action: str,
) -> Callable[
    [Callable[Concatenate[VSphereClient, P], T]], Callable[Concatenate[VSphereClient, P], Awaitable[T]]
]:
    """Run a blocking method in a worker thread; translate whatever it raises."""

    def wrap(
        fn: Callable[Concatenate[VSphereClient, P], T],
    ) -> Callable[Concatenate[VSphereClient, P], Awaitable[T]]:
        async def run(self: VSphereClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
            def call() -> T:
                try:
                    return fn(self, *args, **kwargs)
                except VzrepError:
                    raise
                except Exception as e:
                    raise translate_fault(e, action, self.host) from e

            return await asyncio.to_thread(call)

        functools.update_wrapper(run, fn)
        return run

    return wrap


@dataclass(frozen=True)
class HotAddRequest:
    file_name: str
    capacity: int  # bytes
    mode: DiskMode
    owner: str  # recorded in the appliance's marker, e.g. "vm-57/snapshot-70"


@dataclass(frozen=True)
class NewDisk:
    controller_type: str
    bus_number: int
    unit_number: int
    capacity: int


@dataclass(frozen=True)
class NewNic:
    type: str
    network: str | None


@dataclass(frozen=True)
class NewVmSpec:
    name: str
    hardware_version: str
    guest_id: str
    firmware: str
    num_cpu: int
    cores_per_socket: int
    memory_mb: int
    disks: tuple[NewDisk, ...]
    nics: tuple[NewNic, ...]
    annotation: str = ""


class VSphereClient:
    """A logged-in session; use :func:`connect` to make one and :meth:`close` (or ``async with``)."""

    def __init__(self, si: Any, opts: ConnectOptions) -> None:
        self._si = si
        self._opts = opts
        self.host = f"{opts.host}:{opts.port}"

    async def __aenter__(self) -> VSphereClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- plumbing --------------------------------------------------------------------------------

    @property
    def _content(self) -> Any:
        return self._si.content

    def _vm(self, moid: str) -> Any:
        return vim.VirtualMachine(moid, self._si._stub)

    def _snap(self, moid: str) -> Any:
        return vim.vm.Snapshot(moid, self._si._stub)

    def _props(self, obj: Any, paths: Sequence[str]) -> dict[str, Any]:
        pc = self._content.propertyCollector
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=obj)],
            propSet=[vmodl.query.PropertyCollector.PropertySpec(type=type(obj), pathSet=list(paths))],
        )
        res = pc.RetrievePropertiesEx(specSet=[spec], options=vmodl.query.PropertyCollector.RetrieveOptions())
        out: dict[str, Any] = dict.fromkeys(paths)
        for oc in res.objects if res else []:
            for prop in oc.propSet or []:
                out[prop.name] = prop.val
        return out

    def _wait(self, task: Any, what: str) -> Any:
        deadline = time.monotonic() + self._opts.task_timeout
        delay = 0.02
        while True:
            p = self._props(task, ["info.state", "info.error", "info.result"])
            state = p["info.state"]
            if state == vim.TaskInfo.State.success:
                return p["info.result"]
            if state == vim.TaskInfo.State.error:
                raise p["info.error"]
            if time.monotonic() > deadline:
                raise VSphereError(
                    f"{what}: the vSphere task {task._moId} did not finish within "
                    f"{self._opts.task_timeout:.0f} s (state {state}); check the task list in vCenter, "
                    "then retry the pass"
                )
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _vms_named(self, name: str) -> list[Any]:
        out = []
        for v in self._all_vms():
            try:
                if v.name == name:
                    out.append(v)
            except vmodl.fault.ManagedObjectNotFound:  # deleted while we looked
                continue
        return out

    def _all_vms(self) -> list[Any]:
        view = self._content.viewManager.CreateContainerView(
            self._content.rootFolder, [vim.VirtualMachine], True
        )
        try:
            return list(view.view)
        finally:
            view.Destroy()

    # -- session ---------------------------------------------------------------------------------

    @_threaded("log out")
    def _logout(self) -> None:
        try:
            if not self._opts.session_token:  # never end a session someone lent us
                self._content.sessionManager.Logout()
        finally:
            self._si._stub.DropConnections()  # close the pooled TLS sockets now, not at GC

    async def close(self) -> None:
        with contextlib.suppress(VzrepError):
            await self._logout()

    @_threaded("read the session")
    def session_info(self) -> dict[str, str]:
        s = self._content.sessionManager.currentSession
        about = self._content.about
        return {
            "server": about.fullName,
            "api_version": about.apiVersion,
            "instance_uuid": about.instanceUuid or "",
            "user": s.userName if s else "",
            "session_key": s.key if s else "",
        }

    @_threaded("check privileges")
    def missing_privileges(self, moids: Sequence[str], privileges: Sequence[str]) -> dict[str, list[str]]:
        """Privileges the session lacks, per VM moid (empty lists when everything is granted)."""
        am = self._content.authorizationManager
        session = self._content.sessionManager.currentSession
        out: dict[str, list[str]] = {}
        for moid in moids:
            granted = am.HasPrivilegeOnEntity(
                entity=self._vm(moid), sessionId=session.key, privId=list(privileges)
            )
            out[moid] = [p for p, ok in zip(privileges, granted, strict=True) if not ok]
        return out

    # -- inventory -------------------------------------------------------------------------------

    def _vm_info(self, vm: Any) -> VmInfo:
        cfg = vm.config
        if cfg is None:
            raise VSphereError(f"VM {vm._moId} has no configuration (inaccessible or being created)")
        hw = cfg.hardware
        controllers: dict[int, ControllerInfo] = {}
        for d in hw.device:
            if isinstance(d, vim.vm.device.VirtualController) and hasattr(d, "busNumber"):
                controllers[d.key] = ControllerInfo(d.key, type(d).__name__.rsplit(".", 1)[-1], d.busNumber)
        disks: list[DiskInfo] = []
        nics: list[NicInfo] = []
        for d in hw.device:
            if isinstance(d, vim.vm.device.VirtualDisk):
                disks.append(_disk_info(d, controllers))
            elif isinstance(d, vim.vm.device.VirtualEthernetCard):
                nics.append(NicInfo(d.key, type(d).__name__.rsplit(".", 1)[-1], self._nic_network(d)))
        runtime = vm.runtime
        extra: dict[str, str] = {}
        for opt in cfg.extraConfig or []:
            extra[opt.key] = str(opt.value)  # the last value of a key wins
        return VmInfo(
            moid=vm._moId,
            name=cfg.name,
            bios_uuid=cfg.uuid or "",
            instance_uuid=cfg.instanceUuid or "",
            hardware_version=cfg.version,
            num_cpu=hw.numCPU,
            cores_per_socket=hw.numCoresPerSocket or 1,
            memory_mb=hw.memoryMB,
            guest_id=cfg.guestId or "",
            firmware=cfg.firmware or "bios",
            cbt_enabled=bool(cfg.changeTrackingEnabled),
            power_state=str(runtime.powerState),
            template=bool(cfg.template),
            host=runtime.host._moId if runtime.host is not None else None,
            datastores=tuple(sorted({d.datastore for d in disks})),
            controllers=tuple(controllers.values()),
            disks=tuple(disks),
            nics=tuple(nics),
            extra_config=extra,
            annotation=cfg.annotation or "",
        )

    def _nic_network(self, nic: Any) -> str | None:
        b = nic.backing
        if isinstance(b, vim.vm.device.VirtualEthernetCard.NetworkBackingInfo):
            return str(b.deviceName) if b.deviceName else None
        if isinstance(b, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo) and b.port:
            for net in self._networks():
                if isinstance(net, vim.dvs.DistributedVirtualPortgroup) and net.key == b.port.portgroupKey:
                    return str(net.name)
        return None

    def _networks(self) -> list[Any]:
        view = self._content.viewManager.CreateContainerView(self._content.rootFolder, [vim.Network], True)
        try:
            return list(view.view)
        finally:
            view.Destroy()

    @_threaded("read the VM")
    def vm_info(self, moid: str) -> VmInfo:
        return self._vm_info(self._vm(moid))

    @_threaded("find the VM")
    def find_vm(self, name_or_moid: str) -> VmInfo:
        """A VM by moid (``vm-123``) or by name; a name that is not unique is refused."""
        if name_or_moid.startswith("vm-"):
            with contextlib.suppress(vmodl.fault.ManagedObjectNotFound):
                return self._vm_info(self._vm(name_or_moid))
        matches = self._vms_named(name_or_moid)
        if not matches:
            raise InputError(
                f"no VM named {name_or_moid!r} on {self.host}; check the name (it is case-sensitive) "
                "or give its managed object id (vm-NNN)"
            )
        if len(matches) > 1:
            ids = ", ".join(sorted(v._moId for v in matches))
            raise InputError(f"{len(matches)} VMs are named {name_or_moid!r} ({ids}); give the moid instead")
        return self._vm_info(matches[0])

    @_threaded("find the VM by BIOS UUID")
    def find_vm_by_bios_uuid(self, candidates: Sequence[str]) -> VmInfo | None:
        index = self._content.searchIndex
        for uuid in candidates:
            vm = index.FindByUuid(None, uuid, True, False)
            if vm is not None:
                return self._vm_info(vm)
        return None

    # -- changed block tracking ------------------------------------------------------------------

    @_threaded("change Changed Block Tracking")
    def set_cbt(self, vm_moid: str, enabled: bool) -> None:
        vm = self._vm(vm_moid)
        self._wait(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(changeTrackingEnabled=enabled)), "set CBT")

    @_threaded("query changed disk areas")
    def query_changed_areas(
        self, vm_moid: str, snapshot_moid: str, disk_key: int, change_id: str, capacity: int
    ) -> list[tuple[int, int]]:
        """``(offset, length)`` areas changed since ``change_id`` ("*": all allocated areas)."""
        vm, snap = self._vm(vm_moid), self._snap(snapshot_moid)
        out: list[tuple[int, int]] = []
        offset = 0
        while offset < capacity:
            try:
                info = vm.QueryChangedDiskAreas(
                    snapshot=snap, deviceKey=disk_key, startOffset=offset, changeId=change_id
                )
            except vmodl.fault.InvalidArgument as e:
                if offset == 0 and (e.invalidProperty in (None, "changeId")):
                    raise ChangeIdRejected(
                        f"vSphere rejected the stored changeId {change_id!r} for disk {disk_key} "
                        "(CBT was reset)"
                    ) from e
                raise
            except vmodl.fault.NotSupported as e:
                raise CbtNotEnabled(f"Changed Block Tracking is not enabled on {vm_moid}: {e.msg}") from e
            out.extend((a.start, a.length) for a in info.changedArea or [])
            if not info.length:
                break
            offset = info.startOffset + info.length
        return out

    # -- snapshots -------------------------------------------------------------------------------

    @_threaded("create a snapshot")
    def create_snapshot(self, vm_moid: str, name: str, description: str, quiesce: bool) -> SnapshotInfo:
        vm = self._vm(vm_moid)
        task = vm.CreateSnapshot_Task(name=name, description=description, memory=False, quiesce=quiesce)
        snap = self._wait(task, f"create snapshot {name!r} of {vm_moid}")
        for s in self._snapshots(vm):
            if s.moid == snap._moId:
                return s
        raise VSphereError(f"snapshot {snap._moId} of {vm_moid} vanished right after it was created")

    @_threaded("remove a snapshot")
    def remove_snapshot(self, snapshot_moid: str) -> None:
        task = self._snap(snapshot_moid).RemoveSnapshot_Task(removeChildren=False, consolidate=True)
        self._wait(task, f"remove snapshot {snapshot_moid}")

    @_threaded("list snapshots")
    def list_snapshots(self, vm_moid: str) -> list[SnapshotInfo]:
        return self._snapshots(self._vm(vm_moid))

    def _snapshots(self, vm: Any) -> list[SnapshotInfo]:
        tree = self._props(vm, ["snapshot"])["snapshot"]
        out: list[SnapshotInfo] = []

        def walk(nodes: Iterable[Any], parent: str | None) -> None:
            for n in nodes or []:
                moid = n.snapshot._moId
                out.append(SnapshotInfo(moid, n.name, n.description or "", n.createTime, vm._moId, parent))
                walk(n.childSnapshotList, moid)

        if tree is not None:
            walk(tree.rootSnapshotList, None)
        return out

    @_threaded("read the snapshot's disks")
    def snapshot_disks(self, snapshot_moid: str) -> list[DiskInfo]:
        hw = self._snap(snapshot_moid).config.hardware
        controllers = {
            d.key: ControllerInfo(d.key, type(d).__name__.rsplit(".", 1)[-1], d.busNumber)
            for d in hw.device
            if isinstance(d, vim.vm.device.VirtualController) and hasattr(d, "busNumber")
        }
        return [_disk_info(d, controllers) for d in hw.device if isinstance(d, vim.vm.device.VirtualDisk)]

    # -- HotAdd ----------------------------------------------------------------------------------

    @_threaded("HotAdd disks to the appliance")
    def hotadd(self, appliance_moid: str, requests: Sequence[HotAddRequest]) -> list[AttachedDisk]:
        """Attach existing disk files (no file operation), and record each in the appliance's
        extraConfig in the same reconfiguration, so a crash leaves a trace the next start finds."""
        app = self._vm(appliance_moid)
        devices = app.config.hardware.device
        free = self._free_scsi_slots(devices)
        if len(free) < len(requests):
            raise VSphereError(
                f"the appliance VM {appliance_moid} has {len(free)} free SCSI slots, {len(requests)} needed; "
                "add a SCSI controller to the appliance"
            )
        changes, extra = [], []
        for i, (req, (ctrl, unit)) in enumerate(zip(requests, free, strict=False)):
            disk = vim.vm.device.VirtualDisk(
                key=-100 - i,
                controllerKey=ctrl.key,
                unitNumber=unit,
                capacityInKB=req.capacity // 1024,
                backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                    fileName=req.file_name, diskMode=req.mode
                ),
            )
            changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=disk))
            marker = f"{HOTADD_MARKER_PREFIX}scsi{ctrl.busNumber}-{unit}"
            value = json.dumps({"file": req.file_name, "owner": req.owner})
            extra.append(vim.option.OptionValue(key=marker, value=value))
        spec = vim.vm.ConfigSpec(deviceChange=changes, extraConfig=extra)
        self._wait(app.ReconfigVM_Task(spec=spec), f"HotAdd to appliance {appliance_moid}")
        attached = {a.file_name: a for a in self._marked(app)}
        out = []
        for req in requests:
            if req.file_name not in attached:
                raise VSphereError(f"HotAdd of {req.file_name} reported success but the appliance lacks it")
            out.append(attached[req.file_name])
        return out

    @staticmethod
    def _free_scsi_slots(devices: Sequence[Any]) -> list[tuple[Any, int]]:
        used = {
            (d.controllerKey, d.unitNumber) for d in devices if getattr(d, "unitNumber", None) is not None
        }
        free: list[tuple[Any, int]] = []
        for c in devices:
            if isinstance(c, vim.vm.device.VirtualSCSIController):
                free.extend((c, u) for u in _SCSI_UNITS if (c.key, u) not in used)
        return free

    def _marked(self, app: Any) -> list[AttachedDisk]:
        info = self._vm_info(app)
        markers: dict[str, dict[str, str]] = {}
        for key, value in info.extra_config.items():
            if key.startswith(HOTADD_MARKER_PREFIX) and value:
                with contextlib.suppress(ValueError):
                    markers[key] = json.loads(value)
        by_file = {m.get("file"): (k, m) for k, m in markers.items()}
        out = []
        for d in info.disks:
            if d.file_name in by_file:
                key, m = by_file.pop(d.file_name)
                out.append(_attached(appliance=info.moid, disk=d, marker=key, owner=m.get("owner", "")))
        for key, m in by_file.values():  # a marker without its disk: report it so it gets cleared
            out.append(
                AttachedDisk(
                    info.moid, -1, m.get("file", ""), 0, "", -1, -1, "", None, key, m.get("owner", "")
                )
            )
        return out

    @_threaded("list disks HotAdded to the appliance")
    def list_hotadded(self, appliance_moid: str) -> list[AttachedDisk]:
        return self._marked(self._vm(appliance_moid))

    @_threaded("detach disks from the appliance")
    def detach(self, appliance_moid: str, disks: Sequence[AttachedDisk]) -> None:
        """Remove the devices (keeping their files: no file operation) and clear their markers."""
        app = self._vm(appliance_moid)
        devices = {d.key: d for d in app.config.hardware.device}
        changes = [
            vim.vm.device.VirtualDeviceSpec(operation="remove", device=devices[d.key])
            for d in disks
            if d.key in devices and isinstance(devices[d.key], vim.vm.device.VirtualDisk)
        ]
        extra = [vim.option.OptionValue(key=d.marker, value="") for d in disks if d.marker]
        if not changes and not extra:
            return
        spec = vim.vm.ConfigSpec(deviceChange=changes, extraConfig=extra)
        self._wait(app.ReconfigVM_Task(spec=spec), f"detach disks from appliance {appliance_moid}")

    # -- target side: replica VMs ------------------------------------------------------------------

    @_threaded("create the replica VM")
    def create_vm(
        self,
        spec: NewVmSpec,
        *,
        datastore: str | None,
        folder: str | None,
        resource_pool: str | None,
        host: str | None,
    ) -> VmInfo:
        content = self._content
        dc = content.rootFolder.childEntity[0]
        hosts = self._all(vim.HostSystem)
        host_obj = next((h for h in hosts if h._moId == host or h.name == host), None) if host else None
        if host and host_obj is None:
            raise InputError(f"no ESXi host {host!r} on {self.host}")
        if host_obj is None:
            host_obj = hosts[0]
        ds_obj = (
            host_obj.datastore[0]
            if not datastore
            else next((d for d in host_obj.datastore if d.name == datastore or d._moId == datastore), None)
        )
        if ds_obj is None:
            raise InputError(f"host {host_obj.name} has no datastore {datastore!r}")
        pool = host_obj.parent.resourcePool
        if resource_pool:
            pool = next((p for p in self._all(vim.ResourcePool) if resource_pool in (p.name, p._moId)), None)
            if pool is None:
                raise InputError(f"no resource pool {resource_pool!r} on {self.host}")
        target_folder = dc.vmFolder
        if folder:
            target_folder = next((f for f in self._all(vim.Folder) if folder in (f.name, f._moId)), None)
            if target_folder is None:
                raise InputError(f"no VM folder {folder!r} on {self.host}")
        if self._vms_named(spec.name):
            raise InputError(f"a VM named {spec.name!r} already exists; name it as the job's replica VM")
        changes = []
        ctrl_keys: dict[tuple[str, int], int] = {}
        for d in spec.disks:
            if (d.controller_type, d.bus_number) not in ctrl_keys:
                key = -200 - len(ctrl_keys)
                ctrl_keys[(d.controller_type, d.bus_number)] = key
                ctrl = getattr(vim.vm.device, d.controller_type)(key=key, busNumber=d.bus_number)
                if isinstance(ctrl, vim.vm.device.VirtualSCSIController):
                    ctrl.sharedBus = "noSharing"
                changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=ctrl))
        for i, d in enumerate(spec.disks):
            disk = vim.vm.device.VirtualDisk(
                key=-300 - i,
                controllerKey=ctrl_keys[(d.controller_type, d.bus_number)],
                unitNumber=d.unit_number,
                capacityInKB=d.capacity // 1024,
                backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                    fileName=f"[{ds_obj.name}]", diskMode="persistent", thinProvisioned=True
                ),
            )
            changes.append(
                vim.vm.device.VirtualDeviceSpec(operation="add", device=disk, fileOperation="create")
            )
        networks = {n.name: n for n in host_obj.network}
        for i, n in enumerate(spec.nics):
            nic = getattr(vim.vm.device, n.type)(key=-400 - i)
            net = networks.get(n.network) if n.network else None
            if isinstance(net, vim.dvs.DistributedVirtualPortgroup):
                nic.backing = vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
                    port=vim.dvs.PortConnection(
                        switchUuid=net.config.distributedVirtualSwitch.uuid, portgroupKey=net.key
                    )
                )
            elif net is not None:
                nic.backing = vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(
                    deviceName=n.network, network=net
                )
            else:  # keep the NIC, unconnected; the report tells the user to pick a network
                nic.backing = vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName=n.network or "")
            nic.connectable = vim.vm.device.VirtualDevice.ConnectInfo(startConnected=False, connected=False)
            changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=nic))
        config = vim.vm.ConfigSpec(
            name=spec.name,
            version=spec.hardware_version,
            guestId=spec.guest_id,
            firmware=spec.firmware,
            numCPUs=spec.num_cpu,
            numCoresPerSocket=spec.cores_per_socket,
            memoryMB=spec.memory_mb,
            annotation=spec.annotation,
            files=vim.vm.FileInfo(vmPathName=f"[{ds_obj.name}]"),
            deviceChange=changes,
        )
        vm = self._wait(
            target_folder.CreateVM_Task(config=config, pool=pool, host=host_obj), "create replica VM"
        )
        return self._vm_info(vm)

    def _all(self, kind: Any) -> list[Any]:
        view = self._content.viewManager.CreateContainerView(self._content.rootFolder, [kind], True)
        try:
            return list(view.view)
        finally:
            view.Destroy()

    @_threaded("grow a disk")
    def grow_disk(self, vm_moid: str, disk_key: int, capacity: int) -> None:
        vm = self._vm(vm_moid)
        disk = next(d for d in vm.config.hardware.device if d.key == disk_key)
        disk.capacityInKB = capacity // 1024
        disk.capacityInBytes = capacity
        spec = vim.vm.ConfigSpec(
            deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="edit", device=disk)]
        )
        self._wait(vm.ReconfigVM_Task(spec=spec), f"grow disk {disk_key} of {vm_moid}")

    @_threaded("set a VM's hardware")
    def reconfigure(self, vm_moid: str, *, num_cpu: int | None = None, memory_mb: int | None = None) -> None:
        """Change CPUs/memory (used by tests and by an operator aligning a replica)."""
        spec = vim.vm.ConfigSpec(numCPUs=num_cpu, memoryMB=memory_mb)
        self._wait(self._vm(vm_moid).ReconfigVM_Task(spec=spec), f"reconfigure {vm_moid}")

    @_threaded("delete a VM")
    def destroy_vm(self, vm_moid: str) -> None:
        vm = self._vm(vm_moid)
        if vm.runtime.powerState == vim.VirtualMachinePowerState.poweredOn:
            self._wait(vm.PowerOffVM_Task(), f"power off {vm_moid}")
        self._wait(vm.Destroy_Task(), f"delete {vm_moid}")

    @_threaded("mark a VM as template")
    def mark_as_template(self, vm_moid: str) -> None:
        vm = self._vm(vm_moid)
        if vm.runtime.powerState == vim.VirtualMachinePowerState.poweredOn:
            self._wait(vm.PowerOffVM_Task(), f"power off {vm_moid}")
        vm.MarkAsTemplate()

    @_threaded("list the datastores of a VM's host")
    def host_datastores(self, vm_moid: str) -> list[str]:
        """Datastores the VM's ESXi host can see (HotAdd needs the source disks' datastores there)."""
        host = self._vm(vm_moid).runtime.host
        return sorted(ds.name for ds in host.datastore) if host is not None else []

    @_threaded("read a datastore")
    def datastore_paths(self) -> dict[str, str]:
        """Datastore name -> its URL (a local directory on vcsim, ``ds:///vmfs/...`` on ESXi)."""
        return {ds.name: ds.summary.url for ds in self._all(vim.Datastore)}


def _disk_info(d: Any, controllers: dict[int, ControllerInfo]) -> DiskInfo:
    ctrl = controllers.get(d.controllerKey)
    b = d.backing
    capacity = int(d.capacityInBytes or 0) or int(d.capacityInKB) * 1024
    return DiskInfo(
        key=d.key,
        file_name=getattr(b, "fileName", "") or "",
        capacity=capacity,
        controller_key=d.controllerKey,
        controller_type=ctrl.type if ctrl else "",
        bus_number=ctrl.bus_number if ctrl else -1,
        unit_number=d.unitNumber if d.unitNumber is not None else -1,
        disk_mode=getattr(b, "diskMode", "") or "",
        thin=getattr(b, "thinProvisioned", None),
        uuid=getattr(b, "uuid", None) or None,
        change_id=getattr(b, "changeId", None) or None,
    )


def _attached(*, appliance: str, disk: DiskInfo, marker: str | None, owner: str) -> AttachedDisk:
    return AttachedDisk(
        appliance=appliance,
        key=disk.key,
        file_name=disk.file_name,
        capacity=disk.capacity,
        controller_type=disk.controller_type,
        bus_number=disk.bus_number,
        unit_number=disk.unit_number,
        disk_mode=disk.disk_mode,
        uuid=disk.uuid,
        marker=marker,
        owner=owner,
    )


def _login(opts: ConnectOptions) -> Any:
    """Negotiate the API version, then log in (or adopt the session token) on a stub we own, so its
    sockets are closed whatever fails."""
    stub = _pyvim_connect.SmartStubAdapter(  # type: ignore[no-untyped-call]
        host=opts.host,
        port=opts.port,
        sslContext=ssl_context(opts),
        httpConnectionTimeout=opts.connect_timeout,
        sessionId=opts.session_token,
    )
    try:
        si = vim.ServiceInstance("ServiceInstance", stub)
        content = si.RetrieveContent()
        if opts.session_token:
            if content.sessionManager.currentSession is None:
                raise VSphereError(
                    f"the vSphere session token is not valid on {opts.host}:{opts.port} (expired or logged "
                    "out); get a fresh one or use a credentials file"
                )
        else:
            assert opts.credentials is not None
            content.sessionManager.Login(opts.credentials.user, opts.credentials.password, None)
        return si
    except BaseException:
        stub.DropConnections()
        raise


def _unwrap_tls(exc: BaseException) -> BaseException:
    """pyVmomi wraps connection errors in HostConnectFault; find the TLS error inside, if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return exc


async def connect(opts: ConnectOptions) -> VSphereClient:
    """Log in (or attach to a session token) with the TLS policy of ``opts``."""

    def run() -> VSphereClient:
        try:
            return VSphereClient(_login(opts), opts)
        except VzrepError:
            raise
        except Exception as e:
            inner = _unwrap_tls(e)
            if (
                isinstance(inner, ssl.SSLCertVerificationError)
                or "CERTIFICATE_VERIFY_FAILED" in str(e)
                or ("thumbprint mismatch" in str(e))
            ):
                raise _tls_error(opts, inner if inner is not e else e) from e
            raise translate_fault(e, "log in", f"{opts.host}:{opts.port}") from e

    return await asyncio.to_thread(run)


def _tls_error(opts: ConnectOptions, exc: BaseException) -> VSphereError:
    where = f"{opts.host}:{opts.port}"
    try:
        actual = server_thumbprint(opts.host, opts.port)
    except VSphereError:
        actual = "(could not read it)"
    if opts.thumbprint:
        return VSphereError(
            f"the TLS certificate of {where} does not match the pinned thumbprint: it presents SHA-256 "
            f"{actual}; if the host's certificate was renewed, check the new one on its console and pin it"
        )
    return VSphereError(
        f"the TLS certificate of {where} is not trusted ({exc}); it presents SHA-256 {actual}: compare it "
        "with the host's console, then pass --thumbprint with it (or install the host's CA)"
    )
