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

import contextlib
import os
import signal
import socket
import struct
from dataclasses import dataclass

from execbox.sandbox import child, libc

# the fds a sandbox starts with, in this order (see child.main), then its cgroup.procs files
SANDBOX_FDS = 7
MAX_FDS = SANDBOX_FDS + 16
_REPLY = struct.Struct("i")  # the new pid, or minus the clone's errno


class ClonerGone(Exception):
    """The cloner died: the zygote cannot make sandboxes any more."""


@dataclass
class Cloner:
    """The zygote's handle on its cloner."""

    spec: child.ChildSpec
    flags: int
    pid: int
    sock: socket.socket

    @classmethod
    def start(cls, spec: child.ChildSpec, flags: int) -> Cloner:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            ours.close()
            _serve(theirs, spec, flags)  # never returns
        theirs.close()
        return cls(spec, flags, pid, ours)

    def restarted(self) -> Cloner:
        """A new cloner in place of this one, which died (killed from outside: nothing in
        its loop raises). The zygote and its sandboxes go on as they were."""
        self.stop()
        return Cloner.start(self.spec, self.flags)

    def request(self, fds: tuple[int, ...]) -> None:
        """Ask for a sandbox that starts with these fds (ours may be closed at once). The
        reply, its pid, comes later, in order (`replies`): the zygote goes on meanwhile.
        Raises ClonerGone if the cloner is dead."""
        try:
            socket.send_fds(self.sock, [b"C"], list(fds))
        except OSError as exc:
            raise ClonerGone(f"the cloner is unreachable: {exc}") from exc

    def replies(self) -> list[int]:
        """The replies that have come, oldest first: a pid, or minus the errno the kernel
        refused the clone with. Raises ClonerGone when the cloner has died (the requests
        not answered yet have no reply, and may or may not have been cloned)."""
        out = []
        while True:
            try:
                reply = self.sock.recv(_REPLY.size, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return out
            except OSError as exc:
                raise ClonerGone(f"the cloner is unreachable: {exc}") from exc
            if len(reply) != _REPLY.size:
                raise ClonerGone("the cloner died")
            out.append(_REPLY.unpack(reply)[0])

    def wait_reply(self, timeout: float) -> int | None:
        """The next reply, waiting for it up to `timeout` (at shutdown); None if none."""
        self.sock.settimeout(timeout)
        try:
            reply = self.sock.recv(_REPLY.size)
        except OSError:
            return None
        finally:
            self.sock.settimeout(None)
        return _REPLY.unpack(reply)[0] if len(reply) == _REPLY.size else None

    def stop(self) -> None:
        self.sock.close()  # it exits when it reads the end
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def _serve(sock: socket.socket, spec: child.ChildSpec, flags: int) -> None:
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
        clone = libc.Clone(flags | libc.CLONE_PARENT)
        while True:
            _msg, fds, _flags, _addr = socket.recv_fds(sock, 1, MAX_FDS)
            if not fds:
                break  # the zygote has gone
            if len(fds) < SANDBOX_FDS:
                pid = -22  # EINVAL: not a request this loop understands
            else:
                try:
                    pid = clone()
                except OSError as exc:
                    pid = -(exc.errno or 22)
                if pid == 0:
                    child.main(spec, fds[6], tuple(fds[:6]), tuple(fds[7:]))  # no return
            for fd in fds:
                os.close(fd)
            sock.send(_REPLY.pack(pid))
    except BaseException:
        status = 1
    os._exit(status)
