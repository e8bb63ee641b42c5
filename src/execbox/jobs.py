"""The one internal contract: every dialect turns its request into a Job and renders the
Outcome the engine returns. Nothing here knows about HTTP."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

RUNTIMES = ("python", "node", "bash", "command")


class Status(enum.StrEnum):
    """What really happened, derived from kernel evidence (see execbox.status)."""

    SUCCESS = "success"  # exited 0
    FAILURE = "failure"  # exited non-zero
    SIGNALED = "signaled"  # killed by a signal that no limit explains
    TIMEOUT = "timeout"  # the engine's wall clock ran out
    MEMORY_LIMIT = "memory_limit"  # the cgroup OOM killer fired
    CPU_LIMIT = "cpu_limit"  # RLIMIT_CPU / cpu time ran out
    PROCESS_LIMIT = "process_limit"  # pids.max refused a fork
    OUTPUT_LIMIT = "output_limit"  # stdout or stderr passed the cap
    FILE_SIZE_LIMIT = "file_size_limit"  # RLIMIT_FSIZE refused a write
    FD_LIMIT = "fd_limit"  # RLIMIT_NOFILE refused a file descriptor
    INTERNAL_ERROR = "internal_error"  # execbox failed, not the code


class Flat:
    """A dataclass of plain values (numbers, strings, None): its fields as a dict, without
    the deep copy of every value that dataclasses.asdict makes, on every request."""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Limits(Flat):
    wall_time_s: float = 30.0
    cpu_time_s: float = 30.0
    memory_bytes: int = 256 << 20
    pids: int = 64
    fds: int = 256
    output_bytes: int = 1 << 20  # per stream
    file_size_bytes: int = 64 << 20
    stack_bytes: int = 8 << 20
    tmp_bytes: int = 64 << 20
    workdir_bytes: int = 64 << 20


@dataclass(frozen=True)
class Job:
    runtime: str  # one of RUNTIMES
    code: str | None = None  # python, node, bash
    argv: list[str] | None = None  # command
    files: dict[str, bytes] = field(default_factory=dict)  # relative to the workdir
    env: dict[str, str] = field(default_factory=dict)
    stdin: bytes = b""
    limits: Limits = field(default_factory=Limits)
    session: str | None = None
    event: Any = None
    handler: bool = False  # call the code's handler(event) and return its value
    id: str = ""


@dataclass
class Usage(Flat):
    """Measured by the kernel; None where this host cannot measure a figure."""

    cpu_time_ns: int | None = None
    user_time_ns: int | None = None
    system_time_ns: int | None = None
    wall_time_ns: int | None = None
    memory_peak_bytes: int | None = None
    memory_current_bytes: int | None = None
    process_count: int | None = None
    file_descriptors: int | None = None
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None


@dataclass
class Timings(Flat):
    queue_ms: float = 0.0  # waiting for a concurrency slot
    fork_ms: float = 0.0  # obtaining a ready sandbox
    exec_ms: float = 0.0  # job sent to sandbox gone
    total_ms: float = 0.0


@dataclass
class Outcome:
    status: Status
    exit_code: int | None = None  # None when killed by a signal
    signal: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    usage: Usage = field(default_factory=Usage)
    timings: Timings = field(default_factory=Timings)
    error: str | None = None  # for INTERNAL_ERROR: what went wrong
    # every limit that fired: wall_time, cpu_time, memory, processes, output, file_size
    exceeded: frozenset[str] = frozenset()
    return_value: Any = None
    # when a handler was called and failed (or its value could not be serialized)
    handler_error: dict[str, str] | None = None
    # session runs: files the execution created or changed (path, size, sha256, mime_type)
    artifacts: list[dict[str, Any]] | None = None
    pool_hit: bool | None = None

    @property
    def ok(self) -> bool:
        return self.status is Status.SUCCESS
