"""Log in to vCenter/ESXi with the TLS policy of :class:`vsphere.options.ConnectOptions`.

A TLS failure is explained with the thumbprint the host presents, to compare with its console before
pinning it; any other failure goes through :func:`vsphere.faults.translate_fault`.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from vsphere.client import VSphereClient
from vsphere.faults import translate_fault
from vsphere.options import ConnectOptions, server_thumbprint, ssl_context
from vsphere.vmomi import pyvim_connect, vim
from vzcommon.errors import VSphereError, VzrepError


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


def _login(opts: ConnectOptions) -> Any:
    """Negotiate the API version, then log in (or adopt the session token) on a stub we own, so its
    sockets are closed whatever fails."""
    stub = pyvim_connect.SmartStubAdapter(
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
