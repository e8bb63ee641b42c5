"""Sandboxes' network namespaces: their loopback brought up from outside, and the untouched
ones kept for the next sandbox.

A new network namespace costs the kernel about 0.8 ms of cpu to make and tear down (its
sysctl tables, `lo`, the IPv4 and IPv6 state: measured with perf, a tenth of all the cpu
of an execution). Most executions never use the network, and leave their namespace as they
found it: such a namespace is handed to a later sandbox instead of being torn down.

"As they found it" is checked, not assumed, by the cloner, inside the namespace, right
before the clone that would enter it: a kept namespace is used only if everything a sandbox
could read of it is exactly as in a namespace just made: `lo`'s counters (no packet ever
crossed it), the IP, ICMP, UDP and TCP counters (a send with no route counts there without
a packet), no socket of any family left (TIME_WAIT, or a unix socket kept alive in flight),
and the IPv6 ones the same. Else the clone gets a new namespace, and the old one is torn
down. What the files do not show, a namespace's addresses, routes and sysctls, no sandbox
can change: its code runs with every capability dropped, also in the namespace it was
cloned with (which its own user namespace owns), and a namespace it is handed belongs to
another's.

A new namespace's `lo` is down. The sandbox could bring it up itself (it owns its namespace
until it drops its capabilities), but that meant importing and running the socket machinery
in every sandbox: about forty pages of the zygote's memory written, each a copy-on-write
fault and a page the idle sandbox holds on its own. The zygote, host root, enters the
namespace for three syscalls instead.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import re
import socket
import struct
from dataclasses import dataclass, field

from execbox.sandbox import libc, native

_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_IFREQ = struct.Struct("16sH14x")
# what a sandbox can read of its namespace's state: whatever a process without capabilities
# leaves behind there moves one of these (a packet on lo, a counter, a socket); ~150 us
# to read in all (cloner.c reads them)
_OBSERVED = ("dev", "snmp", "snmp6", "sockstat", "sockstat6", "unix")
_PATHS = tuple(f"/proc/thread-self/net/{name}" for name in _OBSERVED)
_SOCKSTAT = _PATHS[3]  # its used, orphan, alloc and mem count the whole host
BUF = 16384  # a new namespace's files are 4 KiB at most (cloner.c's NETNS_BUF)
# ~160 KiB of kernel memory each (measured): a few dozen cover a zygote's pool and its
# running sandboxes; past that a namespace is torn down as before
KEEP = 32


# in a Template, one or more digits (cloner.c matches it)
ANY_NUMBER = b"\x01"


class Template(ctypes.Structure):
    """What each file of _OBSERVED reads as in a new namespace, as cloner.c reads it:
    exact, but for sockstat's host-wide numbers (ANY_NUMBER). Built once, in the zygote."""

    _fields_ = [
        ("nfiles", ctypes.c_int),
        ("paths", ctypes.POINTER(ctypes.c_char_p)),
        ("expected", ctypes.POINTER(ctypes.c_char_p)),
        ("lengths", ctypes.POINTER(ctypes.c_uint32)),
    ]

    def __init__(self, raw: list[bytes], paths: tuple[str, ...] = _PATHS) -> None:
        self.texts = [  # what the pointers point into
            re.sub(rb"\b(used|orphan|alloc|mem) \d+", rb"\1 " + ANY_NUMBER, data)
            if path == _SOCKSTAT
            else data
            for path, data in zip(paths, raw, strict=True)
        ]
        n = len(paths)
        super().__init__(
            n,
            (ctypes.c_char_p * n)(*(p.encode() for p in paths)),
            (ctypes.c_char_p * n)(*self.texts),
            (ctypes.c_uint32 * n)(*(len(t) for t in self.texts)),
        )


def reads_as_new(want: Template) -> bool:
    """Whether this thread's namespace reads as `want` (pristine): cloner.c's check, which
    the cloner makes before each clone into a kept namespace."""
    lib = native.library()
    return bool(lib.execbox_netns_is_new(ctypes.byref(want)))


def _read(path: str, buf: bytearray) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.readv(fd, [buf])  # a seq file fills the buffer: all of it, if it fits
    finally:
        os.close(fd)


def _bring_up_lo() -> None:
    # a socket belongs to the namespace it was created in
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = _IFREQ.pack(b"lo", 0)
        flags = _IFREQ.unpack(fcntl.ioctl(s, _SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags | _IFF_UP))


def pristine(home: int) -> Template:
    """A namespace just made, with `lo` up, as a sandbox reads it (what reads_as_new
    compares with): made for this and torn down. `home` is an fd of the caller's own
    namespace, to which it returns."""
    libc.unshare(libc.CLONE_NEWNET)
    try:
        _bring_up_lo()
        buf = bytearray(BUF)
        return Template([bytes(buf[: _read(path, buf)]) for path in _PATHS])
    finally:
        libc.setns(home, libc.CLONE_NEWNET)  # failing here is a bug: it raises


@dataclass
class NetnsPool:
    """The zygote's network namespaces, each an fd: `adopt` a new sandbox's own, `give_back`
    a sandbox's once it is gone, `take` one for the next clone (the cloner decides whether
    it can be used)."""

    home: int  # an fd of the zygote's own namespace, to which it always returns
    pristine: Template  # what the cloner compares a kept namespace with
    keep: int = KEEP
    free: list[int] = field(default_factory=list)

    @classmethod
    def create(cls, home: int) -> NetnsPool:
        return cls(home, pristine(home))

    def take(self) -> int:
        """A kept namespace for the next clone (its fd, which the pool lets go of), or -1:
        then the clone makes a new one."""
        return self.free.pop() if self.free else -1  # the newest: the oldest go first

    def adopt(self, pid: int) -> int:
        """Bring up `lo` in the new namespace of sandbox `pid`; returns an fd of it."""
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            libc.setns(fd, libc.CLONE_NEWNET)
            try:
                _bring_up_lo()
            finally:
                libc.setns(self.home, libc.CLONE_NEWNET)  # failing here is a bug: it raises
        except BaseException:
            os.close(fd)
            raise
        return fd

    def give_back(self, fd: int) -> None:
        """The namespace of a sandbox whose every process is gone: kept while there is
        room, else closed (the kernel tears it down)."""
        if len(self.free) < self.keep:
            self.free.append(fd)
        else:
            os.close(fd)

    def shrink(self, n: int) -> None:
        """Let go of all but `n` kept namespaces, the oldest first."""
        while len(self.free) > n:
            os.close(self.free.pop(0))
