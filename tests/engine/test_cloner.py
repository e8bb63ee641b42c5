"""The cloner: the zygote's one fork, which clones its sandboxes (see sandbox/cloner.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from execbox.jobs import Job, Status


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _cloner(zygote: int) -> int:
    """The zygote's one child in its own pid namespace; every other child is a sandbox
    (cloned with CLONE_PARENT, so the zygote is their parent), each in a namespace of its own.
    Waits a little for it: after a cloner's death the zygote starts the next one."""
    ns = os.readlink(f"/proc/{zygote}/ns/pid")
    deadline = time.monotonic() + 2
    while True:
        same = []
        for pid in _children(zygote):
            try:
                if os.readlink(f"/proc/{pid}/ns/pid") == ns:
                    same.append(pid)
            except OSError:
                continue  # a sandbox (not dumpable once set up), or gone meanwhile
        if len(same) == 1 or time.monotonic() > deadline:
            assert len(same) == 1, same
            return same[0]
        time.sleep(0.02)


def test_sandboxes_are_the_zygotes_children_and_the_cloner_holds_nothing(engine) -> None:
    sup = engine.engine.zygotes["python"]
    zygote = sup.proc.pid
    engine.py("print(1)")
    time.sleep(0.3)  # the pool has refilled
    cloner = _cloner(zygote)
    sandboxes = [p for p in _children(zygote) if p != cloner]
    assert sandboxes, "the pool's sandboxes should be the zygote's children"
    for pid in sandboxes:
        # pid 1 of a pid namespace of its own (status stays readable once it is set up and
        # no longer dumpable, unlike its ns links)
        assert _nspid(pid)[1:] == [1], (pid, _nspid(pid))
    # nothing of the zygote's (its engine socket, sandboxes' pipes, cgroup files) is held
    # by the cloner, and so none of it is in a sandbox at its clone: stdio and its socket
    _assert_holds_only_its_own(cloner)


def _assert_holds_only_its_own(cloner: int) -> None:
    """Stdio, its socket to the zygote, and its own (the host's) network namespace, to
    which it comes back after a clone into a kept one."""
    deadline = time.monotonic() + 2  # a cloner just forked closes the zygote's fds first
    while len(fds := sorted(int(fd) for fd in os.listdir(f"/proc/{cloner}/fd"))) != 5:
        assert time.monotonic() < deadline, fds
        time.sleep(0.01)
    assert fds[:3] == [0, 1, 2], fds
    netns, sock = sorted(os.readlink(f"/proc/{cloner}/fd/{fd}") for fd in fds[3:])
    assert sock.startswith("socket:"), sock
    assert netns == os.readlink("/proc/self/ns/net") == os.readlink(f"/proc/{cloner}/ns/net")


def test_a_killed_cloner_is_replaced_and_nothing_in_flight_is_lost(engine) -> None:
    sup = engine.engine.zygotes["python"]
    zygote = sup.proc.pid
    engine.py("print(1)")
    time.sleep(0.3)
    cloner = _cloner(zygote)
    slow = Job(runtime="python", code="import time; time.sleep(0.5); print('ok')")
    running = asyncio.run_coroutine_threadsafe(engine.engine.run(slow), engine.loop)
    time.sleep(0.1)
    os.kill(cloner, signal.SIGKILL)
    # more executions than the pool holds: the zygote must clone, through a new cloner
    outs = engine.many([Job(runtime="python", code="print(2)") for _ in range(6)])
    assert [o.status for o in outs] == [Status.SUCCESS] * 6, outs
    assert all(o.stdout == b"2\n" for o in outs)
    out = running.result(timeout=10)
    assert out.status is Status.SUCCESS and out.stdout == b"ok\n", out
    assert sup.proc.pid == zygote and sup.restarts == 0  # the same zygote, never restarted
    new = _cloner(zygote)
    assert new != cloner
    # forked while sandboxes were live: a copy of their pipes held here would keep a
    # sandbox waiting for the end of its job forever
    _assert_holds_only_its_own(new)


def test_takes_waiting_on_a_cloner_that_dies_get_new_sandboxes(engine) -> None:
    """The zygote does not wait for the cloner: takes that found no ready sandbox wait for
    clones asked of it. Kill the cloner with such clones unanswered: each take is taken
    again through a new cloner, and every execution runs."""
    sup = engine.engine.zygotes["python"]
    zygote = sup.proc.pid
    engine.py("print(1)")
    time.sleep(0.3)
    cloner = _cloner(zygote)
    os.kill(cloner, signal.SIGSTOP)  # requests pile up unanswered
    jobs = [Job(runtime="python", code=f"print({i})") for i in range(8)]
    futures = [asyncio.run_coroutine_threadsafe(engine.engine.run(j), engine.loop) for j in jobs]
    time.sleep(0.3)
    os.kill(cloner, signal.SIGKILL)
    outs = [f.result(timeout=30) for f in futures]
    assert [o.status for o in outs] == [Status.SUCCESS] * 8, [(o.status, o.error) for o in outs]
    assert [o.stdout for o in outs] == [f"{i}\n".encode() for i in range(8)]
    assert sup.restarts == 0
    _assert_holds_only_its_own(_cloner(zygote))
    # a clone whose reply was lost ends when its go pipe closes, and is reaped
    deadline = time.monotonic() + 5
    while zombies := [p for p in _children(zygote) if _state(p) == "Z"]:
        assert time.monotonic() < deadline, zombies
        engine.py("print(1)")  # the zygote reaps strays as it goes
        time.sleep(0.1)


def _nspid(pid: int) -> list[int]:
    with open(f"/proc/{pid}/status") as f:
        line = next(x for x in f if x.startswith("NSpid:"))
    return [int(p) for p in line.split()[1:]]


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:  # ENOENT or ESRCH: reaped meanwhile
        return "gone"


def test_a_cloner_killed_in_the_middle_of_clones_loses_nothing(engine) -> None:
    """Killed while it is cloning, between a clone and its reply or anywhere else: the
    zygote sees the death (its pidfd, not only the socket's end, which a clone could hold
    open), finishes what was answered, and takes again what was not."""
    sup = engine.engine.zygotes["python"]
    zygote = sup.proc.pid
    for round_ in range(3):
        engine.py("print(1)")
        cloner = _cloner(zygote)
        jobs = [Job(runtime="python", code=f"print({i})") for i in range(12)]
        futures = [
            asyncio.run_coroutine_threadsafe(engine.engine.run(j), engine.loop) for j in jobs
        ]
        time.sleep(0.01 * (round_ + 1))
        os.kill(cloner, signal.SIGKILL)
        outs = [f.result(timeout=30) for f in futures]
        assert [o.stdout for o in outs] == [f"{i}\n".encode() for i in range(12)], [
            (o.status, o.error) for o in outs
        ]
    assert sup.restarts == 0


@pytest.mark.parametrize("high_fd", [False, True], ids=["low-fd", "fd-past-1024"])
def test_requests_never_block_on_a_cloner_that_is_itself_blocked_on_its_replies(
    high_fd: bool,
) -> None:
    """A burst: the zygote sends many requests before it reads any reply. The cloner, its
    replies unread, blocks sending one and stops reading requests; a blocking send on the
    zygote's side then waits forever (it did: socket.send_fds drops MSG_DONTWAIT). Here a
    thread plays the cloner, one reply per request. A cloner started in a burst has its
    socket past fd 1024, where select() refused to wait on it."""
    import resource
    import socket
    import threading

    from execbox.sandbox.cloner import _REPLY, Cloner

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    if high_fd:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft <= 2000:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
        os.dup2(ours.fileno(), 2000)
        ours.close()
        ours = socket.socket(fileno=2000)

    def cloner() -> None:
        while True:
            _msg, fds, _flags, _addr = socket.recv_fds(theirs, 1, 32)
            if not fds:
                return
            for fd in fds:
                os.close(fd)
            theirs.send(_REPLY.pack(len(fds), True))

    peer = threading.Thread(target=cloner, daemon=True)
    peer.start()
    handle = Cloner(os.getpid(), -1, ours)
    n = 3000  # far more than either side's socket buffer holds
    fd = os.open("/dev/null", os.O_RDONLY)
    sent = threading.Thread(target=lambda: [handle.request((fd,) * 7) for _ in range(n)])
    try:
        sent.start()
        sent.join(30)
        assert not sent.is_alive(), "the zygote's send blocked: a deadlock with the cloner"
        got: list = []
        deadline = time.monotonic() + 10
        while len(got) < n and time.monotonic() < deadline:
            replies, gone = handle.replies()
            got.extend(replies)
            assert not gone
            time.sleep(0.01)
        assert len(got) == n and all(r.pid == 7 for r in got)
    finally:
        os.close(fd)
        ours.close()
        peer.join(5)
        theirs.close()


def test_the_cloner_refuses_a_request_it_does_not_understand_and_ends_with_the_zygote() -> None:
    """cloner.c's loop, on its own: a request with fewer fds than a sandbox starts with is
    answered with EINVAL (nothing is cloned from it), and the loop goes on; the end of the
    zygote's line ends the cloner, cleanly."""
    import errno

    from execbox.sandbox import child, libc, netns
    from execbox.sandbox.cloner import Cloner, Reply

    spec = child.ChildSpec(
        root="/nonexistent", seccomp_bpf=b"", tmp_bytes=1, work_bytes=1, cap_last_cap=40
    )
    handle = Cloner.start(spec, libc.NAMESPACE_FLAGS, netns.Template([b""] * 6))
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        handle.request((fd, fd))
        handle.request((fd,) * 3, netns=fd)  # a kept namespace does not make up for them
        assert [handle.wait_reply(5), handle.wait_reply(5)] == [Reply(-errno.EINVAL, False)] * 2
    finally:
        os.close(fd)
    handle.sock.close()
    _, status = os.waitpid(handle.pid, 0)
    os.close(handle.pidfd)
    assert os.waitstatus_to_exitcode(status) == 0
