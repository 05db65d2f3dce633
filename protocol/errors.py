"""Protocol errors say who is at fault, as in h11.

* :class:`LocalProtocolError` -- our own code tried something the protocol forbids (a bug on this side).
* :class:`RemoteProtocolError` -- the peer sent bytes or a message the protocol forbids.

Both put the connection into the ``ERROR`` state; nothing more can be sent or received on it.
"""

from __future__ import annotations

from vzcommon.errors import ExitCode, VzrepError, peer_error


@peer_error
class ProtocolError(VzrepError):
    exit_code = ExitCode.PROTOCOL


class LocalProtocolError(ProtocolError):
    """This side misused the protocol API; a bug in vzrep."""

    exit_code = ExitCode.INTERNAL


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol: bad frame, bad message, or a message out of order."""


class VersionMismatch(RemoteProtocolError):
    """The peers speak different protocol versions; the message names both."""
