"""Asynchronous reads and writes on a sandbox's pipes, on the engine's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

CHUNK = 1 << 16


async def read_capped(
    fd: int,
    cap: int,
    on_over: Callable[[], None],
    stop: asyncio.Future[None] | None = None,
) -> tuple[bytes, bool]:
    """Read until EOF, keeping at most `cap` bytes. Calls `on_over` once when the cap is
    passed, then keeps draining (and discarding) so the writer is never blocked forever.
    Once `stop` is done, it takes what is in the pipe now and returns without the EOF."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    buf = bytearray()
    over = False
    done: asyncio.Future[None] = loop.create_future()

    def drain() -> bool:
        """Read what is there; True at EOF (or a broken pipe)."""
        nonlocal over
        try:
            while True:
                chunk = os.read(fd, CHUNK)
                if not chunk:
                    return True
                room = cap - len(buf)
                if len(chunk) > room:
                    buf.extend(chunk[: max(room, 0)])
                    if not over:
                        over = True
                        on_over()
                else:
                    buf.extend(chunk)
        except BlockingIOError:
            return False
        except OSError:
            return True

    def finish() -> None:
        loop.remove_reader(fd)
        if not done.done():
            done.set_result(None)

    def readable() -> None:
        if drain():
            finish()

    def stopped(_: asyncio.Future[None]) -> None:
        if not done.done():
            drain()
            finish()

    loop.add_reader(fd, readable)
    if stop is not None:
        stop.add_done_callback(stopped)
    try:
        await done
    finally:
        with contextlib.suppress(Exception):
            loop.remove_reader(fd)
        if stop is not None:
            stop.remove_done_callback(stopped)
    return bytes(buf), over


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def write_all(fd: int, data: bytes) -> None:
    """Write everything, waiting for the reader as needed. Raises OSError (EPIPE) when the
    reader goes away."""
    if not data:
        return
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
            continue
        except BlockingIOError:
            pass
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_writer(fd, _wake, ready)
        try:
            await ready
        finally:
            loop.remove_writer(fd)
