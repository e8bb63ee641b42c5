"""Rate limits per API key (per client IP in open mode), with the X-RateLimit-* headers."""

from __future__ import annotations

import math
import time

from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from execbox.api.auth import Identity
from execbox.api.errors import ApiError, Dialect


class RateLimiter:
    def __init__(self, rate: str) -> None:
        self.item = parse(rate)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    def hit(self, who: Identity, dialect: Dialect) -> dict[str, str]:
        """Count one request; the headers to send, or ApiError(429) with them."""
        bucket = f"key:{who.key}" if who.key is not None else f"ip:{who.client_ip}"
        allowed = self.limiter.hit(self.item, bucket)
        stats = self.limiter.get_window_stats(self.item, bucket)
        headers = {
            "X-RateLimit-Limit": str(self.item.amount),
            "X-RateLimit-Remaining": str(max(0, stats.remaining)),
            "X-RateLimit-Reset": str(math.ceil(stats.reset_time)),
        }
        if not allowed:
            retry = max(1, math.ceil(stats.reset_time - time.time()))
            headers["Retry-After"] = str(retry)
            raise ApiError(429, "Too many requests, please try again later", dialect, headers)
        return headers
