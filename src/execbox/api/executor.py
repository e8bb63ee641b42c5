"""The Sandbox Executor dialect: POST /execute with {execution_id, session_id, code, ...},
and GET /info. Validation failures are FastAPI's own 422 list, as that service's are."""

from __future__ import annotations

import dataclasses
import platform
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from execbox.api import common
from execbox.api.errors import ApiError
from execbox.jobs import Job, Outcome, Status
from execbox.runtimes import WORKDIR

D = "executor"
RUNTIME = {"python": "python", "javascript": "node", "shell": "bash"}
ISOLATION = "namespaces+seccomp"


class ExecutorRequest(BaseModel):
    model_config = ConfigDict(
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
        }
    )
    execution_id: str
    session_id: str
    code: str
    language: Literal["python", "javascript", "shell"]
    timeout: int = Field(300, ge=1, le=3600)
    event: dict[str, Any] | None = None
    env_vars: dict[str, str] = {}


class ExecutionMetrics(BaseModel):
    cpu_time_ms: float | None
    peak_memory_mb: float | None


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
    status: Literal["completed", "failed", "timeout"]
    message: str
    stdout: str
    stderr: str
    exit_code: int | None
    duration: float
    metrics: ExecutionMetrics


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
}


def to_job(req: ExecutorRequest, request: Request) -> Job:
    settings = common.policy(request).settings
    hi = settings.limits.maximum.wall_time_s
    if req.timeout > hi:
        raise ApiError(400, f"timeout: {req.timeout} is above this server's maximum of {hi:g}s", D)
    d = settings.limits.default
    cpu = min(max(d.cpu_time_s, req.timeout), settings.limits.maximum.cpu_time_s)
    limits = dataclasses.replace(d, wall_time_s=float(req.timeout), cpu_time_s=cpu)
    # handler(event) semantics come later: for now the code runs as a script
    return Job(
        runtime=RUNTIME[req.language],
        code=req.code,
        env=dict(req.env_vars),
        limits=limits,
        id=req.execution_id,
    )


def render(req: ExecutorRequest, job: Job, outcome: Outcome) -> dict[str, Any]:
    status = outcome.status
    if status is Status.SUCCESS:
        word = "completed"
    elif status is Status.TIMEOUT:
        word = "timeout"
    else:
        word = "failed"
    message = MESSAGES[status].format(
        code=outcome.exit_code, signal=outcome.signal, timeout=req.timeout
    )
    u = outcome.usage
    return {
        "execution_id": req.execution_id,
        "status": word,
        "message": message,
        "stdout": common.text(outcome.stdout),
        "stderr": common.text(outcome.stderr),
        "exit_code": outcome.exit_code,
        "duration": round(outcome.timings.total_ms, 3),
        "metrics": {
            "cpu_time_ms": None if u.cpu_time_ns is None else round(u.cpu_time_ns / 1e6, 3),
            "peak_memory_mb": None
            if u.memory_peak_bytes is None
            else round(u.memory_peak_bytes / (1 << 20), 3),
        },
    }


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
    outcome = await common.run(request, D, job)
    if outcome.status is Status.INTERNAL_ERROR:
        raise ApiError(500, f"Internal server error: {outcome.error}", D)
    return JSONResponse(render(req, job, outcome))


router = APIRouter(tags=["Sandbox Executor"])


@router.get("/info", response_model=Info, summary="Service information and current state")
async def info(request: Request) -> JSONResponse:
    return JSONResponse(
        {
            "version": common.VERSION,
            "platform": platform.system(),
            "isolation": ISOLATION,
            "workspace_path": WORKDIR,
            "active_executions": common.engine(request).stats.running,
        }
    )
