"""execbox's C parts, in one library: the sandbox's seal (seal.c) and the cloner's loop with
its namespace check (cloner.c). Each file says why it is C.

`make install` builds `_native.so` beside this file with gcc, which every supported host has.
It is a plain C library loaded with ctypes, so the server's interpreter and the sandboxes'
both use it.
"""

from __future__ import annotations

import ctypes
import os

LIBRARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_native.so")
# what execbox calls in it (a library built from older sources lacks some)
SYMBOLS = ("execbox_seal", "execbox_landlock", "execbox_cloner_serve", "execbox_netns_is_new")


class NativeMissing(RuntimeError):
    """_native.so is not built."""


def _check() -> None:
    if not os.path.exists(LIBRARY):
        raise NativeMissing(f"{LIBRARY} is missing: build it with `make install`")


def library() -> ctypes.CDLL:
    """The library; its calls release the interpreter's lock (they may block)."""
    _check()
    return ctypes.CDLL(LIBRARY, use_errno=True)


def holding_lock() -> ctypes.PyDLL:
    """The library, its calls keeping the interpreter's lock: for the clone, whose child
    must find the interpreter exactly as the parent's one thread left it."""
    _check()
    return ctypes.PyDLL(LIBRARY, use_errno=True)
