"""The engine's side of the zygote socket under a burst: messages queue, never fail."""

from __future__ import annotations

import asyncio
import socket

from execbox.sandbox import protocol
from execbox.sandbox.supervisor import Supervisor, ZygoteLaunch


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
