"""Result callbacks: a POST of the execution record to the client's callback_url, signed
with HMAC-SHA256 over the exact body, retried with backoff, every attempt recorded.

Only hosts on the configured allow-list may be called back, and an address that resolves
to loopback, private, link-local or otherwise internal ranges is refused unless the
allow-list names it explicitly, so a callback cannot be aimed at the server's own network.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

SIGNATURE_HEADER = "X-Execbox-Signature"
TIMESTAMP_HEADER = "X-Execbox-Timestamp"


class CallbackRefused(ValueError):
    """The callback_url is not allowed; the message says why."""


@dataclass(frozen=True)
class CallbackPolicy:
    allowed_hosts: tuple[str, ...] = ()  # host or host:port; "*" allows any public host
    secret: str = ""
    attempts: int = 5
    backoff_s: float = 0.5  # doubles each retry
    timeout_s: float = 10.0


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def _internal(addr: str) -> bool:
    ip = ipaddress.ip_address(addr)
    return (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def check_url(url: str, policy: CallbackPolicy) -> str:
    """Validate a callback_url against the policy; returns it, or raises CallbackRefused."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CallbackRefused("callback_url: must be an http or https URL with a host")
    host = parts.hostname.lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    named = host in policy.allowed_hosts or f"{host}:{port}" in policy.allowed_hosts
    if not named and "*" not in policy.allowed_hosts:
        raise CallbackRefused(f"callback_url: host {host!r} is not on the callback allow-list")
    if not named:
        try:
            addrs = {a[4][0] for a in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)}
        except OSError as exc:
            raise CallbackRefused(f"callback_url: cannot resolve {host!r}: {exc}") from exc
        if any(_internal(a) for a in addrs):
            raise CallbackRefused(
                f"callback_url: {host!r} resolves to an internal address; name it on the "
                "allow-list to allow it"
            )
    return url


Recorder = Callable[[int, int | None, str | None], Awaitable[None]]


async def deliver(
    url: str,
    payload: dict[str, Any],
    policy: CallbackPolicy,
    record: Recorder,
    client: httpx.AsyncClient | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> bool:
    """POST until a 2xx answer or the attempts run out. Returns True when delivered."""
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    own = client is None
    client = client or httpx.AsyncClient(timeout=policy.timeout_s, follow_redirects=False)
    try:
        for attempt in range(1, policy.attempts + 1):
            ts = str(int(time.time()))
            headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: ts}
            if policy.secret:
                headers[SIGNATURE_HEADER] = sign(policy.secret, ts, body)
            code: int | None = None
            error: str | None = None
            try:
                resp = await client.post(url, content=body, headers=headers)
                code = resp.status_code
                if not 200 <= code < 300:
                    error = f"HTTP {code}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            await record(attempt, code, error)
            if error is None:
                return True
            if attempt < policy.attempts:
                await sleep(policy.backoff_s * 2 ** (attempt - 1))
        return False
    finally:
        if own:
            await client.aclose()


def allowed_hosts(raw: Sequence[str]) -> tuple[str, ...]:
    return tuple(h.strip().lower() for h in raw if h.strip())
