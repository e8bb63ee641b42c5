"""Thin ctypes bindings to the libc calls that Python 3.11's os module lacks.

Written by hand because no maintained library exposes clone(2) with namespace flags,
setns(2) or capget(2) to Python; each wrapper is a few lines over libc and raises OSError
with the real errno, like the os module does. What a sandbox calls to seal itself (mounts,
pivot_root, capset, seccomp) is in seal.c.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import threading

from execbox.sandbox import kernfiles

# Calls through `_libc` release the GIL; `_pylibc` keeps it, which matters for the raw
# clone() below: the child must not race another thread for the interpreter state.
_libc = ctypes.CDLL(None, use_errno=True)
_pylibc = ctypes.PyDLL(None, use_errno=True)
_libc.pthread_self.restype = ctypes.c_ulong

# x86_64 syscall numbers (the only ABI execbox supports; seccomp refuses the others).
SYS_clone = 56
SYS_capget = 125
SYS_close_range = 436

CLONE_PARENT = 0x00008000
CLONE_CHILD_SETTID = 0x01000000
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NAMESPACE_FLAGS = (
    CLONE_NEWNS
    | CLONE_NEWCGROUP
    | CLONE_NEWUTS
    | CLONE_NEWIPC
    | CLONE_NEWUSER
    | CLONE_NEWPID
    | CLONE_NEWNET
)

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
CAP_SYS_NICE = 23
PR_SET_NO_NEW_PRIVS = 38


_libc.syscall.restype = ctypes.c_long
_pylibc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
]

_PyOS_BeforeFork = ctypes.pythonapi.PyOS_BeforeFork
_PyOS_AfterFork_Parent = ctypes.pythonapi.PyOS_AfterFork_Parent
_PyOS_AfterFork_Child = ctypes.pythonapi.PyOS_AfterFork_Child


def after_fork_child() -> None:
    """What the interpreter must redo in a child made by a raw clone (os.fork() does it
    itself): its thread state, locks and the after_in_child hooks."""
    _PyOS_AfterFork_Child()


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def clone(flags: int) -> int:
    """fork() into new namespaces in one step, so the child is pid 1 of its pid namespace.

    os.fork() cannot take namespace flags, and unshare(CLONE_NEWPID) only affects the
    caller's children, which would cost a second fork. The interpreter's fork hooks run
    around the raw syscall exactly as os.fork() runs them. (The cloner makes its clones
    in C, cloner.c, with the same arguments: clone_args.)
    """
    flags, tid = clone_args(flags)
    _PyOS_BeforeFork()
    pid = _pylibc.syscall(SYS_clone, ctypes.c_ulong(flags), None, None, ctypes.c_void_p(tid), None)
    if pid == 0:
        _PyOS_AfterFork_Child()
        return 0
    err = ctypes.get_errno()
    _PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, f"clone: {os.strerror(err)}")
    return pid


def clone_args(flags: int) -> tuple[int, int | None]:
    """The flags and child-tid address for a raw clone(flags) that ends like a fork: the
    parent gets SIGCHLD, and the kernel writes the child's tid where glibc keeps it
    (CLONE_CHILD_SETTID). glibc's fork() updates it, a raw clone does not, and
    pthread_kill() of the main thread signals that tid. A stale one, the parent's host tid,
    is no thread in the sandbox's pid namespace (signal.pthread_kill(
    threading.main_thread().ident, ...) from a thread failed with ESRCH), and it showed the
    code a host tid."""
    tid = tid_address()
    flags |= signal.SIGCHLD
    if tid is not None:
        flags |= CLONE_CHILD_SETTID
    return flags, tid


def tid_address() -> int | None:
    """The address of this thread's tid in glibc's descriptor of it (struct pthread), which
    no interface gives (pthread_gettid_np reads it, from glibc 2.42). Found by looking for
    the tid in the descriptor's first KiB (it is at 720 in glibc 2.26 to 2.40 on x86_64);
    None unless found exactly once, and then clones go without the fix."""
    base, tid = _libc.pthread_self(), threading.get_native_id()
    hits = [off for off in range(0, 1024, 4) if ctypes.c_int.from_address(base + off).value == tid]
    return base + hits[0] if len(hits) == 1 else None


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def prctl(option: int, a2: int = 0, a3: int = 0, a4: int = 0, a5: int = 0) -> int:
    return _check(_libc.prctl(option, a2, a3, a4, a5), f"prctl({option})")


def close_range(first: int) -> None:
    _check(_libc.syscall(SYS_close_range, first, 0xFFFFFFFF, 0), "close_range")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


_CAP_VERSION_3 = 0x20080522  # _LINUX_CAPABILITY_VERSION_3: two _CapData, 64 capabilities


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def cap_last_cap() -> int:
    """The highest capability this kernel knows."""
    text = kernfiles.read("/proc/sys/kernel/cap_last_cap")
    if text is None:
        raise OSError("cannot read /proc/sys/kernel/cap_last_cap")
    return int(text)


def has_capability(cap: int) -> bool:
    """Whether this process holds `cap` in its effective set."""
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()  # the two words of each set
    _check(_libc.syscall(SYS_capget, ctypes.byref(header), ctypes.byref(data)), "capget")
    return bool(data[cap // 32].effective >> (cap % 32) & 1)
