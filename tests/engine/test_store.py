"""The SQLite store: a real file in WAL mode, migrations, idempotent ids, expiry."""

from __future__ import annotations

import dataclasses
import sqlite3
import time

import pytest

from execbox.store.sqlite import MIGRATIONS, FinishedRecord, Store


def test_store_is_a_wal_file_with_migrations(tmp_path) -> None:
    path = tmp_path / "x.db"
    store = Store(path)
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT max(version) FROM schema_version").fetchone()[0] == len(MIGRATIONS)
    # opening again migrates nothing twice
    Store(path).close()
    assert db.execute("SELECT count(*) FROM schema_version").fetchone()[0] == len(MIGRATIONS)


def test_execution_ids_are_idempotent_and_records_update(tmp_path) -> None:
    store = Store(tmp_path / "x.db")
    rec, created = store.create_execution(
        "e1", dialect="executor", runtime="python", request={"code": "1"}, session_id="s",
        status="pending", retention_s=60,
    )  # fmt: skip
    assert created and rec["status"] == "pending"
    again, created = store.create_execution(
        "e1", dialect="executor", runtime="python", request={"code": "2"}, session_id="s",
        status="pending", retention_s=60,
    )  # fmt: skip
    assert not created and again["request"] == {"code": "1"}
    store.update_execution("e1", status="running")
    store.update_execution("e1", status="completed", result={"stdout": "x"})
    rec = store.get_execution("e1")
    assert rec["status"] == "completed" and rec["result"] == {"stdout": "x"}
    assert rec["started_at"] <= rec["finished_at"]
    rows, total = store.list_session_executions("s", 10, 0)
    assert total == 1 and rows[0]["id"] == "e1"


def test_records_expire_after_retention(tmp_path) -> None:
    store = Store(tmp_path / "x.db")
    store.create_execution(
        "old", dialect="zeroboot", runtime="python", request={}, session_id=None,
        status="pending", retention_s=1,
    )  # fmt: skip
    store.update_execution("old", status="completed", result={})
    assert store.expire(now=time.time()) == 0
    assert store.expire(now=time.time() + 5) == 1
    assert store.get_execution("old") is None


def test_finished_runs_are_inserted_whole_in_one_transaction(tmp_path) -> None:
    store = Store(tmp_path / "x.db")
    store.create_execution(
        "kept", dialect="executor", runtime="python", request={"code": "1"}, session_id=None,
        status="completed", retention_s=60,
    )  # fmt: skip
    now = time.time()

    def finished(i: str, status: str = "completed") -> FinishedRecord:
        return FinishedRecord(
            id=i, dialect="zeroboot", runtime="python", session_id=None,
            request={"code": f"print({i!r})"}, status=status, result={"stdout": i},
            started_at=now - 0.5, finished_at=now, retention_s=60, node="n1",
        )  # fmt: skip

    commits = []
    store._db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    store.record_finished([finished("a"), finished("b", "timeout"), finished("kept")])
    store._db.set_trace_callback(None)
    assert len(commits) == 1, commits
    a, b = store.get_execution("a"), store.get_execution("b")
    assert a is not None and b is not None
    assert (a["dialect"], a["status"], a["result"], a["node"]) == (
        "zeroboot",
        "completed",
        {"stdout": "a"},
        "n1",
    )
    assert a["request"] == {"code": "print('a')"} and b["status"] == "timeout"
    assert a["created_at"] == a["started_at"] == now - 0.5 and a["finished_at"] == now
    assert a["expires_at"] == now + 60
    # an id already recorded keeps its record
    kept = store.get_execution("kept")
    assert kept is not None and kept["dialect"] == "executor" and kept["result"] is None
    # a batch is all or nothing: a row SQLite cannot take undoes the rows before it
    unbindable = dataclasses.replace(finished("y"), node=["not", "a", "value"])  # type: ignore[arg-type]
    with pytest.raises(sqlite3.Error):
        store.record_finished([finished("x"), unbindable])
    assert store.get_execution("x") is None and store.get_execution("y") is None
    store.record_finished([finished("x")])  # and the store goes on
    assert store.get_execution("x") is not None
    store.close()
