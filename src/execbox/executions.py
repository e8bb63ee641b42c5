"""Execution records around the engine: every execution, in any dialect, is recorded;
an execution_id is run at most once; async runs move pending -> running -> completed or
failed and may call back; after a crash every accepted, unfinished execution is run again
(if it never started) or marked interrupted (if it was running: it may have had effects).
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from execbox import callbacks
from execbox.background import Background
from execbox.engine import Engine
from execbox.jobs import Job, Limits, Outcome, Status
from execbox.record_writer import RecordWriter
from execbox.store.sqlite import FinishedRecord, Store

if TYPE_CHECKING:
    from execbox.cluster.queue import JobQueue
    from execbox.cluster.records import ClusterRecords

log = logging.getLogger("execbox.executions")

# the record status of an Outcome status
RECORD_STATUS = {
    Status.SUCCESS: "completed",
    Status.TIMEOUT: "timeout",
}


WAS_RUNNING = (
    "the server stopped while this execution was running; it was not re-run because it "
    "may already have had effects"
)
TOO_LARGE = (
    "the server stopped before this execution ran, and its code was too large to keep for a re-run"
)


def record_status(outcome: Outcome) -> str:
    return RECORD_STATUS.get(outcome.status, "failed")


@dataclass(frozen=True)
class RecordCaps:
    retention_s: float
    max_code_bytes: int
    max_output_bytes: int


def job_to_dict(job: Job, caps: RecordCaps) -> dict[str, Any]:
    """The job as stored: enough to run it again, unless its code had to be cut."""
    code = job.code
    cut = code is not None and len(code.encode()) > caps.max_code_bytes
    return {
        "runtime": job.runtime,
        "code": code.encode()[: caps.max_code_bytes].decode(errors="ignore") if cut else code,
        "code_truncated": cut,
        "argv": job.argv,
        "files": {k: base64.b64encode(v).decode() for k, v in job.files.items()},
        "env": job.env,
        "stdin": base64.b64encode(job.stdin).decode(),
        "limits": job.limits.as_dict(),
        "session": job.session,
        "event": job.event,
        "handler": job.handler,
    }


def job_from_dict(d: dict[str, Any], exec_id: str) -> Job:
    return Job(
        runtime=d["runtime"],
        code=d["code"],
        argv=d["argv"],
        files={k: base64.b64decode(v) for k, v in d["files"].items()},
        env=d["env"],
        stdin=base64.b64decode(d["stdin"]),
        limits=Limits(**d["limits"]),
        session=d["session"],
        event=d["event"],
        handler=d["handler"],
        id=exec_id,
    )


def outcome_to_dict(outcome: Outcome, cap: int) -> dict[str, Any]:
    def text(b: bytes) -> str:
        return b[:cap].decode(errors="replace")

    return {
        "status": outcome.status.value,
        "exit_code": outcome.exit_code,
        "signal": outcome.signal,
        "stdout": text(outcome.stdout),
        "stderr": text(outcome.stderr),
        "stdout_truncated": outcome.stdout_truncated or len(outcome.stdout) > cap,
        "stderr_truncated": outcome.stderr_truncated or len(outcome.stderr) > cap,
        "usage": outcome.usage.as_dict(),
        "timings": outcome.timings.as_dict(),
        "exceeded": sorted(outcome.exceeded),
        "error": outcome.error,
        "return_value": outcome.return_value,
        "handler_error": outcome.handler_error,
        "artifacts": outcome.artifacts,
    }


class Executions:
    def __init__(
        self,
        engine: Engine,
        store: Store | ClusterRecords,
        caps: RecordCaps,
        callback_policy: callbacks.CallbackPolicy,
        node: str = "local",
        queue: JobQueue | None = None,
    ) -> None:
        self.engine = engine
        self.store = store  # the records: SQLite, or Redis in cluster mode
        self.caps = caps
        self.callback_policy = callback_policy
        self.node = node
        self.queue = queue  # cluster mode: async work goes through the shared queue
        self._background = Background(log, "background execution work")
        self._writer = RecordWriter(store, self._background)

    async def _create(
        self, exec_id: str, dialect: str, job: Job, status: str, callback_url: str | None
    ) -> tuple[dict[str, Any], bool]:
        return await self.store.call(
            lambda: self.store.create_execution(
                exec_id,
                dialect=dialect,
                runtime=job.runtime,
                request=job_to_dict(job, self.caps),
                session_id=job.session,
                status=status,
                retention_s=self.caps.retention_s,
                callback_url=callback_url,
                node=self.node,
            )
        )

    async def run(
        self, exec_id: str, dialect: str, job: Job
    ) -> tuple[Outcome | None, dict[str, Any] | None]:
        """Run now and record it. A known execution_id is not run again: (None, record)."""
        record, created = await self._create(exec_id, dialect, job, "running", None)
        if not created:
            return None, record
        outcome = await self.engine.run(dataclasses.replace(job, id=exec_id))
        return outcome, await self._finish(exec_id, outcome)

    def record_only(self, exec_id: str, dialect: str, job: Job, outcome: Outcome) -> None:
        """Record an execution that already ran (dialects without ids of their own): it is
        made and written after the answer, in a batch (record_writer.py)."""
        end = time.time()
        self._writer.add(
            lambda: FinishedRecord(
                id=exec_id,
                dialect=dialect,
                runtime=job.runtime,
                session_id=job.session,
                request=job_to_dict(job, self.caps),
                status=record_status(outcome),
                result=outcome_to_dict(outcome, self.caps.max_output_bytes),
                started_at=end - outcome.timings.total_ms / 1000,
                finished_at=end,
                retention_s=self.caps.retention_s,
                node=self.node,
            )
        )

    async def submit(
        self, exec_id: str, dialect: str, job: Job, callback_url: str | None
    ) -> tuple[dict[str, Any], bool]:
        """Accept for a later run; the record is written before this returns, so an
        accepted execution survives a crash. (record, created)."""
        if callback_url:
            callbacks.check_url(callback_url, self.callback_policy)
        if self.queue is not None:
            # the whole code travels: another node may be the one to run it
            request = job_to_dict(job, dataclasses.replace(self.caps, max_code_bytes=1 << 62))
            return await self.queue.submit(
                exec_id, dialect, job, request, callback_url, self.caps.retention_s
            )
        record, created = await self._create(exec_id, dialect, job, "pending", callback_url)
        if created:
            self._background.spawn(self._run_async(exec_id, dataclasses.replace(job, id=exec_id)))
        return record, created

    async def _run_async(self, exec_id: str, job: Job) -> None:
        async def started() -> None:  # "running" only once it has a slot: see recover()
            await self.store.call(lambda: self.store.update_execution(exec_id, status="running"))

        outcome = await self.engine.run(job, on_start=started)
        await self._finish(exec_id, outcome)

    async def run_claimed(
        self,
        exec_id: str,
        record: dict[str, Any],
        start: Callable[[str], Awaitable[bool]],
    ) -> None:
        """Run a queued execution this node has claimed (its whole code is queued, see
        submit); `start` moves it pending -> running and says whether this node won it."""
        won = False

        async def started() -> bool:
            nonlocal won
            won = await start(exec_id)
            return won

        outcome = await self.engine.run(job_from_dict(record["request"], exec_id), on_start=started)
        if won:
            await self._finish(exec_id, outcome)

    async def interrupt(self, exec_id: str, why: str) -> None:
        await self.store.call(
            lambda: self.store.update_execution(exec_id, status="interrupted", error=why)
        )
        await self._maybe_call_back(exec_id)

    async def _finish(self, exec_id: str, outcome: Outcome) -> dict[str, Any] | None:
        """Record the outcome; the finished record (read once, for the callback too)."""
        result = outcome_to_dict(outcome, self.caps.max_output_bytes)
        status = record_status(outcome)
        await self.store.call(
            lambda: self.store.update_execution(exec_id, status=status, result=result)
        )
        return await self._maybe_call_back(exec_id)

    async def _maybe_call_back(self, exec_id: str) -> dict[str, Any] | None:
        """Send the record to its callback URL, if it has one; the record."""
        record = await self.store.call(self.store.get_execution, exec_id)
        if record is None or not record.get("callback_url"):
            return record

        async def note(attempt: int, code: int | None, error: str | None) -> None:
            await self.store.call(
                lambda: self.store.record_callback_attempt(exec_id, attempt, code, error)
            )

        payload = {k: record[k] for k in ("id", "session_id", "status", "result", "error")}
        payload["execution_id"] = payload.pop("id")
        self._background.spawn(
            callbacks.deliver(record["callback_url"], payload, self.callback_policy, note)
        )
        return record

    async def recover(self) -> dict[str, int]:
        """After a restart: re-run what never started, mark what was running interrupted."""
        rerun = interrupted = 0
        for rec in await self.store.call(self.store.unfinished):
            req = rec["request"]
            if rec["status"] == "pending" and not req.get("code_truncated"):
                job = job_from_dict(req, rec["id"])
                self._background.spawn(self._run_async(rec["id"], job))
                rerun += 1
            else:
                await self.interrupt(
                    rec["id"], WAS_RUNNING if rec["status"] == "running" else TOO_LARGE
                )
                interrupted += 1
        return {"rerun": rerun, "interrupted": interrupted}

    async def drain(self, timeout: float = 10.0) -> None:
        await self._background.wait(timeout)

    @property
    def active(self) -> int:
        return self.engine.stats.running + self.engine.stats.queued
