"""The ZeroBoot dialect: /v1/exec, /v1/exec/batch, /v1/health, /v1/metrics."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from execbox.api import common
from execbox.api.errors import ApiError
from execbox.api.ids import uuid7
from execbox.config import Settings
from execbox.jobs import Job, Outcome, Status

D = "zeroboot"
LANGUAGES = {"python": "python", "node": "node", "javascript": "node"}


class ZbExecRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"code": "print(1 + 1)", "language": "python", "timeout_seconds": 30},
                {"code": "import numpy; print(numpy.random.rand(3))", "language": "python"},
            ]
        }
    )
    code: str
    language: Literal["python", "node", "javascript"] = "python"
    timeout_seconds: int = Field(30, ge=1, le=3600)


class ZbBatchRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "executions": [
                        {"code": "print(1)", "language": "python"},
                        {"code": "console.log(2)", "language": "node"},
                    ]
                }
            ]
        }
    )
    executions: list[ZbExecRequest] = Field(max_length=64)


class ZbExecResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "019cf684-1fd5-73c0-9299-52253f9aa79c",
                    "stdout": "2\n",
                    "stderr": "",
                    "exit_code": 0,
                    "fork_time_ms": 0.75,
                    "exec_time_ms": 7.2,
                    "total_time_ms": 8.0,
                }
            ]
        }
    )
    id: str
    stdout: str
    stderr: str
    exit_code: int
    fork_time_ms: float
    exec_time_ms: float
    total_time_ms: float
    status: str | None = None
    usage: dict[str, int | None] | None = None
    error: str | None = None


class ZbBatchResponse(BaseModel):
    results: list[ZbExecResponse]


class ZbError(BaseModel):
    error: str


class ZbTemplate(BaseModel):
    ready: bool
    memory_mb: int


class ZbHealth(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ok",
                    "templates": {
                        "python": {"ready": True, "memory_mb": 256},
                        "node": {"ready": True, "memory_mb": 256},
                    },
                }
            ]
        }
    )
    status: Literal["ok", "degraded"]
    templates: dict[str, ZbTemplate]
    problems: list[str] = []
    warnings: list[str] = Field(
        [], description="what slows this server without stopping it (a zygote with a fallback)"
    )
    cluster: dict[str, Any] | None = Field(
        None, description="cluster mode: this node, Redis, the nodes alive and their capacity"
    )


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ZbError} for code in (400, 401, 413, 429, 500)
}


def body_schema(name: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{name}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def to_job(item: Any, settings: Settings, where: str = "") -> Job:
    """Validated by hand so each message names its field, in ZeroBoot's 400 shape."""
    if not isinstance(item, dict):
        raise ApiError(400, f"{where}request body must be a JSON object", D)
    code = item.get("code")
    if not isinstance(code, str):
        raise ApiError(400, f"{where}code: required, must be a string", D)
    language = item.get("language", "python")
    if language not in LANGUAGES:
        raise ApiError(
            400, f"{where}language: unsupported language {language!r} "
            "(supported: python, node, javascript)", D,
        )  # fmt: skip
    timeout = item.get("timeout_seconds", 30)
    if isinstance(timeout, float) and timeout.is_integer():
        timeout = int(timeout)  # JSON does not tell 30 from 30.0
    hi = settings.limits.maximum.wall_time_s
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= hi:
        raise ApiError(
            400, f"{where}timeout_seconds: must be an integer between 1 and {hi:g}, "
            f"got {timeout!r}", D,
        )  # fmt: skip
    d = settings.limits.default
    cpu = min(max(d.cpu_time_s, timeout), settings.limits.maximum.cpu_time_s)
    limits = dataclasses.replace(d, wall_time_s=float(timeout), cpu_time_s=cpu)
    return Job(runtime=LANGUAGES[language], code=code, limits=limits, id=uuid7())


def render(job: Job, outcome: Outcome) -> dict[str, Any]:
    stderr = common.text(outcome.stderr)
    if outcome.status is Status.TIMEOUT:
        exit_code = -1
        stderr = f"Execution timed out after {job.limits.wall_time_s:g}s"
    elif outcome.exit_code is not None:
        exit_code = outcome.exit_code
    elif outcome.signal is not None:
        exit_code = 128 + outcome.signal
    else:
        exit_code = -1
    t = outcome.timings
    body: dict[str, Any] = {
        "id": job.id,
        "stdout": common.text(outcome.stdout),
        "stderr": stderr,
        "exit_code": exit_code,
        "fork_time_ms": round(t.fork_ms, 3),
        "exec_time_ms": round(t.exec_ms, 3),
        "total_time_ms": round(t.total_ms, 3),
        "status": outcome.status.value,
        "usage": outcome.usage.as_dict(),
    }
    if outcome.status is Status.INTERNAL_ERROR:
        body["error"] = outcome.error or "internal error"
    return body


router = APIRouter(tags=["ZeroBoot"])


@router.post(
    "/v1/exec",
    response_model=ZbExecResponse,
    responses=ERRORS,
    openapi_extra=body_schema("ZbExecRequest"),
    summary="Execute code in an isolated sandbox",
)
async def exec_one(request: Request) -> JSONResponse:
    common.admit(request, D)
    data = common.parse_json(await common.read_body(request, D), D)
    job = to_job(data, common.policy(request).settings)
    outcome = await common.run(request, D, job)
    if outcome.status is Status.INTERNAL_ERROR:
        raise ApiError(500, outcome.error or "internal error", D)
    return JSONResponse(render(job, outcome))


@router.post(
    "/v1/exec/batch",
    response_model=ZbBatchResponse,
    responses=ERRORS,
    openapi_extra=body_schema("ZbBatchRequest"),
    summary="Execute multiple snippets in parallel",
)
async def exec_batch(request: Request) -> JSONResponse:
    common.admit(request, D)  # a batch counts as one request
    data = common.parse_json(await common.read_body(request, D), D)
    settings = common.policy(request).settings
    items = data.get("executions") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ApiError(400, "executions: required, must be an array", D)
    if len(items) > settings.max_batch:
        raise ApiError(400, f"executions: {len(items)} items, allowed 0..{settings.max_batch}", D)
    jobs = [to_job(item, settings, f"executions[{i}].") for i, item in enumerate(items)]
    outcomes = await asyncio.gather(*(common.run(request, D, job) for job in jobs))
    return JSONResponse({"results": [render(j, o) for j, o in zip(jobs, outcomes, strict=True)]})


@router.get(
    "/v1/health",
    response_model=ZbHealth,
    responses={503: {"model": ZbHealth}},
    summary="Template status and readiness",
)
async def health(request: Request) -> JSONResponse:
    state = common.engine(request).health()
    # the languages a client can ask for: python-heavy is not one (it shows in warnings)
    templates = {
        name: {"ready": state[name]["ready"], "memory_mb": state[name]["memory_mb"]}
        for name in ("python", "node")
        if name in state
    }
    problems = common.problems(request)
    ok = bool(templates) and all(t["ready"] for t in templates.values()) and not problems
    body: dict[str, Any] = {"templates": templates, "problems": problems}
    # a zygote with a fallback (python-heavy) being down slows its jobs and stops none:
    # "degraded", still 200; the key only then, so the seed's body stays as it is
    if warnings := common.warnings(request):
        body["warnings"] = warnings
    body = {"status": "ok" if ok and not warnings else "degraded", **body}
    if (cluster := await common.cluster_health(request)) is not None:
        body["cluster"] = cluster  # only in cluster mode: the seed's body stays as it is
    return JSONResponse(
        body,
        status_code=200 if ok else 503,
    )


@router.get(
    "/v1/metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        401: {"model": ZbError},
    },
    summary="Prometheus-format metrics",
)
async def metrics(request: Request) -> Response:
    if not common.policy(request).settings.metrics_open:
        common.policy(request).auth.check(request, D)
    body = request.app.state.metrics.exposition()
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
