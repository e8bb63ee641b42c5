"""The engine's side of the zygote socket under a burst: messages queue, never fail."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from execbox.sandbox import protocol
from execbox.sandbox.supervisor import Lease, Supervisor, ZygoteLaunch


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
