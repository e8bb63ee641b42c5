"""One function turns the evidence of a finished sandbox into its Status.

Precedence, when several fire at once (the first that holds wins):

1. internal_error  execbox itself failed (no sandbox, zygote died, setup failed)
2. timeout         the engine's wall clock ran out and it killed the sandbox
3. output_limit    stdout or stderr passed its cap and the engine killed the sandbox
4. memory_limit    the cgroup's OOM killer fired
5. cpu_limit       SIGXCPU, or SIGKILL with cpu usage at the limit (RLIMIT_CPU's hard kill)
6. file_size_limit SIGXFSZ, or the code failed after a write hit RLIMIT_FSIZE
7. process_limit   pids.max refused a fork and the code did not succeed
8. fd_limit        a process filled its fd table (RLIMIT_NOFILE) and the code did not
                   succeed
9. signaled        another signal ended it
10. failure        non-zero exit
11. success        exit 0

The engine's own kills come first because they are what ended the run: a sandbox the
engine killed at the wall clock may also show a process that the OOM killer hit earlier.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from execbox.jobs import Status


@dataclass(frozen=True)
class Evidence:
    exit_code: int | None = None
    signal: int | None = None
    internal_error: bool = False
    timed_out: bool = False
    output_exceeded: bool = False
    oom_kills: int = 0
    cpu_time_ns: int | None = None
    cpu_limit_ns: int | None = None
    cpu_killed: bool = False  # the zygote killed it for the cgroup's cpu usage
    pids_limit_hits: int = 0
    file_size_exceeded: bool = False
    fds_exceeded: bool = False


def cpu_exhausted(ev: Evidence) -> bool:
    if ev.cpu_killed or ev.signal == signal.SIGXCPU:
        return True
    if ev.signal == signal.SIGKILL and ev.cpu_time_ns is not None and ev.cpu_limit_ns:
        # RLIMIT_CPU's hard limit (the budget rounded up to whole seconds) kills with SIGKILL
        return ev.cpu_time_ns >= ev.cpu_limit_ns
    return False


def exceeded(ev: Evidence) -> frozenset[str]:
    """Every limit the evidence shows was hit, whatever the final status."""
    flags = set()
    if ev.timed_out:
        flags.add("wall_time")
    if ev.output_exceeded:
        flags.add("output")
    if ev.oom_kills > 0:
        flags.add("memory")
    if cpu_exhausted(ev):
        flags.add("cpu_time")
    if ev.pids_limit_hits > 0:
        flags.add("processes")
    if ev.signal == signal.SIGXFSZ or ev.file_size_exceeded:
        flags.add("file_size")
    if ev.fds_exceeded:
        flags.add("fds")
    return frozenset(flags)


def derive(ev: Evidence) -> Status:
    if ev.internal_error:
        return Status.INTERNAL_ERROR
    if ev.timed_out:
        return Status.TIMEOUT
    if ev.output_exceeded:
        return Status.OUTPUT_LIMIT
    if ev.oom_kills > 0:
        return Status.MEMORY_LIMIT
    if cpu_exhausted(ev):
        return Status.CPU_LIMIT
    succeeded = ev.signal is None and ev.exit_code == 0
    if ev.signal == signal.SIGXFSZ or (ev.file_size_exceeded and not succeeded):
        return Status.FILE_SIZE_LIMIT
    if ev.pids_limit_hits > 0 and not succeeded:
        return Status.PROCESS_LIMIT
    if ev.fds_exceeded and not succeeded:
        return Status.FD_LIMIT
    if ev.signal is not None:
        return Status.SIGNALED
    if ev.exit_code != 0:
        return Status.FAILURE
    return Status.SUCCESS
