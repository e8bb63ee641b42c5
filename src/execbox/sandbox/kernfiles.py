"""Small kernel files (cgroupfs, /proc) read and written with raw syscalls.

os.open/os.read rather than open(): three syscalls instead of eight, and no file object.
The zygote does this for every sandbox, and every object it allocates costs it a
copy-on-write fault after its next clone.
"""

from __future__ import annotations

import os

CHUNK = 4096


def read_fd(fd: int) -> str:
    """All of an open kernel file, from its start. Such a file answers a read with all it
    can fit, so only a full buffer may have more (cgroup.procs of a busy sandbox)."""
    data = os.pread(fd, CHUNK, 0)
    while data and len(data) % CHUNK == 0:
        more = os.pread(fd, CHUNK, len(data))
        if not more:
            break
        data += more
    return data.decode()


def read(path: str, dir_fd: int | None = None) -> str | None:
    """The file's text, or None when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        return read_fd(fd)
    except OSError:
        return None
    finally:
        os.close(fd)


def write(path: str, value: str, dir_fd: int | None = None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)
