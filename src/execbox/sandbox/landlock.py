"""Landlock: the filesystem restricted from inside, so that even a misconfigured mount
cannot be written; and, from ABI 6, abstract unix sockets and signals scoped to the
sandbox. Written by hand over the three syscalls: no maintained Python binding exists.
"""

from __future__ import annotations

import ctypes
import os

SYS_create_ruleset, SYS_add_rule, SYS_restrict_self = 444, 445, 446
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1

EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK = 1 << 8, 1 << 9, 1 << 10, 1 << 11
MAKE_SYM, REFER, TRUNCATE, IOCTL_DEV = 1 << 12, 1 << 13, 1 << 14, 1 << 15
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


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


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"landlock {what}: {os.strerror(err)}")
    return rc


def restrict(version: int, read_only: list[str], writable: list[str], devices: list[str]) -> None:
    """Apply to the calling process (needs no_new_privs). A path that does not exist is
    skipped: it then has no access at all."""
    if version <= 0:
        return
    handled = _fs_rights(version)
    attr = _RulesetAttr(handled, 0, 0)
    size = 8
    if version >= 6:
        attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        size = 24
    ruleset = _check(_libc.syscall(SYS_create_ruleset, ctypes.byref(attr), size, 0), "ruleset")
    try:
        file_rights = handled & (EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV)
        for paths, rights in (
            (read_only, EXECUTE | READ_FILE | READ_DIR),
            (writable, handled),
            (devices, file_rights & ~EXECUTE),
        ):
            for path in paths:
                try:
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue
                try:
                    if not os.path.isdir(path):
                        rights &= file_rights
                    rule = _PathBeneath(rights, fd)
                    _check(
                        _libc.syscall(SYS_add_rule, ruleset, RULE_PATH_BENEATH,
                                      ctypes.byref(rule), 0),
                        f"rule {path}",
                    )  # fmt: skip
                finally:
                    os.close(fd)
        _check(_libc.syscall(SYS_restrict_self, ruleset, 0), "restrict_self")
    finally:
        os.close(ruleset)
