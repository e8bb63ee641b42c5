"""A sandbox's loopback interface, brought up by the zygote from outside.

A new network namespace has only `lo`, and it is down. The sandbox could bring it up
itself (it owns its namespace until it drops its capabilities), but that meant importing
and running the socket machinery in every sandbox: about forty pages of the zygote's memory
written, each a copy-on-write fault and a page the idle sandbox holds on its own. The
zygote, host root, enters the sandbox's network namespace for three syscalls instead.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct

from execbox.sandbox import libc

_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_IFREQ = struct.Struct("16sH14x")


def bring_up(pid: int, home: int) -> None:
    """Bring up `lo` in the network namespace of process `pid`; `home` is an fd of the
    caller's own network namespace, to which it always returns."""
    target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc.setns(target, libc.CLONE_NEWNET)
        try:
            # a socket belongs to the namespace it was created in
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                req = _IFREQ.pack(b"lo", 0)
                flags = _IFREQ.unpack(fcntl.ioctl(s, _SIOCGIFFLAGS, req))[1]
                fcntl.ioctl(s, _SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags | _IFF_UP))
        finally:
            libc.setns(home, libc.CLONE_NEWNET)  # failing here is a bug: it raises
    finally:
        os.close(target)
