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
    ROLLED_BACK = 13  # the pass failed on the target and the replica was rolled back to the previous pass
    PAIRING = 14  # pairing failed (wrong or expired code)


class VzrepError(Exception):
    """Root of all vzrep errors; ``str(err)`` is one line a user can act on."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, *, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class InputError(VzrepError):
    """The user gave us something we cannot use (a path, a name, a disk format)."""

    exit_code = ExitCode.INPUT


class ConnectionFailed(VzrepError):
    exit_code = ExitCode.CONNECTION


class HostKeyError(VzrepError):
    exit_code = ExitCode.HOST_KEY


class AuthError(VzrepError):
    exit_code = ExitCode.AUTH


class CipherError(VzrepError):
    exit_code = ExitCode.CIPHER


class StorageError(VzrepError):
    """The target's storage failed (ENOSPC, EIO); the pass is rolled back."""

    exit_code = ExitCode.STORAGE


class BusyError(VzrepError):
    exit_code = ExitCode.BUSY


class IntegrityError(VzrepError):
    """Data did not match its hash or checksum."""

    exit_code = ExitCode.INTEGRITY


class VSphereError(VzrepError):
    exit_code = ExitCode.VSPHERE


class PairingError(VzrepError):
    exit_code = ExitCode.PAIRING
