"""Execution records and sessions in SQLite: a real file, WAL mode, numbered migrations.

All calls are synchronous and short; the API runs them in a thread (see Store.call) so
the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

MIGRATIONS: list[str] = [
    # 1: executions and sessions
    """
    CREATE TABLE executions (
        id TEXT PRIMARY KEY,
        session_id TEXT,
        dialect TEXT NOT NULL,
        runtime TEXT NOT NULL,
        status TEXT NOT NULL,
        request TEXT NOT NULL,
        result TEXT,
        error TEXT,
        callback_url TEXT,
        node TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        expires_at REAL NOT NULL
    );
    CREATE INDEX executions_session ON executions (session_id, created_at);
    CREATE INDEX executions_status ON executions (status);
    CREATE INDEX executions_expiry ON executions (expires_at);
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        uid INTEGER NOT NULL UNIQUE,
        quota_bytes INTEGER NOT NULL,
        created_at REAL NOT NULL,
        last_used REAL NOT NULL,
        node TEXT
    );
    CREATE TABLE callback_attempts (
        execution_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        at REAL NOT NULL,
        status_code INTEGER,
        error TEXT,
        PRIMARY KEY (execution_id, attempt)
    );
    """,
]

FINAL_STATUSES = ("completed", "failed", "timeout", "interrupted")


@dataclass(frozen=True)
class FinishedRecord:
    """An execution that already ran, recorded whole (Store.record_finished)."""

    id: str
    dialect: str
    runtime: str
    session_id: str | None
    request: dict[str, Any]
    status: str
    result: dict[str, Any]
    started_at: float
    finished_at: float
    retention_s: float
    node: str | None = None


@dataclass
class SessionRow:
    id: str
    uid: int
    quota_bytes: int
    created_at: float
    last_used: float


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._lock = threading.Lock()
        # one thread: SQLite serialises writers anyway, and order of writes is kept
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="execbox-store")
        self.migrate()

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._db.close()

    def migrate(self) -> int:
        with self._lock:
            self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER)")
            row = self._db.execute("SELECT max(version) FROM schema_version").fetchone()
            current = row[0] or 0
            for version, sql in enumerate(MIGRATIONS, start=1):
                if version <= current:
                    continue
                with self._transaction():
                    for stmt in sql.split(";"):
                        if stmt.strip():
                            self._db.execute(stmt)
                    self._db.execute("INSERT INTO schema_version VALUES (?)", (version,))
            return len(MIGRATIONS)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One transaction (the connection autocommits otherwise); the caller holds the
        lock."""
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ---- executions ----------------------------------------------------------------------

    def create_execution(
        self,
        exec_id: str,
        *,
        dialect: str,
        runtime: str,
        request: dict[str, Any],
        session_id: str | None,
        status: str,
        retention_s: float,
        callback_url: str | None = None,
        node: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Insert a record, or return the existing one. (record, created)."""
        now = time.time()
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO executions (id, session_id, dialect, runtime, status,"
                " request, callback_url, node, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    exec_id,
                    session_id,
                    dialect,
                    runtime,
                    status,
                    json.dumps(request),
                    callback_url,
                    node,
                    now,
                    now + retention_s,
                ),
            )
            created = cur.rowcount == 1
        record = self.get_execution(exec_id)
        assert record is not None
        return record, created

    def record_finished(self, records: list[FinishedRecord]) -> None:
        """Insert executions that already ran, finished, in one transaction: the dialects
        without ids of their own record every run, and a commit per run (its WAL frames
        for the table and each index) cost more than the insert. An id already recorded
        keeps its record."""
        rows = [
            (r.id, r.session_id, r.dialect, r.runtime, r.status, json.dumps(r.request),
             json.dumps(r.result), r.node, r.started_at, r.started_at, r.finished_at,
             r.finished_at + r.retention_s)
            for r in records
        ]  # fmt: skip
        with self._lock, self._transaction():
            self._db.executemany(
                "INSERT OR IGNORE INTO executions (id, session_id, dialect, runtime, status,"
                " request, result, node, created_at, started_at, finished_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def update_execution(
        self,
        exec_id: str,
        *,
        status: str,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        now = time.time()
        with self._lock:
            if status == "running":
                self._db.execute(
                    "UPDATE executions SET status=?, started_at=? WHERE id=?",
                    (status, now, exec_id),
                )
            else:
                self._db.execute(
                    "UPDATE executions SET status=?, result=?, error=?, finished_at=?"
                    " WHERE id=?",
                    (status, json.dumps(result) if result is not None else None, error, now,
                     exec_id),
                )  # fmt: skip

    def get_execution(self, exec_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM executions WHERE id=?", (exec_id,)).fetchone()
            if row is None:
                return None
            return _record(row, self._attempts(exec_id))

    def _attempts(self, exec_id: str) -> list[dict[str, Any]]:
        """An execution's callback attempts (the caller holds the lock)."""
        rows = self._db.execute(
            "SELECT attempt, at, status_code, error FROM callback_attempts"
            " WHERE execution_id=? ORDER BY attempt",
            (exec_id,),
        ).fetchall()
        return [dict(a) for a in rows]

    def list_session_executions(
        self, session_id: str, limit: int, offset: int
    ) -> tuple[list[dict[str, Any]], int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM executions WHERE session_id=? ORDER BY created_at, id"
                " LIMIT ? OFFSET ?",
                (session_id, limit, offset),
            ).fetchall()
            total = self._db.execute(
                "SELECT count(*) FROM executions WHERE session_id=?", (session_id,)
            ).fetchone()[0]
        return [_record(r, []) for r in rows], total

    def unfinished(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM executions WHERE status IN ('pending', 'running')"
                " ORDER BY created_at"
            ).fetchall()
        return [_record(r, []) for r in rows]

    def finished_executions(self, limit: int = 500) -> list[dict[str, Any]]:
        with self._lock:
            marks = ",".join("?" * len(FINAL_STATUSES))
            rows = self._db.execute(
                f"SELECT * FROM executions WHERE status IN ({marks}) ORDER BY created_at LIMIT ?",
                (*FINAL_STATUSES, limit),
            ).fetchall()
            return [_record(r, self._attempts(r["id"])) for r in rows]

    def execution_ids(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT id FROM executions")]

    def delete_execution(self, exec_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM callback_attempts WHERE execution_id=?", (exec_id,))
            self._db.execute("DELETE FROM executions WHERE id=?", (exec_id,))

    def record_callback_attempt(
        self, exec_id: str, attempt: int, status_code: int | None, error: str | None
    ) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO callback_attempts VALUES (?, ?, ?, ?, ?)",
                (exec_id, attempt, time.time(), status_code, error),
            )

    def expire(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        with self._lock:
            ids = [
                r[0]
                for r in self._db.execute(
                    "SELECT id FROM executions WHERE expires_at < ? AND status IN"
                    " ('completed', 'failed', 'timeout', 'interrupted')",
                    (now,),
                )
            ]
            for i in ids:
                self._db.execute("DELETE FROM callback_attempts WHERE execution_id=?", (i,))
                self._db.execute("DELETE FROM executions WHERE id=?", (i,))
        return len(ids)

    # ---- sessions ------------------------------------------------------------------------

    def get_session(self, session_id: str) -> SessionRow | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM sessions WHERE id=?", (session_id,)).fetchone()
        return SessionRow(**{k: row[k] for k in SessionRow.__dataclass_fields__}) if row else None

    def create_session(
        self, session_id: str, uid_base: int, uid_count: int, quota: int
    ) -> SessionRow:
        """Create the session with the lowest free uid of the range (or return it)."""
        now = time.time()
        with self._lock:
            row = self._db.execute("SELECT * FROM sessions WHERE id=?", (session_id,)).fetchone()
            if row is None:
                used = {r[0] for r in self._db.execute("SELECT uid FROM sessions")}
                uid = next(
                    (u for u in range(uid_base, uid_base + uid_count) if u not in used), None
                )
                if uid is None:
                    raise RuntimeError("no free session uid: too many sessions")
                self._db.execute(
                    "INSERT INTO sessions (id, uid, quota_bytes, created_at, last_used)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (session_id, uid, quota, now, now),
                )
        found = self.get_session(session_id)
        assert found is not None
        return found

    def touch_session(self, session_id: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE sessions SET last_used=? WHERE id=?", (time.time(), session_id)
            )

    def delete_session(self, session_id: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM sessions WHERE id=?", (session_id,)).rowcount == 1

    def idle_sessions(self, older_than: float) -> list[str]:
        with self._lock:
            return [
                r[0]
                for r in self._db.execute(
                    "SELECT id FROM sessions WHERE last_used < ?", (older_than,)
                )
            ]

    def all_sessions(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT id FROM sessions")]


def _record(row: sqlite3.Row, attempts: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(row)
    out["request"] = json.loads(out["request"])
    out["result"] = json.loads(out["result"]) if out["result"] else None
    out["callback_attempts"] = attempts
    return out
