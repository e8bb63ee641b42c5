"""The node's connection to Redis, and what it last learned of Redis' health.

redis-py reconnects by itself on the next command; what it lacks is a memory that Redis
is down, so that while it is, each request fails fast instead of waiting for a connect
timeout. That is the small circuit breaker here.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import redis

T = TypeVar("T")
RETRY_S = 0.5  # while Redis is down, one call in this interval tries it again
PREFIX = "execbox:"


class RedisDown(Exception):
    """Redis cannot be reached; the message says what the client saw."""


class RedisLink:
    def __init__(self, url: str, timeout_s: float = 0.5, block_s: float = 1.0) -> None:
        self.url = url
        self.block_s = block_s
        opts: dict[str, Any] = {
            "socket_connect_timeout": timeout_s,
            "decode_responses": True,
            "health_check_interval": 5,
        }
        try:
            self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, **opts)
            # XREADGROUP BLOCK waits longer than a plain command may
            self.blocking = redis.Redis.from_url(url, socket_timeout=block_s + timeout_s, **opts)
        except ValueError as exc:
            raise ValueError(f"redis: {url!r} is not a Redis URL: {exc}") from None
        self.up = True
        self.error: str | None = None
        self._last_try = 0.0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(16, thread_name_prefix="execbox-redis")

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Call fn (which uses self.client) here; RedisDown if Redis cannot be reached."""
        with self._lock:
            if not self.up and time.monotonic() - self._last_try < RETRY_S:
                raise RedisDown(self.error or "redis is down")
            self._last_try = time.monotonic()
        try:
            result = fn(*args)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self.mark_down(exc)
            raise RedisDown(self.error or "redis is down") from None
        self.up, self.error = True, None
        return result

    def mark_down(self, exc: BaseException) -> None:
        self.up = False
        self.error = f"{type(exc).__name__}: {exc}"

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """fn through run(), in a thread: the event loop never waits on Redis."""
        return await self.in_thread(self.run, fn, *args)

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def ping(self) -> bool:
        try:
            self.run(self.client.ping)
        except RedisDown:
            return False
        return True

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
        self.blocking.close()
