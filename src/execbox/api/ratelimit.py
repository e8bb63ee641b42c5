"""Rate limits per API key (per client IP in open mode), with the X-RateLimit-* headers.

With a Redis URL the counts live in Redis (the `limits` library's own storage), so a key's
limit holds across every node of a cluster. While Redis cannot be reached each node counts
alone, and goes back to the shared counts by itself.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time

from limits import parse
from limits.storage import MemoryStorage, RedisStorage
from limits.strategies import MovingWindowRateLimiter

from execbox.api.auth import Identity
from execbox.api.errors import ApiError, Dialect

log = logging.getLogger("execbox.api")
RETRY_S = 1.0  # after Redis failed, how long the node counts alone before trying it again
# the limiter is called on the event loop: a Redis that does not answer must not stall it
REDIS_TIMEOUT_S = 0.25


class InlineExpiryMemoryStorage(MemoryStorage):
    """limits' MemoryStorage, with its expiry run inline at most once a second.

    The library expires old entries on a threading.Timer of 10 ms, started again by the
    next hit whenever the last one has ended: at a few requests a second that is a new
    thread per request, ~0.18 ms of the event loop's time each (measured; 8 us without).
    This runs the library's own expiry instead. It names two private methods of
    limits==5.8.0 (pinned in pyproject.toml); tests/api/test_ratelimit.py checks that hits
    start no thread and that old entries are still dropped."""

    EXPIRE_EVERY_S = 1.0

    def __init__(self) -> None:
        super().__init__()
        self._next_expiry = 0.0

    def _MemoryStorage__schedule_expiry(self) -> None:
        now = time.monotonic()
        if now >= self._next_expiry:
            self._next_expiry = now + self.EXPIRE_EVERY_S
            self._MemoryStorage__expire_events()  # type: ignore[attr-defined]


class RateLimiter:
    def __init__(self, rate: str, redis_url: str | None = None) -> None:
        self.item = parse(rate)
        self.local = MovingWindowRateLimiter(InlineExpiryMemoryStorage())
        self.shared: MovingWindowRateLimiter | None = None
        if redis_url:
            storage = RedisStorage(
                redis_url,
                wrap_exceptions=True,
                socket_timeout=REDIS_TIMEOUT_S,
                socket_connect_timeout=REDIS_TIMEOUT_S,
            )
            self.shared = MovingWindowRateLimiter(storage)
        self._shared_failed_at = -math.inf

    def _count(self, bucket: str) -> tuple[bool, float, int]:
        if self.shared is not None and time.monotonic() - self._shared_failed_at > RETRY_S:
            try:
                allowed = self.shared.hit(self.item, bucket)
                stats = self.shared.get_window_stats(self.item, bucket)
                return allowed, stats.reset_time, stats.remaining
            except Exception as exc:  # limits wraps every storage failure
                log.warning("rate limits: redis failed (%s); counting on this node alone", exc)
                self._shared_failed_at = time.monotonic()
        allowed = self.local.hit(self.item, bucket)
        stats = self.local.get_window_stats(self.item, bucket)
        return allowed, stats.reset_time, stats.remaining

    def hit(self, who: Identity, dialect: Dialect) -> dict[str, str]:
        """Count one request; the headers to send, or ApiError(429) with them."""
        # a key is hashed: with a Redis storage the bucket names leave this process
        key = who.key
        bucket = f"key:{hashlib.sha256(key.encode()).hexdigest()[:32]}" if key else None
        bucket = bucket or f"ip:{who.client_ip}"
        allowed, reset_time, remaining = self._count(bucket)
        headers = {
            "X-RateLimit-Limit": str(self.item.amount),
            "X-RateLimit-Remaining": str(max(0, remaining)),
            "X-RateLimit-Reset": str(math.ceil(reset_time)),
        }
        if not allowed:
            retry = max(1, math.ceil(reset_time - time.time()))
            headers["Retry-After"] = str(retry)
            raise ApiError(429, "Too many requests, please try again later", dialect, headers)
        return headers
