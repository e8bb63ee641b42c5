"""The records of executions that already ran (ZeroBoot and Faber, which have no ids of
their own), made and written after the answer, in batches.

A run's record is handed over as the run ends, as a function that makes it: it is made (the
request and the outcome turned into what is stored, the output decoded) once the answer has
gone, and written together with every record that arrived meanwhile: one hop to the store's
thread and one transaction per batch. Before, each run cost a wake-up of that thread, four
statements and two commits, and the thread then competed with the event loop for the
interpreter. Under load the batches grow by themselves; when idle, a record waits at most
BATCH_WAIT_S.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from execbox.background import Background
from execbox.store.sqlite import FinishedRecord, Store

if TYPE_CHECKING:
    from execbox.cluster.records import ClusterRecords

log = logging.getLogger("execbox.records")

# how long the first record of a batch waits for others: a record is readable this much
# later than before (it was written off the request's path already)
BATCH_WAIT_S = 0.005


class RecordWriter:
    def __init__(self, store: Store | ClusterRecords, background: Background) -> None:
        self.store = store
        self.background = background
        self.pending: list[Callable[[], FinishedRecord]] = []
        self.writing = False

    def add(self, make: Callable[[], FinishedRecord]) -> None:
        self.pending.append(make)
        if not self.writing:
            self.writing = True
            self.background.spawn(self._write())

    async def _write(self) -> None:
        try:
            await asyncio.sleep(BATCH_WAIT_S)
            while self.pending:
                batch = self._make(self.pending)
                self.pending = []
                try:
                    await self.store.call(self.store.record_finished, batch)
                except Exception as exc:  # a full disk, say: the answers were given
                    log.error("%d execution records could not be written: %r", len(batch), exc)
        finally:
            self.writing = False

    @staticmethod
    def _make(makes: list[Callable[[], FinishedRecord]]) -> list[FinishedRecord]:
        """The records; one that cannot be made is logged and left out (kept pending, it
        would fail every batch after it)."""
        batch = []
        for make in makes:
            try:
                batch.append(make())
            except Exception:
                log.exception("an execution record could not be made")
        return batch
