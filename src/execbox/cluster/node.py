"""This node's part in a cluster: its heartbeat, the shared queue's consumer and reclaimer,
moving records kept locally during a Redis outage, and forwarding a session's requests to
the node that holds its workspace."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import socket
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from fastapi import Request
from fastapi.responses import Response

from execbox.api.errors import ApiError, Dialect
from execbox.cluster.link import PREFIX, RedisDown, RedisLink
from execbox.cluster.nodes import NodeInfo, Registry, best_for_new_session
from execbox.cluster.placement import Placement
from execbox.cluster.queue import JobQueue, session_lost
from execbox.cluster.records import ClusterRecords, RedisRecords
from execbox.config import Settings
from execbox.engine import Engine
from execbox.sessions import Sessions
from execbox.store.sqlite import Store

if TYPE_CHECKING:
    from execbox.executions import Executions

log = logging.getLogger("execbox.cluster")

TOKEN_KEY = PREFIX + "cluster:token"
FORWARDED_BY = "x-execbox-forwarded-by"
FORWARD_TOKEN = "x-execbox-cluster-token"
SERVED_BY = "X-Execbox-Node"
# headers that belong to one hop, or that the forwarding node sets itself
HOP = {
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "upgrade",
    "proxy-authorization",
    FORWARDED_BY,
    FORWARD_TOKEN,
}
RELAYED = ("content-type", "retry-after", "location", "x-request-id")


def node_id(settings: Settings) -> str:
    return settings.node_id or f"{socket.gethostname()}:{settings.port}"


def advertise_url(settings: Settings) -> str:
    if settings.advertise_url:
        return settings.advertise_url.rstrip("/")
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostbyname(socket.gethostname())
    return f"http://{host}:{settings.port}"


def masked(url: str) -> str:
    """The Redis URL without its password, for health and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


class Cluster:
    def __init__(
        self, settings: Settings, engine: Engine, local: Store, sessions: Sessions
    ) -> None:
        assert settings.redis_url
        self.settings = settings
        self.engine = engine
        self.sessions = sessions
        self.me = node_id(settings)
        self.url = advertise_url(settings)
        self.started_at = time.time()
        self.link = RedisLink(settings.redis_url)
        self.registry = Registry(self.link, settings.node_ttl_s)
        self.placement = Placement(self.link)
        self.records = ClusterRecords(RedisRecords(self.link, self.me), local)
        self.queue = JobQueue(
            self.link,
            self.me,
            self.records.redis,
            self.registry,
            self.placement,
            self.free_slots,
            settings.lease_s,
        )
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=2.0))
        self._token: str | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def attach(self, executions: Executions) -> None:
        self.queue.executions = executions

    def free_slots(self) -> int:
        s = self.engine.stats
        return self.settings.max_concurrency - s.running - s.queued

    def info(self) -> NodeInfo:
        s = self.engine.stats
        return NodeInfo(
            id=self.me,
            url=self.url,
            runtimes=list(self.settings.runtimes),
            capacity=self.settings.max_concurrency,
            running=s.running,
            queued=s.queued,
            started_at=self.started_at,
            heartbeat_at=time.time(),
            version=_version(),
        )

    # ---- life ------------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._join()
        except RedisDown as exc:  # a node starts without Redis, and joins when it is back
            log.warning("redis is down at start (%s); this node joins when it is back", exc)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._beat()),
            loop.create_task(self.queue.consume()),
            loop.create_task(self._reclaim()),
        ]

    async def _join(self) -> None:
        await self.link.call(self.queue.ensure_groups)
        await self.link.call(self.registry.beat, self.info())
        self._token = await self.link.call(self._cluster_token)
        # sessions this node held before it joined (in single-node mode) get their place
        held = await asyncio.to_thread(self.sessions.store.all_sessions)
        await self.link.call(self.placement.claim_all, held, self.me)
        moved = await self.records.call(self.records.sync_back)
        if moved:
            log.warning("moved %d records kept during a Redis outage to Redis", moved)

    def _cluster_token(self) -> str:
        """The secret nodes show each other when they forward, kept in Redis: whoever can
        read it is already inside the cluster's trust boundary."""
        r = self.link.client
        r.set(TOKEN_KEY, secrets.token_hex(32), nx=True)
        return str(r.get(TOKEN_KEY))

    async def _beat(self) -> None:
        was_up = self.link.up
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            try:
                if not was_up:
                    await self._join()
                    log.warning("redis is back; this node rejoined the cluster")
                else:
                    await self.link.call(self.registry.beat, self.info())
                was_up = True
            except RedisDown:
                was_up = False
            except Exception:  # a bug: keep beating, and say so
                log.exception("cluster heartbeat failed")

    async def _reclaim(self) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_s / 2)
            try:  # while Redis is down this fails at once (and forgets who seemed gone)
                await self.queue.reclaim()
            except RedisDown:
                pass
            except Exception:
                log.exception("reclaiming queued work failed")

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await self.queue.close()
        with contextlib.suppress(RedisDown):
            await self.link.call(self.registry.leave, self.me)
        await self.http.aclose()
        self.link.close()

    # ---- health ----------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "node": self.me,
            "url": self.url,
            "redis": {"url": masked(self.link.url), "up": True, "error": None},
        }
        try:
            nodes = await self.link.call(self.registry.alive)
        except RedisDown as exc:
            out["redis"].update(up=False, error=str(exc))
            nodes = [self.info()]
        out["nodes"] = [n.to_json() for n in nodes]
        out["nodes_alive"] = len(nodes)
        out["capacity"] = {
            "total": sum(n.capacity for n in nodes),
            "free": sum(n.free for n in nodes),
        }
        return out

    # ---- sessions --------------------------------------------------------------------------

    def is_forwarded(self, request: Request) -> bool:
        """A request another node of this cluster forwarded (and already counted)."""
        got = request.headers.get(FORWARD_TOKEN)
        return bool(got and self._token and hmac.compare_digest(got, self._token))

    async def route(
        self,
        request: Request,
        session_id: str,
        dialect: Dialect,
        *,
        place: bool,
        runtime: str | None = None,
    ) -> Response | None:
        """Where a session's request is served: None for here, or the owner's answer. With
        place, a session that has no home yet is placed on the node with the most room."""
        if self.is_forwarded(request):
            return None
        try:
            owner = await self.link.call(self.placement.owner, session_id)
            if owner is None:
                if not place:
                    return None  # unknown everywhere: answered here (404)
                nodes = await self.link.call(self.registry.alive)
                target = best_for_new_session(nodes, self.me, runtime)
                owner = await self.link.call(self.placement.claim, session_id, target)
            if owner == self.me:
                return None
            node = await self.link.call(self.registry.get, owner)
        except RedisDown as exc:
            # where sessions live is unknown: this node serves the ones it holds; any other
            # might live elsewhere, and must not start over here, empty
            if await asyncio.to_thread(self.sessions.store.get_session, session_id):
                return None
            raise ApiError(
                503,
                f"session {session_id!r} is not on this node, and where sessions live is "
                f"unknown while Redis is down ({exc}); try again",
                dialect,
                {"Retry-After": "1"},
            ) from None
        if node is None:
            raise ApiError(410, _lost(session_id, owner), dialect)
        return await self._forward(request, node, session_id, dialect)

    async def forget(self, session_id: str) -> None:
        """A deleted session leaves the placement (a lost one too: it may start over)."""
        try:
            await self.link.call(self.placement.release, session_id)
        except RedisDown:
            log.warning("redis is down: session %s keeps its placement for now", session_id)

    async def _forward(
        self, request: Request, node: NodeInfo, session_id: str, dialect: Dialect
    ) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        headers[FORWARDED_BY] = self.me
        if self._token:
            headers[FORWARD_TOKEN] = self._token
        url = node.url + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        try:
            resp = await self.http.request(
                request.method, url, content=await request.body(), headers=headers
            )
        except httpx.TransportError as exc:
            try:
                alive = await self.link.call(self.registry.is_alive, node.id)
            except RedisDown:
                alive = True
            if not alive:
                raise ApiError(410, _lost(session_id, node.id), dialect) from None
            raise ApiError(
                503,
                f"session {session_id!r} lives on node {node.id!r}, which cannot be reached "
                f"now ({type(exc).__name__}); try again",
                dialect,
                {"Retry-After": "1"},
            ) from None
        out = {k: v for k, v in resp.headers.items() if k.lower() in RELAYED}
        out[SERVED_BY] = node.id
        return Response(resp.content, status_code=resp.status_code, headers=out)


def _lost(session_id: str, node: str) -> str:
    return f"{session_lost(session_id, node)}; DELETE /sessions/{session_id} to start it again"


def _version() -> str:
    from execbox.api.common import VERSION

    return VERSION
