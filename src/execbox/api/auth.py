"""API keys: a JSON array in api_keys.json (or the configured file), plus the internal token.
No keys at all means open mode, as in the seeds."""

from __future__ import annotations

import hmac
import json
import logging
import os
from dataclasses import dataclass

from fastapi import Request

from execbox.api.errors import ApiError, Dialect
from execbox.config import Settings

log = logging.getLogger("execbox.api.auth")


def mask(key: str | None) -> str | None:
    """Enough of a key to tell keys apart in logs, never enough to use it."""
    if key is None:
        return None
    if len(key) <= 8:
        return "****"
    return f"{key[:4]}...{key[-4:]}"


def load_keys(settings: Settings) -> list[str]:
    path = settings.api_keys_file or ("api_keys.json" if os.path.exists("api_keys.json") else None)
    keys: list[str] = []
    if path:
        with open(path) as f:
            try:
                data = json.load(f)
            except ValueError as exc:
                raise ValueError(f"{path}: not a JSON array of keys: {exc}") from None
        if not isinstance(data, list) or not all(isinstance(k, str) for k in data):
            raise ValueError(f"{path}: expected a JSON array of strings")
        keys = [k for k in data if k]
    if settings.internal_api_token:
        keys.append(settings.internal_api_token)
    return keys


@dataclass
class Identity:
    key: str | None  # None in open mode
    client_ip: str

    @property
    def masked(self) -> str | None:
        return mask(self.key)


def client_ip(request: Request, trusted_proxies: tuple[str, ...]) -> str:
    peer = request.client.host if request.client else "unknown"
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded and peer in trusted_proxies:
        # the right-most hop not added by a proxy we trust is the real client
        hops = [h.strip() for h in forwarded.split(",") if h.strip()]
        for hop in reversed(hops):
            if hop not in trusted_proxies:
                return hop
    return peer


class Auth:
    def __init__(self, settings: Settings) -> None:
        self.keys = [k.encode() for k in load_keys(settings)]
        self.open = settings.open_mode or not self.keys
        self.trusted_proxies = settings.trusted_proxies

    def _valid(self, key: str) -> bool:
        given = key.encode()
        # compare against every key so the time taken does not reveal which one matched
        matched = False
        for k in self.keys:
            matched |= hmac.compare_digest(given, k)
        return matched

    def check(self, request: Request, dialect: Dialect) -> Identity:
        ip = client_ip(request, self.trusted_proxies)
        if self.open:
            return Identity(None, ip)
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "API key is required for this endpoint", dialect)
        if not self._valid(token):
            log.info("rejected API key %s from %s", mask(token), ip)
            status = 403 if dialect == "faber" else 401
            raise ApiError(status, "Invalid API key", dialect)
        return Identity(token, ip)
