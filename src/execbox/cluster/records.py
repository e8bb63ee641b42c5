"""Execution records in Redis, so that any node finds an execution that ran on any other.

A record is a hash, `execbox:exec:<id>`, with the fields of the SQLite table; its callback
attempts are a list beside it, and a session's executions a sorted set by creation time.
Every key expires at the record's expires_at, the SQLite store's retention rule.

While Redis is down a synchronous execution still runs; its record is kept in the node's
own SQLite store and moved to Redis once Redis is back (ClusterRecords.sync_back).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from execbox.cluster.link import PREFIX, RedisDown, RedisLink
from execbox.store.sqlite import FINAL_STATUSES, FinishedRecord, Store

T = TypeVar("T")
log = logging.getLogger("execbox.cluster")

FIELDS = (
    "id",
    "session_id",
    "dialect",
    "runtime",
    "status",
    "request",
    "result",
    "error",
    "callback_url",
    "node",
    "created_at",
    "started_at",
    "finished_at",
    "expires_at",
)
TIMES = ("created_at", "started_at", "finished_at", "expires_at")

# Atomic create-if-absent of a whole record, its place in the session's index and, for an
# async submission, its entry in a queue stream: an execution_id is accepted once in the
# whole cluster, and an accepted async execution is always queued.
CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('EXPIREAT', KEYS[1], ARGV[3])
if ARGV[2] ~= '' then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
  redis.call('EXPIREAT', KEYS[2], ARGV[3])
end
if ARGV[4] == '1' then
  redis.call('XADD', KEYS[3], '*', 'id', ARGV[1], 'session', ARGV[5])
end
return 1
"""
# Fields of a record that still exists (an expired record is not brought back half-made).
UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""
# pending -> running, once: the one node that wins this runs the job.
START = """
if redis.call('HGET', KEYS[1], 'status') ~= 'pending' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1], 'node', ARGV[2])
return 1
"""


def exec_key(exec_id: str) -> str:
    return f"{PREFIX}exec:{exec_id}"


def index_key(session_id: str) -> str:
    return f"{PREFIX}session-execs:{session_id}"


def _encode(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _decode(h: dict[str, str], attempts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in FIELDS:
        raw = h.get(name, "")
        if name in TIMES:
            out[name] = float(raw) if raw else None
        elif name in ("request", "result"):
            out[name] = json.loads(raw) if raw else None
        else:
            out[name] = raw or None
    out["callback_attempts"] = attempts
    return out


class RedisRecords:
    """The Store's execution methods, on Redis. Each raises RedisDown if it cannot reach it."""

    def __init__(self, link: RedisLink, node: str) -> None:
        self.link = link
        self.node = node
        r = link.client
        self._create = r.register_script(CREATE)
        self._update = r.register_script(UPDATE)
        self._start = r.register_script(START)

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
        stream: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        now = time.time()
        record = {
            "id": exec_id,
            "session_id": session_id,
            "dialect": dialect,
            "runtime": runtime,
            "status": status,
            "request": request,
            "callback_url": callback_url,
            "node": node or self.node,
            "created_at": now,
            "expires_at": now + retention_s,
        }
        return self.put(record, stream=stream)

    def put(
        self, record: dict[str, Any], overwrite: bool = False, stream: str | None = None
    ) -> tuple[dict[str, Any], bool]:
        """Create the record unless its id exists (or overwrite its fields): (the stored
        record, whether this call created it)."""
        flat: list[str] = []
        for name in FIELDS:
            if record.get(name) is not None:
                flat += [name, _encode(record[name])]
        key = exec_key(record["id"])
        session = record.get("session_id") or ""
        expires = int(record["expires_at"]) + 1
        made = self.link.run(
            self._create,
            [key, index_key(session) if session else key, stream or key],
            [
                record["id"],
                f"{record['created_at']}" if session else "",
                str(expires),
                "1" if stream else "0",
                session,
                *flat,
            ],
        )
        created = {**{f: None for f in FIELDS}, **record, "callback_attempts": []}
        if made:  # what was stored is this record: no read back
            return created, True
        if overwrite:
            self.link.run(self._update, [key], flat)
        stored = self.get_execution(record["id"])
        # None: expired at once, its retention shorter than a second
        return (stored if stored is not None else created), False

    def update_execution(
        self,
        exec_id: str,
        *,
        status: str,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        now = time.time()
        if status == "running":
            fields = ["status", status, "started_at", str(now), "node", self.node]
        else:
            fields = ["status", status, "finished_at", str(now)]
            fields += ["result", _encode(result), "error", _encode(error)]
        self.link.run(self._update, [exec_key(exec_id)], fields)

    def start(self, exec_id: str) -> bool:
        """pending -> running on this node, atomically; False if it was not pending."""
        return bool(self.link.run(self._start, [exec_key(exec_id)], [str(time.time()), self.node]))

    def get_execution(self, exec_id: str) -> dict[str, Any] | None:
        def read() -> tuple[dict[str, str], list[str]]:
            pipe = self.link.client.pipeline(transaction=False)
            pipe.hgetall(exec_key(exec_id))
            pipe.lrange(exec_key(exec_id) + ":callbacks", 0, -1)
            h, cbs = pipe.execute()
            return h, cbs

        h, cbs = self.link.run(read)
        if not h:
            return None
        return _decode(h, [json.loads(c) for c in cbs])

    def list_session_executions(
        self, session_id: str, limit: int, offset: int
    ) -> tuple[list[dict[str, Any]], int]:
        def read() -> tuple[list[dict[str, str]], int]:
            r = self.link.client
            ids = r.zrange(index_key(session_id), 0, -1)
            pipe = r.pipeline(transaction=False)
            for i in ids:
                pipe.exists(exec_key(i))
            gone = [i for i, alive in zip(ids, pipe.execute(), strict=True) if not alive]
            if gone:  # expired records leave the index too
                r.zrem(index_key(session_id), *gone)
            dropped = set(gone)
            live = [i for i in ids if i not in dropped]
            pipe = r.pipeline(transaction=False)
            for i in live[offset : offset + limit]:
                pipe.hgetall(exec_key(i))
            return [h for h in pipe.execute() if h], len(live)

        rows, total = self.link.run(read)
        return [_decode(h, []) for h in rows], total

    def record_callback_attempt(
        self, exec_id: str, attempt: int, status_code: int | None, error: str | None
    ) -> None:
        entry = {"attempt": attempt, "at": time.time(), "status_code": status_code, "error": error}

        def write() -> None:
            key = exec_key(exec_id) + ":callbacks"
            pipe = self.link.client.pipeline(transaction=False)
            pipe.rpush(key, json.dumps(entry))
            pipe.ttl(exec_key(exec_id))
            _, ttl = pipe.execute()
            if ttl > 0:
                self.link.client.expire(key, ttl)

        self.link.run(write)


class ClusterRecords:
    """What Executions and the record routes use in cluster mode: Redis first; the local
    SQLite store for synchronous records made while Redis was down."""

    def __init__(self, redis: RedisRecords, local: Store) -> None:
        self.redis = redis
        self.local = local
        # the ids held in the local store: one set lookup on the hot path, not a query
        self._local_ids = set(local.execution_ids())
        self._inflight: dict[str, dict[str, Any]] = {}  # create arguments, until finished

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.redis.link.in_thread(fn, *args)

    def _create_locally(self, exec_id: str, **kw: Any) -> tuple[dict[str, Any], bool]:
        self._local_ids.add(exec_id)
        return self.local.create_execution(exec_id, **kw)

    def create_execution(self, exec_id: str, **kw: Any) -> tuple[dict[str, Any], bool]:
        if exec_id in self._local_ids:
            return self.local.create_execution(exec_id, **kw)
        try:
            record, created = self.redis.create_execution(exec_id, **kw)
        except RedisDown:
            log.warning("redis is down: execution %s is recorded on this node", exec_id)
            return self._create_locally(exec_id, **kw)
        if created:
            self._inflight[exec_id] = kw
        return record, created

    def update_execution(self, exec_id: str, **kw: Any) -> None:
        if exec_id in self._local_ids:
            self.local.update_execution(exec_id, **kw)
            return
        try:
            self.redis.update_execution(exec_id, **kw)
        except RedisDown:
            made = self._inflight.get(exec_id)
            if made is None:
                raise
            # made in Redis, finished while it was down: keep it here until it is back
            self._create_locally(exec_id, **{**made, "status": "running"})
            self.local.update_execution(exec_id, **kw)
        if kw.get("status") in FINAL_STATUSES:
            self._inflight.pop(exec_id, None)

    def record_finished(self, records: list[FinishedRecord]) -> None:
        """Executions that already ran: each made and finished as a run of its own is, so
        that one recorded while Redis is down stays on this node until it is back."""
        for r in records:
            self.create_execution(
                r.id, dialect=r.dialect, runtime=r.runtime, request=r.request,
                session_id=r.session_id, status="running", retention_s=r.retention_s,
                node=r.node,
            )  # fmt: skip
            self.update_execution(r.id, status=r.status, result=r.result)

    def get_execution(self, exec_id: str) -> dict[str, Any] | None:
        if exec_id in self._local_ids:
            return self.local.get_execution(exec_id)
        return self.redis.get_execution(exec_id)

    def list_session_executions(
        self, session_id: str, limit: int, offset: int
    ) -> tuple[list[dict[str, Any]], int]:
        return self.redis.list_session_executions(session_id, limit, offset)

    def record_callback_attempt(self, exec_id: str, *args: Any) -> None:
        if exec_id in self._local_ids:
            self.local.record_callback_attempt(exec_id, *args)
        else:
            self.redis.record_callback_attempt(exec_id, *args)

    def unfinished(self) -> list[dict[str, Any]]:
        # only the local fallbacks: Redis' unfinished records are the queue's to recover
        return self.local.unfinished()

    def sync_back(self) -> int:
        """Move finished local records to Redis; how many moved. RedisDown if it is down."""
        moved = 0
        for rec in self.local.finished_executions():
            rec = dict(rec)
            attempts = rec.pop("callback_attempts")
            self.redis.put(rec, overwrite=True)
            for a in attempts:
                self.redis.record_callback_attempt(
                    rec["id"], a["attempt"], a["status_code"], a["error"]
                )
            self.local.delete_execution(rec["id"])
            self._local_ids.discard(rec["id"])
            moved += 1
        return moved
