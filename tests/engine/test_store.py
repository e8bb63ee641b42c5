"""The SQLite store: a real file in WAL mode, migrations, idempotent ids, expiry."""

from __future__ import annotations

import sqlite3
import time

from execbox.store.sqlite import MIGRATIONS, Store


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
