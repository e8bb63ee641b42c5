"""The Faber dialect: POST /execute with {"tasks": [...]}, each task a command with args,
env, files and resource limits."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from execbox.api import common
from execbox.api.errors import ApiError
from execbox.api.ids import uuid7
from execbox.config import Settings
from execbox.jobs import Job, Limits, Outcome, Status
from execbox.runtimes import InvalidJob, check_relative_path

D = "faber"
NS = 1_000_000_000

FaberStatus = Literal[
    "Success",
    "Failure",
    "NotExecuted",
    "ResourceLimitExceeded",
    "Timeout",
    "MemoryLimitExceeded",
    "CpuLimitExceeded",
]
STATUS: dict[Status, FaberStatus] = {
    Status.SUCCESS: "Success",
    Status.FAILURE: "Failure",
    Status.TIMEOUT: "Timeout",
    Status.MEMORY_LIMIT: "MemoryLimitExceeded",
    Status.CPU_LIMIT: "CpuLimitExceeded",
    Status.PROCESS_LIMIT: "ResourceLimitExceeded",
    Status.OUTPUT_LIMIT: "ResourceLimitExceeded",
    Status.FILE_SIZE_LIMIT: "ResourceLimitExceeded",
    Status.FD_LIMIT: "ResourceLimitExceeded",
    Status.SIGNALED: "Failure",
    Status.INTERNAL_ERROR: "Failure",
}


class ResourceLimits(BaseModel):
    memory_limit: int | None = Field(None, description="bytes")
    cpu_time_limit: int | None = Field(None, description="nanoseconds")
    wall_time_limit: int | None = Field(None, description="nanoseconds")
    max_processes: int | None = None
    max_file_descriptors: int | None = None
    max_output_size: int | None = Field(None, description="bytes, per stream")


class Task(BaseModel):
    # documented, not enforced by pydantic: the handler words the error as Faber does
    command: str = Field(json_schema_extra={"minLength": 1})
    args: list[str] = []
    env: dict[str, str] = {}
    files: dict[str, str] = {}
    resource_limits: ResourceLimits | None = None


class FaberRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "tasks": [
                        {
                            "command": "echo",
                            "args": ["hello", "world"],
                            "env": {"CUSTOM_VAR": "value"},
                            "files": {"script.py": "print('Hello from Python')"},
                            "resource_limits": {
                                "memory_limit": 536870912,
                                "cpu_time_limit": 30000000000,
                                "wall_time_limit": 60000000000,
                                "max_processes": 10,
                                "max_file_descriptors": 100,
                                "max_output_size": 1048576,
                            },
                        }
                    ]
                },
                {"tasks": [{"command": "echo", "args": ["Hello, Faber!"]}]},
                {
                    "tasks": [
                        {"command": "echo", "args": ["Task 1"]},
                        {"command": "python", "args": ["-c", 'print("Task 2")']},
                        {"command": "bash", "args": ["-c", 'echo "Task 3"']},
                    ]
                },
            ]
        }
    )
    tasks: list[Task] = Field(min_length=1, max_length=64)


class ResourceUsage(BaseModel):
    cpu_time_ns: int | None
    wall_time_ns: int | None
    memory_peak_bytes: int | None
    memory_current_bytes: int | None
    process_count: int | None
    file_descriptors: int | None
    io_read_bytes: int | None
    io_write_bytes: int | None
    system_time_ns: int | None
    user_time_ns: int | None


class LimitsExceeded(BaseModel):
    cpu_time_limit_exceeded: bool
    wall_time_limit_exceeded: bool
    process_limit_exceeded: bool
    file_descriptor_limit_exceeded: bool
    output_limit_exceeded: bool


class TaskResult(BaseModel):
    status: FaberStatus
    exit_code: int | None
    stdout: str
    stderr: str | None
    error: str | None
    resource_usage: ResourceUsage
    resource_limits_exceeded: LimitsExceeded


class FaberResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "results": [
                        {
                            "status": "Success",
                            "exit_code": 0,
                            "stdout": "hello world\n",
                            "stderr": None,
                            "error": None,
                            "resource_usage": {
                                "cpu_time_ns": 1000000,
                                "wall_time_ns": 5000000,
                                "memory_peak_bytes": 1048576,
                                "memory_current_bytes": 524288,
                                "process_count": 1,
                                "file_descriptors": 3,
                                "io_read_bytes": 0,
                                "io_write_bytes": 12,
                                "system_time_ns": 500000,
                                "user_time_ns": 500000,
                            },
                            "resource_limits_exceeded": {
                                "cpu_time_limit_exceeded": False,
                                "wall_time_limit_exceeded": False,
                                "process_limit_exceeded": False,
                                "file_descriptor_limit_exceeded": False,
                                "output_limit_exceeded": False,
                            },
                        }
                    ]
                }
            ]
        }
    )
    results: list[TaskResult]


class FaberError(BaseModel):
    error: str
    details: str


# (request field, Limits field, how many request units make one Limits unit, unit name)
LIMIT_FIELDS = (
    ("memory_limit", "memory_bytes", 1, "bytes"),
    ("cpu_time_limit", "cpu_time_s", NS, "ns"),
    ("wall_time_limit", "wall_time_s", NS, "ns"),
    ("max_processes", "pids", 1, ""),
    ("max_file_descriptors", "fds", 1, ""),
    ("max_output_size", "output_bytes", 1, "bytes"),
)


def build_limits(given: ResourceLimits | None, settings: Settings, where: str) -> Limits:
    limits = settings.limits.default
    if given is None:
        return limits
    lo, hi = settings.limits.minimum, settings.limits.maximum
    changes: dict[str, Any] = {}
    for name, field, scale, unit in LIMIT_FIELDS:
        value = getattr(given, name)
        if value is None:
            continue
        low, high = getattr(lo, field) * scale, getattr(hi, field) * scale
        common.check_range(f"{where}resource_limits.{name}", value, low, high, unit)
        changes[field] = value / scale if scale != 1 else value
    return dataclasses.replace(limits, **changes)


def to_job(task: Task, settings: Settings, where: str) -> Job:
    if not task.command.strip():
        raise ValueError("Invalid command: command cannot be empty")
    files: dict[str, bytes] = {}
    for name, content in task.files.items():
        try:
            check_relative_path(name)
        except InvalidJob as exc:
            raise ValueError(f"{where}{exc}") from None
        files[name] = content.encode()
    for key in task.env:
        if not key or "=" in key or "\x00" in key:
            raise ValueError(f"{where}env: invalid variable name {key!r}")
    return Job(
        runtime="command",
        argv=[task.command, *task.args],
        env=dict(task.env),
        files=files,
        limits=build_limits(task.resource_limits, settings, where),
        id=uuid7(),
    )


def render(outcome: Outcome) -> dict[str, Any]:
    u = outcome.usage
    flags = outcome.exceeded
    stderr = common.text(outcome.stderr)
    return {
        "status": STATUS[outcome.status],
        "exit_code": outcome.exit_code,
        "stdout": common.text(outcome.stdout),
        "stderr": stderr or None,
        "error": (outcome.error or "internal error")
        if outcome.status is Status.INTERNAL_ERROR
        else None,
        "resource_usage": {
            "cpu_time_ns": u.cpu_time_ns,
            "wall_time_ns": u.wall_time_ns,
            "memory_peak_bytes": u.memory_peak_bytes,
            "memory_current_bytes": u.memory_current_bytes,
            "process_count": u.process_count,
            "file_descriptors": u.file_descriptors,
            "io_read_bytes": u.io_read_bytes,
            "io_write_bytes": u.io_write_bytes,
            "system_time_ns": u.system_time_ns,
            "user_time_ns": u.user_time_ns,
        },
        "resource_limits_exceeded": {
            "cpu_time_limit_exceeded": "cpu_time" in flags,
            "wall_time_limit_exceeded": "wall_time" in flags,
            "process_limit_exceeded": "processes" in flags,
            "file_descriptor_limit_exceeded": "fds" in flags,
            "output_limit_exceeded": "output" in flags,
        },
    }


async def handle(request: Request, data: dict[str, Any]) -> JSONResponse:
    settings = common.policy(request).settings
    try:
        req = FaberRequest.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, common.first_error(exc), D) from None
    if len(req.tasks) > settings.max_batch:
        raise ApiError(400, f"tasks: {len(req.tasks)} tasks, allowed 1..{settings.max_batch}", D)
    # every task is validated before any runs: a bad request runs nothing
    try:
        jobs = [to_job(t, settings, f"tasks[{i}].") for i, t in enumerate(req.tasks)]
    except ValueError as exc:
        raise ApiError(400, str(exc), D) from None
    outcomes = await asyncio.gather(*(common.run(request, D, job) for job in jobs))
    return JSONResponse({"results": [render(o) for o in outcomes]})
