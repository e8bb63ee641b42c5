"""The cloner: a process forked from the zygote once, whose only job is to clone sandboxes.

Why the zygote does not clone them itself: after a clone, every writable page of the parent
is shared copy-on-write with the new sandbox, so the parent pays a page fault and a page
copy for each page it writes next. Between two clones the zygote's loop (cgroups, pipes,
messages, reaping) writes about 320 pages; measured, that was a third of its cpu, and the
zygote is one thread that every execution goes through. The cloner's loop (cloner.c) writes
a few pages, and the zygote, which forks nothing after the cloner, writes its own pages in
place.

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
import ctypes
import dataclasses
import os
import select
import signal
import socket
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from execbox.runtimes import python_inproc
from execbox.sandbox import child, forkhooks, libc, native, netns, protocol

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
    def start(cls, spec: child.ChildSpec, flags: int, pristine: netns.Template) -> Cloner:
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


class _Loop(ctypes.Structure):
    """cloner.c's struct execbox_cloner: the loop's arguments, built once."""

    _fields_ = [
        ("sock", ctypes.c_int),
        ("home", ctypes.c_int),
        ("flags_new", ctypes.c_uint64),
        ("flags_into", ctypes.c_uint64),
        ("tid", ctypes.c_void_p),
        ("sandbox_fds", ctypes.c_int),
        ("max_fds", ctypes.c_int),
        ("pristine", ctypes.POINTER(netns.Template)),
    ]


class _Request(ctypes.Structure):
    """cloner.c's struct execbox_clone_request: a new sandbox's fds."""

    _fields_ = [("nfds", ctypes.c_int), ("fds", ctypes.c_int * (MAX_FDS + 1))]


def _serve(
    sock: socket.socket, spec: child.ChildSpec, flags: int, pristine: netns.Template
) -> None:
    """The cloner: cloner.c's loop (see there why it is C) until the zygote goes. In a new
    sandbox the loop returns with its fds, and the sandbox goes on from here."""
    status = 0
    try:
        libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
        keep = sock.fileno()
        # the zygote's engine socket, its sandboxes' pipes and cgroup files are not ours
        # to hold, and a sandbox must not inherit them
        os.closerange(3, keep)
        libc.close_range(keep + 1)
        home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        flags, tid = libc.clone_args(flags | libc.CLONE_PARENT)
        loop = _Loop(
            keep,
            home,
            flags,
            flags & ~libc.CLONE_NEWNET,
            tid,
            SANDBOX_FDS,
            MAX_FDS,
            ctypes.pointer(pristine),
        )
        if spec.runtime == "python":
            spec = dataclasses.replace(spec, main=python_inproc.prebuild())
        # what a sandbox must redo of the interpreter's after-fork work (forkhooks.py);
        # its code finds os.register_at_fork as the interpreter made it
        after_clone = forkhooks.plan()
        forkhooks.restore()
        request = _Request()
        serve = native.holding_lock().execbox_cloner_serve
        rc = serve(ctypes.byref(loop), ctypes.byref(request))
        if rc == 0:
            # a new sandbox, its parent the zygote (CLONE_PARENT). The loop ran none of the
            # interpreter's fork hooks: the cloner has one thread, so there is no lock
            # another could hold across the clone. The hooks that make a child's own state
            # run here first; all of the interpreter's after-fork work (its thread state,
            # the import lock, every hook) when a hook is not known.
            if after_clone is None:
                libc.after_fork_child()
            else:
                for hook in after_clone:
                    hook()
            fds = list(request.fds[: request.nfds])
            child.main(spec, fds[6], tuple(fds[:6]), tuple(fds[7:]))  # no return
        status = 0 if rc == 1 else 1  # 1: the zygote has gone
    except BaseException:
        status = 1
    os._exit(status)
