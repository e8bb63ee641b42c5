"""Landlock: the filesystem restricted from inside, so that even a misconfigured mount
cannot be written; and, from ABI 6, abstract unix sockets and signals scoped to the
sandbox. Written by hand over the three syscalls: no maintained Python binding exists. The
rules are made here; seal.c applies them, in the sandbox's one call.
"""

from __future__ import annotations

import ctypes

from execbox.sandbox import seal

SYS_create_ruleset = 444
CREATE_RULESET_VERSION = 1

EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK = 1 << 8, 1 << 9, 1 << 10, 1 << 11
MAKE_SYM, REFER, TRUNCATE, IOCTL_DEV = 1 << 12, 1 << 13, 1 << 14, 1 << 15
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def abi() -> int:
    return max(0, int(_libc.syscall(SYS_create_ruleset, None, 0, CREATE_RULESET_VERSION)))


def _fs_rights(version: int) -> int:
    rights = (1 << 13) - 1  # ABI 1
    if version >= 2:
        rights |= REFER
    if version >= 3:
        rights |= TRUNCATE
    if version >= 5:
        rights |= IOCTL_DEV
    return rights


def ruleset(
    version: int, read_only: list[str], writable: list[str], devices: list[str]
) -> tuple[seal.LandlockSpec, list[object]]:
    """The ruleset seal.c applies, and the objects its pointers point into (keep them
    alive). A path that does not exist then is skipped: it has no access at all."""
    if version <= 0:
        return seal.LandlockSpec(0, 0, 0, None, 0), []
    handled = _fs_rights(version)
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if version >= 6 else 0
    file_rights = handled & (EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV)
    entries = [(p, EXECUTE | READ_FILE | READ_DIR) for p in read_only]
    entries += [(p, handled) for p in writable]
    entries += [(p, file_rights & ~EXECUTE) for p in devices]
    table = seal.rules(entries)
    return seal.LandlockSpec(handled, scoped, file_rights, table, len(entries)), [table]


def restrict(version: int, read_only: list[str], writable: list[str], devices: list[str]) -> None:
    """Apply to the calling process (needs no_new_privs), as a sandbox's seal does."""
    spec, _keep = ruleset(version, read_only, writable, devices)
    seal.landlock(seal.library(), spec)
