"""The cloner: a process forked from the zygote once, whose only job is to clone sandboxes.

Why the zygote does not clone them itself: after a clone, every writable page of the parent
is shared copy-on-write with the new sandbox, so the parent pays a page fault and a page
copy for each page it writes next. Between two clones the zygote's loop (cgroups, pipes,
messages, reaping) writes about 320 pages; measured, that was a third of its cpu, and the
zygote is one thread that every execution goes through. The cloner's loop writes a few
pages, and the zygote, which forks nothing after the cloner, writes its own pages in place.

Sandboxes are cloned with CLONE_PARENT, so each is still the zygote's child: the zygote
reaps it and gets its rusage, and its parent-death signal follows the zygote. The sandbox
is a copy of the cloner, which holds nothing but the zygote's state at the fork: the same
interpreter, preloaded modules, root and filter. What is its own comes with the request:
its pipes and its cgroup's cgroup.procs files, opened by the zygote; a session's
workspace follows on its sync pipe, with the go once its uid map is written.
"""

from __future__ import annotations

import array
import contextlib
import os
import select
import signal
import socket
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from execbox.sandbox import child, libc, netns, protocol

# the fds a sandbox starts with, in this order (see child.main), then its cgroup.procs files
SANDBOX_FDS = 7
MAX_FDS = SANDBOX_FDS + 16
_REPLY = struct.Struct("i?")  # a Reply


class Reply(NamedTuple):
    pid: int  # the new pid, or minus the errno the kernel refused the clone with
    fresh: bool  # in a new network namespace, not the kept one the request offered


class ClonerGone(Exception):
    """The cloner died: the zygote cannot make sandboxes any more."""


@dataclass
class Cloner:
    """The zygote's handle on its cloner: requests go out without waiting; replies come in
    order, on the socket (`replies`): the pid, and whether the sandbox's network namespace
    is a new one. Its death shows on `pidfd`."""

    pid: int
    pidfd: int
    sock: socket.socket
    early: deque[Reply] = field(default_factory=deque)  # replies read while a send waited

    @classmethod
    def start(cls, spec: child.ChildSpec, flags: int, pristine: netns.Matcher) -> Cloner:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            raise
        if pid == 0:
            ours.close()
            _serve(theirs, spec, flags, pristine)  # never returns
        theirs.close()
        return cls(pid, os.pidfd_open(pid), ours)

    def request(self, fds: tuple[int, ...], netns: int = -1) -> None:
        """Ask for a sandbox that starts with these fds (ours may be closed at once), in
        the kept network namespace `netns` if one is given and it is untouched, else in a
        new one. The reply comes later, in order. Raises ClonerGone if the cloner is dead.

        The send never blocks for good: while the cloner's side is full (it is itself
        waiting to send replies this loop has not read), the replies are read here."""
        kind, sent = (b"N", [*fds, netns]) if netns >= 0 else (b"C", list(fds))
        while True:
            try:
                # not socket.send_fds: it drops its flags (Python 3.11), and a blocking send
                # here deadlocks with a cloner blocked on its replies
                rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", sent))]
                self.sock.sendmsg([kind], rights, socket.MSG_DONTWAIT)
                return
            except BlockingIOError:
                replies, gone = self._read()
                self.early.extend(replies)
                if gone:
                    raise ClonerGone("the cloner died") from None
                protocol.wait(self.sock, select.POLLIN | select.POLLOUT, 0.1)
            except OSError as exc:
                raise ClonerGone(f"the cloner is unreachable: {exc}") from exc

    def replies(self) -> tuple[list[Reply], bool]:
        """The replies that have come, oldest first, and whether the cloner has died: then
        the requests not answered have no reply, and may or may not have been cloned."""
        replies, gone = self._read()
        early = list(self.early)
        self.early.clear()
        return early + replies, gone

    def _read(self) -> tuple[list[Reply], bool]:
        out = []
        while True:
            try:
                reply = self.sock.recv(_REPLY.size, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return out, False
            except OSError:
                return out, True
            if len(reply) != _REPLY.size:
                return out, True
            out.append(Reply(*_REPLY.unpack(reply)))

    def wait_reply(self, timeout: float) -> Reply | None:
        """The next reply, waiting for it up to `timeout` (at shutdown); None if none."""
        if self.early:
            return self.early.popleft()
        self.sock.settimeout(timeout)
        try:
            reply = self.sock.recv(_REPLY.size)
        except OSError:
            return None
        finally:
            self.sock.settimeout(None)
        return Reply(*_REPLY.unpack(reply)) if len(reply) == _REPLY.size else None

    def stop(self) -> None:
        """End it (it exits when it reads the end of its socket; a stopped or stuck one is
        killed) and reap it."""
        self.sock.close()
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        os.close(self.pidfd)


def _serve(sock: socket.socket, spec: child.ChildSpec, flags: int, pristine: netns.Matcher) -> None:
    """The cloner's loop. Kept to a few lines on purpose: every page it writes between two
    clones costs it a copy-on-write fault at the next one."""
    status = 0
    try:
        libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
        keep = sock.fileno()
        # the zygote's engine socket, its sandboxes' pipes and cgroup files are not ours
        # to hold, and a sandbox must not inherit them
        os.closerange(3, keep)
        libc.close_range(keep + 1)
        home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        clone = _Clones(flags, home, pristine)
        while True:
            msg, fds, _flags, _addr = socket.recv_fds(sock, 1, MAX_FDS + 1)
            if not fds:
                break  # the zygote has gone
            kept = fds.pop() if msg == b"N" and len(fds) > SANDBOX_FDS else -1
            # EINVAL: not a request this loop understands
            reply = clone(kept) if len(fds) >= SANDBOX_FDS else Reply(-22, False)
            if reply.pid == 0:
                # the clone must not hold the zygote's line to the cloner: a clone
                # kept it open, the cloner's death would not show as its end
                os.close(keep)
                os.close(home)
                if kept >= 0:
                    os.close(kept)
                child.main(spec, fds[6], tuple(fds[:6]), tuple(fds[7:]))  # no return
            for fd in fds:
                os.close(fd)
            if kept >= 0:
                os.close(kept)
            sock.send(_REPLY.pack(*reply))
    except BaseException:
        status = 1
    os._exit(status)


class _Clones:
    """The cloner's clone: in a new network namespace, or in a kept one (netns.py) if it
    reads as new. To read it, this thread enters it; it comes home after the clone, which
    stays in it."""

    def __init__(self, flags: int, home: int, pristine: netns.Matcher) -> None:
        self.new = libc.Clone(flags | libc.CLONE_PARENT)
        self.into = libc.Clone((flags & ~libc.CLONE_NEWNET) | libc.CLONE_PARENT)
        self.home = home
        self.pristine = pristine
        self.buf = bytearray(netns.BUF)

    def __call__(self, kept: int) -> Reply:
        if kept >= 0 and self._enter_if_new(kept):
            pid = _clone(self.into)
            if pid != 0:
                libc.setns(self.home, libc.CLONE_NEWNET)  # failing here is a bug: it raises
            return Reply(pid, False)
        return Reply(_clone(self.new), True)

    def _enter_if_new(self, kept: int) -> bool:
        """Enter namespace `kept`, and stay if it reads as a new one; else come home."""
        try:
            libc.setns(kept, libc.CLONE_NEWNET)
        except OSError:
            return False
        try:
            if netns.reads_as_new(self.pristine, self.buf):
                return True
        except OSError:
            pass
        libc.setns(self.home, libc.CLONE_NEWNET)
        return False


def _clone(clone: libc.Clone) -> int:
    """The new pid (0 in the clone), or minus the errno the kernel refused it with."""
    try:
        return clone()
    except OSError as exc:
        return -(exc.errno or 22)
