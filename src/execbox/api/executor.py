"""The Sandbox Executor dialect: POST /execute with {execution_id, session_id, code, ...},
and GET /info. Validation failures are FastAPI's own 422 list, as that service's are."""

from __future__ import annotations

import asyncio
import dataclasses
import platform
import sqlite3
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from execbox.api import common
from execbox.api.errors import ApiError
from execbox.callbacks import CallbackRefused
from execbox.cluster.link import RedisDown
from execbox.jobs import Job, Status
from execbox.runtimes import WORKDIR
from execbox.sessions import SESSION_ID, SessionError

D = "executor"
RUNTIME = {"python": "python", "javascript": "node", "shell": "bash"}
ISOLATION = "namespaces+seccomp"


class ExecutorRequest(BaseModel):
    model_config = ConfigDict(
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {
                    "execution_id": "exec_001",
                    "session_id": "session_001",
                    "code": 'def handler(event):\n    name = event.get("name", "World")\n'
                    '    return {"message": f"Hello, {name}!"}',
                    "language": "python",
                    "timeout": 10,
                    "event": {"name": "Alice"},
                },
                {
                    "execution_id": "exec_js_001",
                    "session_id": "session_001",
                    "code": "module.exports.handler = (event) => "
                    "({ message: `Hello ${event.name}!` });",
                    "language": "javascript",
                    "timeout": 10,
                    "event": {"name": "Bob"},
                },
                {
                    "execution_id": "exec_shell_001",
                    "session_id": "session_001",
                    "code": 'echo "Hello from shell!" && ls -la /tmp',
                    "language": "shell",
                    "timeout": 10,
                },
            ]
        },
    )
    execution_id: str = Field(min_length=1, max_length=128)
    session_id: str = Field(pattern=SESSION_ID.pattern)
    code: str
    language: Literal["python", "javascript", "shell"]
    timeout: int = Field(300, ge=1, le=3600)
    event: dict[str, Any] | None = None
    env_vars: dict[str, str] = {}
    run_async: bool = Field(
        False, alias="async", description="answer 202 at once; poll GET /executions/{id}"
    )
    callback_url: str | None = Field(
        None, description="POSTed the finished record, signed with HMAC-SHA256"
    )


class ExecutionMetrics(BaseModel):
    cpu_time_ms: float | None
    peak_memory_mb: float | None


class HandlerError(BaseModel):
    type: str
    message: str
    traceback: str


class Artifact(BaseModel):
    path: str
    size: int
    sha256: str | None
    mime_type: str
    created: bool


class ExecutorResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "execution_id": "exec_001",
                    "status": "completed",
                    "message": "Execution completed",
                    "stdout": "",
                    "stderr": "",
                    "exit_code": 0,
                    "duration": 12.5,
                    "metrics": {"cpu_time_ms": 9.1, "peak_memory_mb": 11.2},
                }
            ]
        }
    )
    execution_id: str
    session_id: str | None = None
    status: Literal["pending", "running", "completed", "failed", "timeout", "interrupted"]
    message: str
    stdout: str | None = None
    stderr: str | None = None
    exit_code: int | None = None
    duration: float | None = None
    metrics: ExecutionMetrics | None = None
    return_value: Any = None
    error: HandlerError | None = None
    artifacts: list[Artifact] | None = None


class ExecutorError(BaseModel):
    detail: str


class ValidationItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ExecutorValidationError(BaseModel):
    detail: list[ValidationItem]


class Info(BaseModel):
    version: str
    platform: str
    isolation: str
    workspace_path: str
    active_executions: int


MESSAGES = {
    Status.SUCCESS: "Execution completed",
    Status.FAILURE: "Execution failed: exited with code {code}",
    Status.SIGNALED: "Execution failed: killed by signal {signal}",
    Status.TIMEOUT: "Execution timed out after {timeout}s",
    Status.MEMORY_LIMIT: "Execution failed: memory limit exceeded",
    Status.CPU_LIMIT: "Execution failed: CPU time limit exceeded",
    Status.PROCESS_LIMIT: "Execution failed: process limit exceeded",
    Status.OUTPUT_LIMIT: "Execution failed: output limit exceeded",
    Status.FILE_SIZE_LIMIT: "Execution failed: file size limit exceeded",
    Status.FD_LIMIT: "Execution failed: open file limit exceeded",
}


def to_job(req: ExecutorRequest, request: Request) -> Job:
    settings = common.policy(request).settings
    blocked = {n.upper() for n in settings.blocked_env_vars}
    bad = [name for name in req.env_vars if name.upper() in blocked or "=" in name or not name]
    if bad:
        raise RequestValidationError(
            [
                {
                    "loc": ["body", "env_vars", name],
                    "msg": f"{name!r} cannot be set: it would subvert the runtime",
                    "type": "value_error.env_var_blocked",
                }
                for name in bad
            ]
        )
    hi = settings.limits.maximum.wall_time_s
    if req.timeout > hi:
        raise ApiError(400, f"timeout: {req.timeout} is above this server's maximum of {hi:g}s", D)
    d = settings.limits.default
    cpu = min(max(d.cpu_time_s, req.timeout), settings.limits.maximum.cpu_time_s)
    limits = dataclasses.replace(d, wall_time_s=float(req.timeout), cpu_time_s=cpu)
    return Job(
        runtime=RUNTIME[req.language],
        code=req.code,
        env=dict(req.env_vars),
        limits=limits,
        session=req.session_id,
        event={} if req.event is None else req.event,
        handler=True,
        id=req.execution_id,
    )


def message(result: dict[str, Any], timeout: float | None) -> str:
    status = Status(result["status"])
    err = result.get("handler_error")
    if err:
        return f"Execution failed: {err['type']}: {err['message']}"
    if status is Status.INTERNAL_ERROR:
        return f"Execution failed: internal error: {result.get('error')}"
    return MESSAGES[status].format(
        code=result["exit_code"], signal=result["signal"], timeout=f"{timeout:g}"
    )


def render_record(record: dict[str, Any]) -> dict[str, Any]:
    """An execution record in this dialect's shape: the same for a synchronous answer,
    a repeated execution_id and GET /executions/{id}."""
    out: dict[str, Any] = {
        "execution_id": record["id"],
        "session_id": record["session_id"],
        "status": record["status"],
        "created_at": record["created_at"],
        "started_at": record["started_at"],
        "finished_at": record["finished_at"],
        "callback_attempts": record["callback_attempts"],
    }
    result = record.get("result")
    if result is None:
        out["message"] = record.get("error") or f"Execution {record['status']}"
        return out
    u = result["usage"]
    timeout = record["request"]["limits"]["wall_time_s"]
    out.update(
        message=message(result, timeout),
        stdout=result["stdout"],
        stderr=result["stderr"],
        exit_code=result["exit_code"],
        duration=round(result["timings"]["total_ms"], 3),
        metrics={
            "cpu_time_ms": None if u["cpu_time_ns"] is None else round(u["cpu_time_ns"] / 1e6, 3),
            "peak_memory_mb": None
            if u["memory_peak_bytes"] is None
            else round(u["memory_peak_bytes"] / (1 << 20), 3),
        },
        return_value=result["return_value"],
        error=result["handler_error"],
        artifacts=result["artifacts"],
    )
    return out


def wants_async(request: Request, req: ExecutorRequest) -> bool:
    prefer = request.headers.get("prefer", "")
    return req.run_async or "respond-async" in [p.strip() for p in prefer.split(",")]


async def handle(request: Request, data: dict[str, Any]) -> JSONResponse:
    try:
        req = ExecutorRequest.model_validate(data)
    except ValidationError as exc:
        errors = [
            {"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False)
        ]
        raise RequestValidationError(errors) from None
    job = to_job(req, request)
    run_async = wants_async(request, req)
    # an async run of a session with no home yet is queued, and placed by whoever takes it
    elsewhere = await common.route_session(
        request, req.session_id, D, place=not run_async, runtime=job.runtime
    )
    if elsewhere is not None:
        return elsewhere
    execs = common.executions(request)
    if run_async:
        try:
            record, _ = await execs.submit(req.execution_id, D, job, req.callback_url)
        except CallbackRefused as exc:
            raise ApiError(400, str(exc), D) from None
        except (sqlite3.Error, OSError) as exc:  # nothing was accepted: say why
            raise common.storage_error(exc, D) from None
        except RedisDown as exc:
            raise ApiError(
                503,
                f"Service unavailable: async executions need Redis, which is down ({exc}); "
                "nothing was accepted, try again or run synchronously",
                D,
                {"Retry-After": "1"},
            ) from None
        body = render_record(record)
        return JSONResponse(body, status_code=202 if record["result"] is None else 200)
    if req.callback_url:
        raise ApiError(400, "callback_url: only with an asynchronous run", D)
    try:
        await asyncio.to_thread(common.sessions(request).ensure, req.session_id)
        outcome, record = await execs.run(req.execution_id, D, job)
    except SessionError as exc:
        raise (
            common.storage_error(exc, D) if exc.storage else ApiError(400, str(exc), D)
        ) from None
    except (sqlite3.Error, OSError) as exc:
        raise common.storage_error(exc, D) from None
    if outcome is not None:
        common.audit(request, D, job, outcome)
        if outcome.status is Status.INTERNAL_ERROR:
            raise ApiError(500, f"Internal server error: {outcome.error}", D)
    return JSONResponse(render_record(record))


router = APIRouter(tags=["Sandbox Executor"])


@router.get("/info", response_model=Info, summary="Service information and current state")
async def info(request: Request) -> JSONResponse:
    return JSONResponse(
        {
            "version": common.VERSION,
            "platform": platform.system(),
            "isolation": ISOLATION,
            "workspace_path": WORKDIR,
            "active_executions": common.executions(request).active,
        }
    )
