"""The routes two dialects share: POST /execute (the body says whose) and GET /health
(the union of both bodies)."""

from __future__ import annotations

import platform
import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from execbox.api import common, executor, faber
from execbox.api.errors import ApiError, Dialect

router = APIRouter(tags=["Shared"])


class Health(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "healthy",
                    "timestamp": "2024-01-01T12:00:00Z",
                    "version": "0.1.0",
                    "isolation": "namespaces+seccomp",
                    "platform": "Linux",
                }
            ]
        }
    )
    status: Literal["healthy", "unhealthy"]
    timestamp: str
    version: str
    isolation: str
    platform: str
    problems: list[str] = []
    warnings: list[str] = Field(
        [], description="what slows this server without stopping it (a zygote with a fallback)"
    )
    cluster: dict[str, Any] | None = Field(
        None, description="cluster mode: this node, Redis, the nodes alive and their capacity"
    )


class ShapeError(BaseModel):
    """When the body cannot say which dialect it is, both spellings are sent."""

    error: str
    details: str | None = None
    detail: str | None = None


def dialect_of(data: Any) -> Dialect:
    if isinstance(data, dict) and "tasks" in data:
        return "faber"
    if isinstance(data, dict) and "code" in data:
        return "executor"
    return "unknown"


EXECUTE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"$ref": "#/components/schemas/FaberRequest"},
                        {"$ref": "#/components/schemas/ExecutorRequest"},
                    ]
                }
            }
        },
    }
}


@router.post(
    "/execute",
    response_model=faber.FaberResponse | executor.ExecutorResponse,
    responses={
        400: {"model": ShapeError | faber.FaberError | executor.ExecutorError},
        401: {"model": ShapeError | faber.FaberError | executor.ExecutorError},
        403: {"model": faber.FaberError},
        413: {"model": ShapeError | faber.FaberError | executor.ExecutorError},
        422: {"model": executor.ExecutorValidationError},
        429: {"model": ShapeError | faber.FaberError | executor.ExecutorError},
        500: {"model": ShapeError | faber.FaberError | executor.ExecutorError},
    },
    openapi_extra=EXECUTE_BODY,
    summary="Run Faber tasks ({tasks}) or Sandbox Executor code ({code, ...})",
)
async def execute(request: Request) -> JSONResponse:
    raw = await common.read_body(request, "unknown")
    try:
        data: Any = common.parse_json(raw, "faber")
    except ApiError as exc:
        # authenticate before telling a stranger anything about the body
        common.admit(request, "faber")
        raise exc from None
    dialect = dialect_of(data)
    common.admit(request, "faber" if dialect == "unknown" else dialect)
    if dialect == "faber":
        return await faber.handle(request, data)
    if dialect == "executor":
        return await executor.handle(request, data)
    raise ApiError(
        400,
        'Request body must contain "tasks" (Faber) or "code" (Sandbox Executor)',
        "unknown",
    )


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"model": Health}},
    summary="Service health (Faber and Sandbox Executor)",
)
async def health(request: Request) -> JSONResponse:
    problems = common.problems(request)
    ok = not problems
    return JSONResponse(
        {
            "status": "healthy" if ok else "unhealthy",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "version": common.VERSION,
            "isolation": executor.ISOLATION,
            "platform": platform.system(),
            "problems": problems,
            **({"warnings": warnings} if (warnings := common.warnings(request)) else {}),
            **({"cluster": cluster} if (cluster := await common.cluster_health(request)) else {}),
        },
        status_code=200 if ok else 503,
    )
