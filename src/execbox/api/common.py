"""What every dialect's handler does around the engine: read the body, authenticate,
count against the rate limit, run the Job, audit it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import Response
from pydantic import ValidationError

from execbox.api.audit import AuditLog
from execbox.api.auth import Auth, Identity
from execbox.api.errors import ApiError, Dialect
from execbox.api.middleware import BodyTooLarge
from execbox.api.ratelimit import RateLimiter
from execbox.config import Settings
from execbox.engine import Engine
from execbox.executions import Executions
from execbox.jobs import Job, Outcome
from execbox.runtimes import InvalidJob
from execbox.sessions import Sessions

if TYPE_CHECKING:
    from execbox.cluster.node import Cluster

try:
    VERSION = metadata.version("execbox")
except metadata.PackageNotFoundError:  # running from a source tree
    VERSION = "0.0.0"


@dataclass
class Policy:
    """Everything the HTTP layer derives from Settings; rebuilt by configure()."""

    settings: Settings
    auth: Auth
    limiter: RateLimiter
    audit: AuditLog

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        limiter = RateLimiter(settings.rate_limit, settings.redis_url)
        return cls(settings, Auth(settings), limiter, AuditLog(settings.audit_log))


def policy(request: Request) -> Policy:
    return request.app.state.policy  # type: ignore[no-any-return]


def engine(request: Request) -> Engine:
    return request.app.state.engine  # type: ignore[no-any-return]


async def read_body(request: Request, dialect: Dialect) -> bytes:
    try:
        return await request.body()
    except BodyTooLarge:
        limit = policy(request).settings.max_body_bytes
        msg = f"Request body exceeds maximum size limit of {limit} bytes"
        raise ApiError(413, msg, dialect) from None


def parse_json(raw: bytes, dialect: Dialect) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"Malformed JSON body: {exc}", dialect) from None


def admit(request: Request, dialect: Dialect) -> Identity:
    """Authenticate, then count one request against the caller's rate limit (once in a
    cluster: a request forwarded by another node was counted there)."""
    p = policy(request)
    who = p.auth.check(request, dialect)
    c = cluster(request)
    if c is None or not c.is_forwarded(request):
        request.state.rate_limit_headers = p.limiter.hit(who, dialect)
    request.state.identity = who
    return who


def cluster(request: Request) -> Cluster | None:
    return getattr(request.app.state, "cluster", None)


async def cluster_health(request: Request) -> dict[str, Any] | None:
    c = cluster(request)
    return None if c is None else await c.health()


async def route_session(
    request: Request, session_id: str, dialect: Dialect, *, place: bool, runtime: str | None = None
) -> Response | None:
    """In a cluster, the answer of the node that holds the session, if not this one."""
    c = cluster(request)
    if c is None:
        return None
    return await c.route(request, session_id, dialect, place=place, runtime=runtime)


def first_error(exc: ValidationError) -> str:
    """A pydantic error as one line that names the field."""
    parts = []
    for err in exc.errors(include_url=False)[:3]:
        loc = ".".join(str(x) for x in err["loc"]) or "body"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


async def run(request: Request, dialect: Dialect, job: Job) -> Outcome:
    """Run a job of a dialect without ids of its own; its record is written off the
    request's path."""
    try:
        outcome = await engine(request).run(job)
    except InvalidJob as exc:
        raise ApiError(400, str(exc), dialect) from None
    audit(request, dialect, job, outcome)
    executions(request).record_only(job.id, dialect, job, outcome)
    return outcome


MIN_FREE_BYTES = 8 << 20


def problems(request: Request) -> list[str]:
    """Everything that keeps this server from doing its work, in words, for health."""
    out = [
        f"{name}: {r['error']}"
        for name, r in engine(request).health().items()
        if not r["ready"] and not r.get("fallback")
    ]
    state_dir = policy(request).settings.state_dir
    try:
        st = os.statvfs(state_dir)
        free = st.f_bavail * st.f_frsize
        if free < MIN_FREE_BYTES:
            out.append(f"storage: only {free} bytes free for the store in {state_dir}")
    except OSError as exc:
        out.append(f"storage: {state_dir}: {exc.strerror}")
    return out


def warnings(request: Request) -> list[str]:
    """What makes this server slower than it should be, in words, for health: a zygote down
    whose jobs another one runs."""
    return [
        f"{name}: {r['error']}; its jobs run in the {r['fallback']} zygote, slower"
        for name, r in engine(request).health().items()
        if not r["ready"] and r.get("fallback")
    ]


def storage_error(exc: Exception, dialect: Dialect) -> ApiError:
    return ApiError(507, f"Insufficient storage: {exc}", dialect)


def audit(request: Request, dialect: Dialect, job: Job, outcome: Outcome) -> None:
    who: Identity = request.state.identity
    policy(request).audit.record(request.state.request_id, dialect, who, job, outcome)


def executions(request: Request) -> Executions:
    return request.app.state.executions  # type: ignore[no-any-return]


def sessions(request: Request) -> Sessions:
    return request.app.state.sessions  # type: ignore[no-any-return]


def text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def check_range(field: str, value: float, low: float, high: float, unit: str = "") -> None:
    if not low <= value <= high:
        u = f" {unit}" if unit else ""
        raise ValueError(
            f"{field}: {_num(value)}{u} is out of range, allowed {_num(low)}..{_num(high)}{u}"
        )


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
