"""Opening files below a directory that untrusted code can write to, without following
its symlinks or being raced: openat2(2) with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS.

Written by hand: Python 3.11 has no openat2, and no maintained library wraps it.
"""

from __future__ import annotations

import ctypes
import os
import stat

SYS_openat2 = 437
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
STRICT = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = STRICT) -> int:
    # openat2 is strict: a mode without O_CREAT is EINVAL
    how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0, resolve)
    fd = _libc.syscall(SYS_openat2, dirfd, path.encode(), ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


def open_beneath(root: str, rel: str, flags: int, mode: int = 0o644) -> int:
    """Open `rel` below `root`; refuses '..' escapes, absolute paths and every symlink."""
    dirfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return openat2(dirfd, rel, flags, mode)
    finally:
        os.close(dirfd)


def read_beneath(root: str, rel: str, limit: int) -> bytes:
    fd = open_beneath(root, rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IsADirectoryError(21, "not a regular file", rel)
        chunks, total = [], 0
        while chunk := os.read(fd, 1 << 16):
            total += len(chunk)
            if total > limit:
                raise OSError(27, f"file is larger than {limit} bytes", rel)  # EFBIG
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_beneath(root: str, rel: str, data: bytes, uid: int, gid: int) -> None:
    """Create or replace a regular file below `root`, owned by uid:gid, making the parent
    directories (also without following symlinks)."""
    dirfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        *dirs, name = rel.split("/")
        for part in dirs:  # one component at a time: a planted symlink is never followed
            try:
                os.mkdir(part, 0o755, dir_fd=dirfd)
                os.chown(part, uid, gid, dir_fd=dirfd, follow_symlinks=False)
            except FileExistsError:
                pass
            sub = openat2(dirfd, part, os.O_RDONLY | os.O_DIRECTORY)
            os.close(dirfd)
            dirfd = sub
        # O_NONBLOCK: a FIFO the code planted would otherwise hold this open until some
        # reader came (forever, with the session locked); now it fails at once (ENXIO) or
        # is refused below. Writes to a regular file ignore the flag.
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK
        fd = openat2(dirfd, name, flags, 0o644)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise IsADirectoryError(21, "not a regular file", rel)
            os.fchown(fd, uid, gid)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
    finally:
        os.close(dirfd)


def unlink_beneath(root: str, rel: str) -> None:
    head, _, name = rel.rpartition("/")
    parent = open_beneath(root, head or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.unlink(name, dir_fd=parent)
    finally:
        os.close(parent)
