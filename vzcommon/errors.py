"""The one error hierarchy of vzrep, and the exit codes the CLIs map it to.

Every error a user can meet derives from :class:`VzrepError`. Its message says what failed and what
the user can do about it; its ``exit_code`` is what the CLI exits with. The codes are documented in
README.md and are part of the CLI's stable interface.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1  # a bug: please report it with the log
    USAGE = 2  # bad command line (argparse uses 2 as well)
    INPUT = 3  # bad input: unknown disk, unsupported VMDK, invalid VM or disk name, shrunk disk
    CONNECTION = 4  # the target could not be reached or the connection was lost
    HOST_KEY = 5  # the target's host key is not the pinned one (or not pinned at all)
    AUTH = 6  # the target refused our client key
    CIPHER = 7  # no AES-256 cipher (or MAC/kex) in common with the peer
    PROTOCOL = 8  # the peer sent something the protocol does not allow (incl. version mismatch)
    STORAGE = 9  # the target could not write the replica (disk full, I/O error)
    BUSY = 10  # a pass for this VM is already running on the target
    INTEGRITY = 11  # a block failed its hash check, or a persisted file failed its checksum
    VSPHERE = 12  # vCenter/ESXi refused or failed an operation
    ROLLED_BACK = 13  # the target failed the pass for a reason of its own (a bug there) and rolled it back
    PAIRING = 14  # pairing failed (wrong or expired code)
    FAILED_OVER = 15  # the replica is failed over (production at the DR site): passes into it are refused
    NOT_SEEDED = 16  # a job with seeding or mapping on: the target holds no replica of this VM (it was skipped)
    JOB_FAILED = 17  # a job: at least one VM's pass failed (each VM's own code is in the job's summary)
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it); the target rolls the pass back


class VzrepError(Exception):
    """Root of all vzrep errors; ``str(err)`` is one line a user can act on."""

    exit_code: ExitCode = ExitCode.INTERNAL
    #: raised here from the peer's ERROR message (:func:`from_peer`), not by this agent
    from_peer: bool = False

    def __init__(self, message: str, *, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


#: the class a peer's ERROR code is rebuilt as (:func:`from_peer`); filled by :func:`peer_error`
_PEER_CLASSES: dict[int, type[VzrepError]] = {}


def peer_error(cls: type[VzrepError]) -> type[VzrepError]:
    """Class decorator: an ERROR with this class's exit code is rebuilt as this class."""
    _PEER_CLASSES[int(cls.exit_code)] = cls
    return cls


def from_peer(code: int, message: str, peer: str) -> VzrepError:
    """The peer's ERROR message as the error class of its code, marked ``from_peer``.

    A code the peer's agent reports for a failure of its own (INTERNAL, or a code this version does
    not know) becomes :class:`RolledBack`: our user's fault it is not, and the pass was rolled back.
    """
    cls = _PEER_CLASSES.get(code)
    exc = cls(f"{peer}: {message}") if cls is not None else RolledBack(f"{peer} failed the pass: {message}")
    exc.from_peer = True
    return exc


@peer_error
class InputError(VzrepError):
    """The user gave us something we cannot use (a path, a name, a disk format)."""

    exit_code = ExitCode.INPUT


class ImageError(InputError):
    """A disk image (a seed or a source) is corrupt, truncated, of the wrong format, or misses a file of
    its chain; the message names the file and what is wrong. Same exit code as InputError."""


@peer_error
class ConnectionFailed(VzrepError):
    exit_code = ExitCode.CONNECTION


@peer_error
class HostKeyError(VzrepError):
    exit_code = ExitCode.HOST_KEY


@peer_error
class AuthError(VzrepError):
    exit_code = ExitCode.AUTH


@peer_error
class CipherError(VzrepError):
    exit_code = ExitCode.CIPHER


@peer_error
class StorageError(VzrepError):
    """The target's storage failed (ENOSPC, EIO); the pass is rolled back."""

    exit_code = ExitCode.STORAGE


@peer_error
class BusyError(VzrepError):
    exit_code = ExitCode.BUSY


@peer_error
class IntegrityError(VzrepError):
    """Data did not match its hash or checksum."""

    exit_code = ExitCode.INTEGRITY


@peer_error
class VSphereError(VzrepError):
    exit_code = ExitCode.VSPHERE


@peer_error
class PairingError(VzrepError):
    exit_code = ExitCode.PAIRING


@peer_error
class RolledBack(VzrepError):
    """The peer failed the pass for a reason of its own (a bug there) and rolled it back."""

    exit_code = ExitCode.ROLLED_BACK


@peer_error
class FailedOver(VzrepError):
    """The replica is failed over (production at the DR site): the source may not write into it."""

    exit_code = ExitCode.FAILED_OVER


@peer_error
class NotSeeded(VzrepError):
    """The job rule: with seeding or mapping on, a VM the target holds no replica of is skipped."""

    exit_code = ExitCode.NOT_SEEDED


class JobFailed(VzrepError):
    """A job in which at least one VM's pass failed (the summary names each VM and its code)."""

    exit_code = ExitCode.JOB_FAILED


@peer_error
class Interrupted(VzrepError):
    """The user stopped the command (Ctrl-C); a pass in flight is rolled back by the target."""

    exit_code = ExitCode.INTERRUPTED
