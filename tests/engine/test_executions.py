"""Execution records: idempotent ids, async runs, and recovery of what a crash left."""

from __future__ import annotations

import asyncio
import logging
import secrets
import sqlite3
import time

import pytest

from execbox import executions
from execbox.background import Background
from execbox.callbacks import CallbackPolicy
from execbox.executions import Executions, RecordCaps, job_to_dict
from execbox.jobs import Job, Outcome, Status, Timings
from execbox.record_writer import RecordWriter
from execbox.store.sqlite import FinishedRecord, Store


@pytest.fixture(scope="module")
def ex(engine) -> Executions:
    caps = RecordCaps(retention_s=3600, max_code_bytes=1 << 16, max_output_bytes=1 << 16)
    return Executions(engine.engine, engine.store, caps, CallbackPolicy())


def eid() -> str:
    return "e-" + secrets.token_hex(6)


def test_run_records_and_never_runs_an_id_twice(engine, ex) -> None:
    i = eid()
    job = Job(runtime="python", code="import secrets; print(secrets.token_hex(8))")
    outcome, record = engine.call(ex.run(i, "executor", job))
    assert outcome is not None and record["status"] == "completed"
    assert record["result"]["stdout"] == outcome.stdout.decode()
    again, record2 = engine.call(ex.run(i, "executor", job))
    assert again is None  # not run again
    assert record2["result"]["stdout"] == record["result"]["stdout"]


def test_async_submission_moves_to_completed(engine, ex) -> None:
    i = eid()
    job = Job(runtime="python", code="import time; time.sleep(0.3); print('done')")
    record, created = engine.call(ex.submit(i, "executor", job, None))
    assert created and record["status"] == "pending"
    seen = set()
    deadline = time.monotonic() + 10
    while True:
        rec = engine.store.get_execution(i)
        seen.add(rec["status"])
        if rec["status"] == "completed":
            break
        assert time.monotonic() < deadline, seen
        time.sleep(0.02)
    assert "running" in seen and rec["result"]["stdout"] == "done\n"


def test_recovery_reruns_pending_and_interrupts_running(engine, ex) -> None:
    pending, running = eid(), eid()
    job = Job(runtime="python", code="print('recovered')")
    for i, status in ((pending, "pending"), (running, "running")):
        engine.store.create_execution(
            i, dialect="executor", runtime="python", request=job_to_dict(job, ex.caps),
            session_id=None, status=status, retention_s=60,
        )  # fmt: skip
    counts = engine.call(ex.recover())
    assert counts["rerun"] >= 1 and counts["interrupted"] >= 1
    deadline = time.monotonic() + 10
    while engine.store.get_execution(pending)["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert engine.store.get_execution(pending)["result"]["stdout"] == "recovered\n"
    rec = engine.store.get_execution(running)
    assert rec["status"] == "interrupted" and "may already have had effects" in rec["error"]


def test_runs_without_ids_are_recorded_after_the_answer_in_batches(
    engine, ex, tmp_path, caplog, monkeypatch
) -> None:
    """ZeroBoot and Faber runs: the record is made and written once the caller's step is
    over (the answer has gone), with every record that came meanwhile, in one store call; a
    batch the store refuses is logged, and the next one is written."""
    store = Store(tmp_path / "batches.db")
    batches: list[list[str]] = []
    insert = store.record_finished

    def record_finished(records: list[FinishedRecord]) -> None:
        batches.append([r.id for r in records])
        if len(batches) == 1:
            raise sqlite3.OperationalError("disk I/O error")
        insert(records)

    store.record_finished = record_finished  # type: ignore[method-assign]
    made: list[Outcome] = []  # outcomes turned into records (their output decoded)
    to_dict = executions.outcome_to_dict
    monkeypatch.setattr(
        executions, "outcome_to_dict", lambda o, cap: made.append(o) or to_dict(o, cap)
    )
    writer = Executions(engine.engine, store, ex.caps, CallbackPolicy())
    job = Job(runtime="python", code="print('x')")
    outcome = Outcome(Status.SUCCESS, exit_code=0, stdout=b"x\n", timings=Timings(total_ms=250))
    lost, kept = [eid() for _ in range(4)], [eid() for _ in range(6)]

    async def scenario() -> tuple[list[list[str]], int]:
        for i in lost:
            writer.record_only(i, "zeroboot", job, outcome)
        before_the_answer = (list(batches), len(made))
        await writer.drain()
        for i in kept:
            writer.record_only(i, "faber", job, outcome)
        await writer.drain()
        return before_the_answer

    with caplog.at_level(logging.ERROR, logger="execbox.records"):
        assert engine.call(scenario()) == ([], 0)
    assert len(made) == 10
    assert batches == [lost, kept]
    assert "4 execution records could not be written" in caplog.text
    assert all(store.get_execution(i) is None for i in lost)
    for i in kept:
        rec = store.get_execution(i)
        assert rec is not None and (rec["dialect"], rec["status"]) == ("faber", "completed")
        assert rec["result"]["stdout"] == "x\n" and rec["request"]["code"] == "print('x')"
        assert abs(rec["finished_at"] - rec["started_at"] - 0.25) < 1e-3
    store.close()


def test_a_record_that_cannot_be_made_does_not_hold_up_the_others(tmp_path, caplog) -> None:
    """One run's record raising while it is made (a bug in turning its outcome into what is
    stored) is logged; the records of its batch and of every later batch are written."""
    store = Store(tmp_path / "made.db")
    now = time.time()

    def record(i: str) -> FinishedRecord:
        return FinishedRecord(
            id=i, dialect="zeroboot", runtime="python", session_id=None, request={},
            status="completed", result={}, started_at=now, finished_at=now, retention_s=60,
        )  # fmt: skip

    def broken() -> FinishedRecord:
        raise ValueError("cannot be made")

    async def scenario() -> None:
        background = Background(logging.getLogger("test"), "records")
        writer = RecordWriter(store, background)
        writer.add(lambda: record("a"))
        writer.add(broken)
        writer.add(lambda: record("b"))
        await background.wait(5)
        writer.add(lambda: record("c"))
        await background.wait(5)

    with caplog.at_level(logging.ERROR, logger="execbox.records"):
        asyncio.run(scenario())
    assert "an execution record could not be made" in caplog.text
    assert all(store.get_execution(i) is not None for i in "abc")
    store.close()
