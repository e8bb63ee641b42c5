"""Execution records: idempotent ids, async runs, and recovery of what a crash left."""

from __future__ import annotations

import secrets
import time

import pytest

from execbox.callbacks import CallbackPolicy
from execbox.executions import Executions, RecordCaps, job_to_dict
from execbox.jobs import Job


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
