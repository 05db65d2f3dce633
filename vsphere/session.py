"""A logged-in vSphere session: what every part of the client stands on.

Managed objects never leave the client: callers name them by moid and get the plain records of
:mod:`vsphere.model` back; :meth:`Session._vm` and friends turn a moid back into a pyVmomi object.
Tasks are awaited by polling ``info.state``/``info.error``/``info.result`` through the property
collector, with a timeout (``ConnectOptions.task_timeout``). The methods run in worker threads
(:func:`vsphere.faults.blocking`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any, Self

from vsphere.faults import blocking
from vsphere.options import ConnectOptions
from vsphere.vmomi import vim, vmodl
from vzcommon.errors import VSphereError, VzrepError


class Session:
    """The service instance of a login, and the plumbing the client's parts share.

    Make one with :func:`vsphere.connection.connect` (which returns the full
    :class:`vsphere.client.VSphereClient`); :meth:`close` it, or use ``async with``.
    """

    def __init__(self, si: Any, opts: ConnectOptions) -> None:
        self._si = si
        self._opts = opts
        self.host = f"{opts.host}:{opts.port}"

    async def __aenter__(self) -> Self:
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

    def _all(self, kind: Any) -> list[Any]:
        """Every managed object of a type (``vim.VirtualMachine``, ``vim.Datastore``, ...)."""
        view = self._content.viewManager.CreateContainerView(self._content.rootFolder, [kind], True)
        try:
            return list(view.view)
        finally:
            view.Destroy()

    # -- session ---------------------------------------------------------------------------------

    @blocking("log out")
    def _logout(self) -> None:
        try:
            if not self._opts.session_token:  # never end a session someone lent us
                self._content.sessionManager.Logout()
        finally:
            self._si._stub.DropConnections()  # close the pooled TLS sockets now, not at GC

    async def close(self) -> None:
        with contextlib.suppress(VzrepError):
            await self._logout()

    @blocking("read the session")
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

    @blocking("check privileges")
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
