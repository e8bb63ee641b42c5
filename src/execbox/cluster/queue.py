"""The async queue on Redis Streams, with one consumer group shared by every node.

- `execbox:queue:any` holds work any node may take: an execution whose session has no
  home yet. The node that takes it places the session on itself.
- `execbox:queue:node:<id>` holds work for the sessions that live on node <id>.

A node reads both with XREADGROUP, never more entries than it has free slots. Running an
execution takes a lease, `execbox:lease:<id>` (SET NX with a TTL that its holder renews),
and the record's pending -> running step is a compare-and-set: so a job is never run twice
at once. An entry whose holder died stays unacknowledged; once its lease has lapsed another
node claims it (XAUTOCLAIM) and applies the single-node rule: what never started is run,
what was running is marked interrupted. Work queued for a dead node's sessions cannot run
anywhere else, as their workspaces died with it: it is marked interrupted (session lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis

from execbox.background import Background
from execbox.cluster.link import PREFIX, RedisDown, RedisLink
from execbox.cluster.nodes import Registry
from execbox.cluster.placement import Placement
from execbox.cluster.records import RedisRecords
from execbox.jobs import Job
from execbox.store.sqlite import FINAL_STATUSES

if TYPE_CHECKING:
    from execbox.executions import Executions

log = logging.getLogger("execbox.cluster")

ANY = PREFIX + "queue:any"
STREAMS = PREFIX + "queue:nodes"  # node ids whose stream may hold work
GROUP = "execbox"

# renew only our own lease; let go only of our own
RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""
RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


def node_stream(node_id: str) -> str:
    return f"{PREFIX}queue:node:{node_id}"


def lease_key(exec_id: str) -> str:
    return f"{PREFIX}lease:{exec_id}"


WAS_RUNNING = (
    "the node running this execution stopped; it was not re-run because it may already "
    "have had effects"
)


def session_lost(session: str, node: str) -> str:
    return (
        f"session_lost: session {session!r} lived on node {node!r}, which is gone, and its "
        "workspace with it"
    )


class JobQueue:
    def __init__(
        self,
        link: RedisLink,
        me: str,
        records: RedisRecords,
        registry: Registry,
        placement: Placement,
        free_slots: Callable[[], int],
        lease_s: float,
    ) -> None:
        self.link = link
        self.me = me
        self.records = records
        self.registry = registry
        self.placement = placement
        self.free_slots = free_slots
        self.lease_ms = int(lease_s * 1000)
        self.executions: Executions | None = None
        self._renew = link.client.register_script(RENEW)
        self._release = link.client.register_script(RELEASE)
        self._missing_since: dict[str, float] = {}  # node -> when first seen gone
        self._taking = 0  # entries read but not yet holding an engine slot
        self._background = Background(log, "queued execution work")

    # ---- submitting ------------------------------------------------------------------------

    async def submit(
        self,
        exec_id: str,
        dialect: str,
        job: Job,
        request: dict[str, Any],
        callback_url: str | None,
        retention_s: float,
    ) -> tuple[dict[str, Any], bool]:
        """Record and queue in one step (RedisDown if Redis is down: nothing was accepted)."""

        def submit() -> tuple[dict[str, Any], bool]:  # one trip to a thread, not three
            owner = self.placement.owner(job.session) if job.session is not None else None
            if owner:
                self.link.run(self.link.client.sadd, STREAMS, owner)
            return self.records.create_execution(
                exec_id,
                dialect=dialect,
                runtime=job.runtime,
                request=request,
                session_id=job.session,
                status="pending",
                retention_s=retention_s,
                callback_url=callback_url,
                stream=node_stream(owner) if owner else ANY,
            )

        return await self.link.call(submit)

    # ---- consuming -------------------------------------------------------------------------

    def ensure_groups(self) -> None:
        self.link.client.sadd(STREAMS, self.me)
        for stream in (ANY, node_stream(self.me)):
            self._group(stream)

    def _group(self, stream: str) -> None:
        """The consumer group on a stream (made with the stream if need be), once."""
        try:
            self.link.client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _read(self, count: int) -> list[Any]:
        try:
            return self.link.blocking.xreadgroup(
                GROUP,
                self.me,
                {node_stream(self.me): ">", ANY: ">"},
                count=count,
                block=int(self.link.block_s * 1000),
            )
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.ensure_groups()  # Redis restarted empty: the groups are made again
            return []

    async def consume(self) -> None:
        while True:
            free = self.free_slots() - self._taking
            if free <= 0:
                await asyncio.sleep(0.05)
                continue
            try:
                got = await self.link.call(self._read, free)
            except RedisDown:
                await asyncio.sleep(0.5)
                continue
            except Exception:  # a bug: keep consuming, and say so
                log.exception("reading the queue failed")
                await asyncio.sleep(1)
                continue
            for stream, entries in got or []:
                for entry_id, fields in entries:
                    self._taking += 1
                    self._background.spawn(self.handle(stream, entry_id, fields, taking=True))

    async def reclaim(self) -> None:
        """Take over what dead nodes left: entries whose lease lapsed, and dead nodes'
        streams."""
        try:
            claimable = await self.link.call(self._claimable)
        except RedisDown:
            self._missing_since.clear()  # what was seen before the outage says nothing now
            raise
        for stream, entries in claimable:
            for entry_id, fields in entries:
                self._background.spawn(self.handle(stream, entry_id, fields))

    def _claimable(self) -> list[tuple[str, list[Any]]]:
        r = self.link.client
        out: list[tuple[str, list[Any]]] = []
        for stream in (ANY, node_stream(self.me)):
            _, claimed, _ = r.xautoclaim(stream, GROUP, self.me, self.lease_ms, "0-0", count=100)
            out.append((stream, claimed))
        now = time.monotonic()
        for node in sorted(r.smembers(STREAMS)):
            if node == self.me or self.registry.is_alive(node):
                self._missing_since.pop(node, None)
                continue
            # gone for a whole TTL as this node saw it with Redis up: after a Redis restart
            # every key has lapsed, and the living must have a beat to say so
            first = self._missing_since.setdefault(node, now)
            if now - first < self.registry.ttl_s:
                continue
            stream = node_stream(node)
            if not r.exists(stream):
                r.srem(STREAMS, node)
                continue
            self._group(stream)
            _, claimed, _ = r.xautoclaim(stream, GROUP, self.me, 0, "0-0", count=100)
            fresh = r.xreadgroup(GROUP, self.me, {stream: ">"}, count=100)
            entries = claimed + [e for _, es in fresh or [] for e in es]
            if entries:
                out.append((stream, entries))
            elif not r.xpending(stream, GROUP)["pending"]:
                # all handled: the dead node's stream goes (it is made again if it returns)
                r.delete(stream)
                r.srem(STREAMS, node)
        return out

    async def handle(
        self, stream: str, entry_id: str, fields: dict[str, str], taking: bool = False
    ) -> None:
        exec_id = fields.get("id", "")
        session = fields.get("session") or None
        token = secrets.token_hex(8)
        holding = False
        counted = [taking]

        def taken() -> None:  # this entry no longer waits for a slot of its own
            if counted[0]:
                counted[0] = False
                self._taking -= 1

        try:
            holding = bool(
                await self.link.call(
                    lambda: self.link.client.set(
                        lease_key(exec_id), token, nx=True, px=self.lease_ms
                    )
                )
            )
            if holding:  # else another node holds it; its XACK clears this entry
                await self._handle(stream, entry_id, exec_id, session, token, taken)
        except RedisDown:
            # left unacknowledged: it is claimed again once Redis and the lease allow
            log.warning("redis went down while handling queued execution %s", exec_id)
        finally:
            taken()
            if holding:
                with contextlib.suppress(RedisDown):  # else it lapses by itself
                    await self.link.call(self._release, [lease_key(exec_id)], [token])

    async def _handle(
        self, stream: str, entry_id: str, exec_id: str, session: str | None, token: str,
        taken: Callable[[], None],
    ) -> None:  # fmt: skip
        assert self.executions is not None
        execs = self.executions
        rec = await self.link.call(self.records.get_execution, exec_id)
        home = stream.removeprefix(PREFIX + "queue:node:") if stream != ANY else None

        async def ack() -> None:
            await self.link.call(self.link.client.xack, stream, GROUP, entry_id)

        if rec is None or rec["status"] in FINAL_STATUSES:
            return await ack()
        if rec["status"] == "running":
            await execs.interrupt(exec_id, WAS_RUNNING)
            return await ack()
        if home is not None and home != self.me:
            await execs.interrupt(exec_id, session_lost(session or "?", home))
            return await ack()
        if home is None and session is not None:
            owner = await self.link.call(self.placement.claim, session, self.me)
            if owner != self.me:
                if await self.link.call(self.registry.is_alive, owner):
                    await self.link.call(self._move, stream, entry_id, owner, exec_id, session)
                else:
                    await execs.interrupt(exec_id, session_lost(session, owner))
                return await ack()
        taken()
        renewer = asyncio.get_running_loop().create_task(self._keep(exec_id, token))
        try:
            await execs.run_claimed(exec_id, rec, self._start)
        finally:
            renewer.cancel()
        await ack()

    def _move(self, stream: str, entry_id: str, owner: str, exec_id: str, session: str) -> None:
        pipe = self.link.client.pipeline(transaction=True)
        pipe.sadd(STREAMS, owner)
        pipe.xadd(node_stream(owner), {"id": exec_id, "session": session})
        pipe.xack(stream, GROUP, entry_id)
        pipe.execute()

    async def _start(self, exec_id: str) -> bool:
        try:
            return await self.link.call(self.records.start, exec_id)
        except RedisDown:
            return False  # it stays pending and queued; it runs once Redis is back

    async def _keep(self, exec_id: str, token: str) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            try:
                await self.link.call(self._renew, [lease_key(exec_id)], [token, self.lease_ms])
            except RedisDown:
                continue

    async def close(self, timeout: float = 5.0) -> None:
        """Let what runs finish for a while; what is cut short is claimed by another node."""
        await self._background.wait(timeout)
        self._background.cancel()
