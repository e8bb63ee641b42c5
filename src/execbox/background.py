"""Work that runs beside the requests (async executions, record writes, callbacks, queued
jobs): kept referenced until done, its failures logged, and waited for at shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any


class Background:
    def __init__(self, log: logging.Logger, what: str) -> None:
        self.log = log
        self.what = what  # how a failure is named in the log
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # the client already has its answer; the log (and health) say what failed
            self.log.error("%s failed: %r", self.what, task.exception())

    async def wait(self, timeout: float) -> None:
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=timeout)

    def cancel(self) -> None:
        for task in list(self.tasks):
            task.cancel()
