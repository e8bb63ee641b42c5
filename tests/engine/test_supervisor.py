"""The engine's side of the zygote socket under a burst: messages queue, never fail."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator

import pytest

from execbox.sandbox import protocol
from execbox.sandbox.supervisor import Lease, Supervisor, ZygoteLaunch, _close
from execbox.sandbox.zygote import Sandbox, Zygote, ZygoteConfig


def test_a_burst_that_fills_the_socket_is_queued_in_order() -> None:
    async def main() -> list[int]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        launch = ZygoteLaunch("python", "", "", [], 0, 1, "", 1, [], 1, 1, 1, 1)
        sup = Supervisor(launch)
        sup.sock = ours
        for i in range(5000):  # far more than the socket buffer holds
            sup.send({"op": "take", "req": i})
        assert sup._outbox, "the burst should have filled the socket"
        got: list[int] = []
        theirs.setblocking(False)
        while len(got) < 5000:
            try:
                msg, _ = protocol.recv(theirs)
                assert msg is not None
                got.append(msg["req"])
            except BlockingIOError:
                await asyncio.sleep(0.001)  # the loop flushes the queue as room appears
        theirs.close()
        ours.close()
        return got

    assert asyncio.run(main()) == list(range(5000))


# ---- a sandbox's end: `exited` when reported, `gone` (the engine's slot) when reaped ----


def _lease(loop: asyncio.AbstractEventLoop, sid: str) -> Lease:
    return Lease(
        sid=sid, pid=1, job_fd=-1, stdin_fd=-1, stdout_fd=-1, stderr_fd=-1, result_fd=-1,
        pidfd=-1, pool_hit=True, take_ms=0.0, exited=loop.create_future(),
        gone=loop.create_future(),
    )  # fmt: skip


@pytest.fixture
def held() -> Iterator[tuple[Supervisor, Lease]]:
    """A supervisor holding one lease, with futures on a loop of their own."""
    loop = asyncio.new_event_loop()
    try:
        sup = Supervisor(launch=None)  # type: ignore[arg-type]
        lease = _lease(loop, "a")
        sup._leases["a"] = lease
        yield sup, lease
    finally:
        loop.close()


def test_an_early_end_keeps_the_slot_until_the_sandbox_is_reaped(held) -> None:
    sup, lease = held
    sup._dispatch({"op": "exit", "sid": "a", "early": True}, [])
    assert lease.exited.done() and not lease.gone.done()
    assert lease.exited.result()["sid"] == "a" and "a" in sup._dying
    sup._dispatch({"op": "reaped", "sid": "a"}, [])
    assert lease.gone.done() and "a" not in sup._dying


def test_the_slot_comes_back_even_when_the_engine_gave_up_waiting_for_the_end(held) -> None:
    # the engine's wait for a killed sandbox timed out (its `exited` was cancelled); when
    # the exit comes after all, the slot must still be released, not leaked
    sup, lease = held
    lease.exited.cancel()
    sup._dispatch({"op": "exit", "sid": "a", "early": False}, [])
    assert lease.gone.done() and "a" not in sup._leases


# ---- offers: ready sandboxes sent ahead, claimed without a round trip ----


def _sandbox_fds() -> list[int]:
    """Six fds standing for a sandbox's job, stdin, stdout, stderr, result and pidfd."""
    fds: list[int] = []
    for _ in range(3):
        fds.extend(os.pipe())
    return fds


def _closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


POOL_LIMITS = {"memory_bytes": 256 << 20, "pids": 64, "cpu_limit_ns": 10**9, "fds": 64}


@pytest.fixture
def offering() -> Iterator[tuple[Supervisor, socket.socket, list[int]]]:
    """A supervisor with one sandbox offered ("s1"), and the zygote's end of its socket."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    theirs.settimeout(1.0)
    launch = ZygoteLaunch("python", "", "", [], 0, 1, "", 1, [], 1, 1, 256 << 20, 64)
    sup = Supervisor(launch)
    sup.sock, sup.ready = ours, True
    fds = _sandbox_fds()
    sup._dispatch({"op": "offer", "sid": "s1", "pid": 42, "setup_ms": 3.0, "pool": 1}, fds)
    try:
        yield sup, theirs, fds
    finally:
        _close(fds)
        ours.close()
        theirs.close()


def test_an_offered_sandbox_is_claimed_without_waiting_for_the_zygote(offering) -> None:
    sup, theirs, fds = offering

    async def main() -> Lease:
        # nothing answers on the zygote's side: the take must not wait for it
        return await asyncio.wait_for(sup.take(dict(POOL_LIMITS)), 1.0)

    assert sup.pool_size == 1  # the offer's count, as a "ready" sets it
    lease = asyncio.run(main())
    assert (lease.sid, lease.pid, lease.pool_hit) == ("s1", 42, True)
    assert [lease.job_fd, lease.stdin_fd, lease.stdout_fd] == fds[:3]
    assert [lease.stderr_fd, lease.result_fd, lease.pidfd] == fds[3:]
    msg, _ = protocol.recv(theirs)
    assert msg == {"op": "claim", "sid": "s1", "limits": POOL_LIMITS}
    assert not sup._offers and sup._leases["s1"] is lease and sup.stats["hits"] == 1
    assert sup.refill_ms == [3.0] and sup.pool_size == 0


def test_other_limits_take_the_offered_sandbox_by_name_and_wait_for_them(offering) -> None:
    sup, theirs, fds = offering

    async def main() -> Lease:
        limits = {**POOL_LIMITS, "memory_bytes": 64 << 20}
        asyncio.get_running_loop().add_reader(sup.sock.fileno(), sup._on_readable)
        task = asyncio.ensure_future(sup.take(limits))
        await asyncio.sleep(0.01)
        assert not task.done(), "it must wait until the zygote has set the limits"
        msg, _ = protocol.recv(theirs)
        assert (msg["op"], msg["sid"], msg["limits"]) == ("take", "s1", limits)
        reply = {"op": "sandbox", "req": msg["req"], "sid": "s1", "pid": 42}
        protocol.send(theirs, {**reply, "pool_hit": True, "take_ms": 0.1, "pool": 0})
        return await asyncio.wait_for(task, 1.0)

    lease = asyncio.run(main())
    assert lease.sid == "s1" and lease.job_fd == fds[0] and lease.pidfd == fds[5]
    assert lease.pool_hit and not sup._offers and sup._leases["s1"] is lease


def test_a_claim_is_never_queued_behind_other_messages(offering) -> None:
    # the zygote must read a claim before the sandbox's end: a claim waiting in the queue
    # while the job is written could come after it, so a take by name is queued instead
    sup, theirs, _fds = offering

    async def main() -> None:
        sup._outbox.append({"op": "kill", "sid": "x"})
        asyncio.get_running_loop().add_writer(sup.sock.fileno(), sup._flush)
        task = asyncio.ensure_future(sup.take(dict(POOL_LIMITS)))
        await asyncio.sleep(0.01)
        assert not task.done()
        first, _ = protocol.recv(theirs)
        second, _ = protocol.recv(theirs)
        assert first["op"] == "kill" and (second["op"], second["sid"]) == ("take", "s1")
        task.cancel()

    asyncio.run(main())


def test_an_offer_that_ends_before_its_claim_is_dropped(offering) -> None:
    sup, _theirs, fds = offering
    sup._dispatch({"op": "exit", "sid": "s1", "taken": False, "early": False}, [])
    assert not sup._offers and all(_closed(fd) for fd in fds)


def test_a_shrinking_pool_gives_back_its_oldest_offers(offering) -> None:
    sup, theirs, fds = offering
    newer = _sandbox_fds()
    sup._dispatch({"op": "offer", "sid": "s2", "pid": 43, "setup_ms": 3.0, "pool": 2}, newer)

    async def main() -> None:
        sup.set_pool_size(1)

    asyncio.run(main())
    msg, _ = protocol.recv(theirs)
    assert msg == {"op": "pool", "size": 1, "release": ["s1"]}
    assert list(sup._offers) == ["s2"] and all(_closed(fd) for fd in fds)
    assert not any(_closed(fd) for fd in newer)
    sup._teardown()  # a dead zygote's offers are closed with it
    assert not sup._offers and all(_closed(fd) for fd in newer)


@pytest.fixture
def zygote() -> Iterator[tuple[Zygote, socket.socket]]:
    """A zygote with no cgroups, root or cloner, on one end of a socket, and the engine's
    end; it offers what says ready, as a Python zygote does."""
    engine_end, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    zygote_end.setblocking(False)
    engine_end.settimeout(1.0)
    cfg = ZygoteConfig("python", zygote_end.fileno(), "", [], 0, 1, "", 1, [], 1, 1, 1, 1)
    try:
        yield Zygote(cfg, zygote_end, None, None, None, offer_ready=True), engine_end  # type: ignore[arg-type]
    finally:
        engine_end.close()
        zygote_end.close()


def test_the_zygote_reads_every_message_the_engine_sent_before_anything_else(zygote) -> None:
    # serve() handles the engine's socket first in a batch; on_engine must then drain it,
    # or a claim behind another message could be read after its sandbox's end
    z, engine_end = zygote
    for _ in range(3):
        protocol.send(engine_end, {"op": "ping"})
    assert z.on_engine() is True
    for _ in range(3):
        msg, _ = protocol.recv(engine_end)
        assert msg == {"op": "pong", "live": 0, "pool": 0}
    engine_end.close()
    assert z.on_engine() is False  # the engine has gone


def test_a_sandbox_the_pool_let_go_of_is_not_offered_when_it_says_ready(zygote) -> None:
    # a shrink kills a starting sandbox; its "ready" may already be on its way
    class Counters:
        def reset_counters(self) -> None:
            pass

    z, engine_end = zygote
    fds = {sid: _sandbox_fds() for sid in ("kept", "let-go")}
    try:
        for sid, (*pipes, pidfd) in fds.items():
            z.live[sid] = Sandbox(sid, 1, pidfd, 1, Counters(), -1, pipes, 0.0)  # type: ignore[arg-type]
        z.pool.append("kept")
        z._sandbox_message(z.live["let-go"], b"R")
        msg, got = protocol.recv(engine_end)
        assert msg is not None and msg["op"] == "ready" and not got and not z.offered
        z._sandbox_message(z.live["kept"], b"R")
        msg, got = protocol.recv(engine_end)
        _close(got)
        assert msg is not None and (msg["op"], msg["sid"], len(got)) == ("offer", "kept", 6)
        assert list(z.offered) == ["kept"] and not z.pool
        # the pipes are the engine's now: the zygote keeps only its pidfd
        assert all(_closed(fd) for fd in fds["kept"][:5]) and not _closed(fds["kept"][5])
    finally:
        _close([fd for each in fds.values() for fd in each])
