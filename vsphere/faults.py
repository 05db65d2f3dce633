"""Where pyVmomi's exceptions become ours: :func:`translate_fault`, and :func:`blocking`.

pyVmomi blocks, so every public method of the client is ``async`` and runs its pyVmomi calls in
``asyncio.to_thread`` through :func:`blocking`, which also translates whatever they raise -- once,
here -- into :class:`vzcommon.errors.VSphereError` (or ``InputError``) with a message that says what
the user can do. No pyVmomi exception escapes the package.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Awaitable, Callable
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from vsphere.vmomi import vim, vmodl
from vzcommon.errors import VSphereError, VzrepError

P = ParamSpec("P")
T = TypeVar("T")


class _Named(Protocol):
    host: str  # "host:port", for messages


S = TypeVar("S", bound=_Named)


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


def blocking(
    action: str,
) -> Callable[[Callable[Concatenate[S, P], T]], Callable[Concatenate[S, P], Awaitable[T]]]:
    """Run a blocking client method in a worker thread; translate whatever it raises."""

    def wrap(fn: Callable[Concatenate[S, P], T]) -> Callable[Concatenate[S, P], Awaitable[T]]:
        async def run(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
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
