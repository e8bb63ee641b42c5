"""The sandbox's seal, made by seal.c in one call: see there why it is C.

The zygote builds the call's arguments once (`Seal`), from the same policy as before: the
root and its private directories (mounts.py), the ids, the Landlock rules (landlock.py) and
the seccomp filter (seccomp.py). A sandbox then makes one call, which writes none of the
memory it shares with the zygote but its own stack.

It is part of execbox's C library (native.py).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence

from execbox.sandbox import native

ERR_BYTES = 256


class Rule(ctypes.Structure):
    _fields_ = [("path", ctypes.c_char_p), ("rights", ctypes.c_uint64)]


class LandlockSpec(ctypes.Structure):
    _fields_ = [
        ("handled_fs", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
        ("file_rights", ctypes.c_uint64),
        ("rules", ctypes.POINTER(Rule)),
        ("nrules", ctypes.c_int),
    ]


class SealSpec(ctypes.Structure):
    _fields_ = [
        ("root", ctypes.c_char_p),
        ("tmp_target", ctypes.c_char_p),
        ("tmp_options", ctypes.c_char_p),
        ("work_target", ctypes.c_char_p),
        ("work_options", ctypes.c_char_p),
        ("proc_target", ctypes.c_char_p),
        ("workdir", ctypes.c_char_p),
        ("hostname", ctypes.c_char_p),
        ("cap_last_cap", ctypes.c_int),
        ("uid", ctypes.c_uint),
        ("gid", ctypes.c_uint),
        ("landlock", LandlockSpec),
        ("bpf", ctypes.c_char_p),
        ("bpf_len", ctypes.c_ushort),
    ]


def library() -> ctypes.CDLL:
    """The library with the seal's functions declared; NativeMissing if it is not built."""
    lib = native.library()
    lib.execbox_seal.argtypes = [
        ctypes.POINTER(SealSpec),
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_size_t,
    ]
    lib.execbox_landlock.argtypes = [
        ctypes.POINTER(LandlockSpec),
        ctypes.c_char_p,
        ctypes.c_size_t,
    ]
    return lib


def rules(entries: Sequence[tuple[str, int]]) -> ctypes.Array[Rule]:
    return (Rule * len(entries))(*(Rule(path.encode(), rights) for path, rights in entries))


def _raise(rc: int, err: ctypes.Array[ctypes.c_char]) -> None:
    if rc:
        raise OSError(rc, f"{err.value.decode(errors='replace')}: {os.strerror(rc)}")


class Seal:
    """The call a new sandbox makes, with its arguments built once (in the zygote): a
    sandbox's call then builds no Python object but the workspace's path."""

    def __init__(self, spec: SealSpec, keep: list[object]) -> None:
        self.lib = library()
        self.spec = spec
        self.keep = keep  # what the spec's pointers point into
        self.err = ctypes.create_string_buffer(ERR_BYTES)

    def __call__(self, workspace: str | None) -> None:
        """Seal the calling process; raises OSError naming the step that failed."""
        ws = workspace.encode() if workspace else None
        _raise(self.lib.execbox_seal(ctypes.byref(self.spec), ws, self.err, ERR_BYTES), self.err)


def landlock(lib: ctypes.CDLL, spec: LandlockSpec) -> None:
    """Apply a Landlock ruleset to the calling process (it needs no_new_privs)."""
    err = ctypes.create_string_buffer(ERR_BYTES)
    _raise(lib.execbox_landlock(ctypes.byref(spec), err, ERR_BYTES), err)
