"""Each limit tripped for real; usage figures measured by the kernel; the status table."""

from __future__ import annotations

import signal
import time

import pytest

from execbox.config import LimitRange
from execbox.jobs import Job, Status
from execbox.limits import resolve
from execbox.runtimes import InvalidJob
from execbox.status import Evidence, derive, exceeded

from ..conftest import make_limits

MiB = 1 << 20


def test_memory_bomb_gives_memory_limit(engine) -> None:
    out = engine.py(
        "x = bytearray(300 << 20); x[::4096] = b'x' * len(x[::4096])", memory_bytes=64 * MiB
    )
    assert out.status is Status.MEMORY_LIMIT
    assert "memory" in out.exceeded


def test_cpu_limit_below_wall_limit_over_all_processes(engine) -> None:
    # two processes each burn cpu: only the sum over the sandbox can trip a 1 s budget
    code = "import os\nos.fork()\nwhile True: pass"
    t0 = time.monotonic()
    out = engine.py(code, cpu_time_s=1, wall_time_s=10)
    assert out.status is Status.CPU_LIMIT, (out.status, out.usage)
    assert "cpu_time" in out.exceeded
    assert time.monotonic() - t0 < 5
    assert out.usage.cpu_time_ns >= 1_000_000_000


def test_sleep_past_wall_limit_gives_timeout(engine) -> None:
    out = engine.py("import time; time.sleep(10)", wall_time_s=0.5)
    assert out.status is Status.TIMEOUT and "wall_time" in out.exceeded


def test_fork_bombs_are_named_process_limit_every_time(engine) -> None:
    # every process forks at once: the kernel counts each fork against RLIMIT_NPROC before
    # the cgroup's pids.max refuses it; NPROC must not be the one that refuses, which
    # leaves no trace and made a bomb a plain "failure"
    bomb = Job(runtime="python", code="import os\nwhile True:\n    os.fork()")
    for _ in range(3):
        outs = engine.many([bomb] * 6)
        assert [o.status for o in outs] == [Status.PROCESS_LIMIT] * 6, [
            (o.status, o.exceeded) for o in outs
        ]
        assert all("processes" in o.exceeded for o in outs)


def test_fork_loop_gives_process_flag(engine) -> None:
    code = "import os, time\nfor _ in range(100):\n    if os.fork() == 0:\n        time.sleep(5)\n"
    out = engine.py(code, pids=10)
    assert out.status is Status.PROCESS_LIMIT, (out.status, out.stderr[-200:])
    assert "processes" in out.exceeded
    assert b"BlockingIOError" in out.stderr


def test_fd_loop_gives_the_fd_flag(engine) -> None:
    code = "fs = []\nwhile True:\n    fs.append(open('/dev/null'))"
    out = engine.py(code, fds=32)
    assert out.status is Status.FD_LIMIT and "fds" in out.exceeded
    assert b"Too many open files" in out.stderr
    assert out.usage.file_descriptors >= 30
    # an exec'd program that fills its fd table and keeps going is seen by the sampling
    hold = (
        "import time\nfs = []\ntry:\n    while True:\n        fs.append(open('/dev/null'))\n"
        "except OSError:\n    time.sleep(0.3)\n    raise"
    )
    job = Job(runtime="command", argv=["python", "-c", hold], limits=make_limits(fds=16))
    out = engine.run(job)
    assert out.status is Status.FD_LIMIT and "fds" in out.exceeded, out
    assert out.usage.file_descriptors == 16


def test_print_flood_gives_output_flag_with_stdout_exactly_at_cap(engine) -> None:
    out = engine.py(
        "import sys\nwhile True:\n    sys.stdout.write('x' * 4096)", output_bytes=100_000
    )
    assert out.status is Status.OUTPUT_LIMIT
    assert "output" in out.exceeded
    assert len(out.stdout) == 100_000 and out.stdout_truncated
    assert not out.stderr_truncated


def test_file_over_size_limit_is_stopped(engine) -> None:
    code = "open('/tmp/big', 'wb').write(b'x' * (3 << 20))"
    out = engine.py(code, file_size_bytes=1 * MiB)
    assert out.status is Status.FAILURE  # python ignores SIGXFSZ and raises instead
    assert b"File too large" in out.stderr
    # exec: the writer is pid 1 itself, so its death by SIGXFSZ is the evidence
    job = Job(
        runtime="bash",
        code="exec head -c 3M /dev/zero > /tmp/big",
        limits=make_limits(file_size_bytes=MiB),
    )
    out = engine.run(job)
    assert out.status is Status.FILE_SIZE_LIMIT, out
    assert out.signal == signal.SIGXFSZ and "file_size" in out.exceeded
    # a child that dies of it is reported by its shell as 128+25, and stopped all the same
    job = Job(
        runtime="bash",
        code="head -c 3M /dev/zero > /tmp/big; echo $?",
        limits=make_limits(file_size_bytes=MiB),
    )
    assert engine.run(job).stdout == b"153\n"


def test_exit_3_and_success(engine) -> None:
    out = engine.py("raise SystemExit(3)")
    assert (out.status, out.exit_code) == (Status.FAILURE, 3)
    out = engine.py("print('ok')")
    assert (out.status, out.exit_code, out.exceeded) == (Status.SUCCESS, 0, frozenset())


# ---- accuracy ------------------------------------------------------------------------------


def test_memory_peak_of_100_mib(engine) -> None:
    out = engine.py(
        "x = bytearray(100 << 20)\nfor i in range(0, len(x), 4096): x[i] = 1",
        memory_bytes=512 * MiB,
    )
    assert out.status is Status.SUCCESS, out.stderr
    assert 100 * MiB <= out.usage.memory_peak_bytes <= 140 * MiB, out.usage


def test_cpu_time_of_a_1s_busy_loop(engine) -> None:
    code = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0: pass"
    out = engine.py(code)
    assert out.status is Status.SUCCESS
    assert 0.85e9 <= out.usage.cpu_time_ns <= 1.15e9, out.usage
    assert out.usage.wall_time_ns >= out.usage.cpu_time_ns * 0.5


def test_process_count_of_5_sleeping_children(engine) -> None:
    code = (
        "import os, time\nfor _ in range(5):\n"
        "    if os.fork() == 0:\n        time.sleep(0.3); os._exit(0)\ntime.sleep(0.2)"
    )
    out = engine.py(code)
    assert out.status is Status.SUCCESS
    assert out.usage.process_count >= 6, out.usage


def test_io_write_bytes_of_10_mib(engine) -> None:
    out = engine.py("open('/tmp/f', 'wb').write(b'x' * (10 << 20))", memory_bytes=256 * MiB)
    assert out.status is Status.SUCCESS, out.stderr
    assert out.usage.io_write_bytes is not None and out.usage.io_write_bytes >= 10 * MiB


def test_several_limits_at_once_follow_the_precedence(engine) -> None:
    # floods output and then sleeps past the wall: the output cap fires first, so it wins
    code = "import sys, time\nsys.stdout.write('x' * 200_000); sys.stdout.flush(); time.sleep(5)"
    out = engine.py(code, output_bytes=1000, wall_time_s=1)
    assert out.status is Status.OUTPUT_LIMIT


# ---- the status function -------------------------------------------------------------------

KILL = signal.SIGKILL
TABLE = [
    (Evidence(exit_code=0), Status.SUCCESS),
    (Evidence(exit_code=3), Status.FAILURE),
    (Evidence(signal=signal.SIGSEGV), Status.SIGNALED),
    (Evidence(signal=KILL, timed_out=True), Status.TIMEOUT),
    (Evidence(signal=KILL, output_exceeded=True), Status.OUTPUT_LIMIT),
    (Evidence(signal=KILL, oom_kills=1), Status.MEMORY_LIMIT),
    (
        Evidence(signal=KILL, cpu_time_ns=2_000_000_000, cpu_limit_ns=2_000_000_000),
        Status.CPU_LIMIT,
    ),
    (Evidence(signal=KILL, cpu_killed=True), Status.CPU_LIMIT),
    (Evidence(signal=signal.SIGXCPU), Status.CPU_LIMIT),
    (Evidence(signal=signal.SIGXFSZ), Status.FILE_SIZE_LIMIT),
    (Evidence(exit_code=1, pids_limit_hits=3), Status.PROCESS_LIMIT),
    (Evidence(exit_code=0, pids_limit_hits=3), Status.SUCCESS),  # it coped with the refusal
    (Evidence(exit_code=1, fds_exceeded=True), Status.FD_LIMIT),
    (Evidence(exit_code=1, pids_limit_hits=1, fds_exceeded=True), Status.PROCESS_LIMIT),
    (Evidence(signal=KILL, cpu_time_ns=10, cpu_limit_ns=2_000_000_000), Status.SIGNALED),
    # several at once: precedence
    (Evidence(signal=KILL, timed_out=True, oom_kills=1, pids_limit_hits=2), Status.TIMEOUT),
    (Evidence(signal=KILL, output_exceeded=True, oom_kills=1), Status.OUTPUT_LIMIT),
    (Evidence(signal=KILL, oom_kills=1, cpu_killed=True), Status.MEMORY_LIMIT),
    (Evidence(exit_code=1, pids_limit_hits=1, file_size_exceeded=True), Status.FILE_SIZE_LIMIT),
    (Evidence(internal_error=True, timed_out=True), Status.INTERNAL_ERROR),
]


@pytest.mark.parametrize(("evidence", "status"), TABLE)
def test_status_table(evidence: Evidence, status: Status) -> None:
    assert derive(evidence) is status


def test_flags_keep_every_limit_that_fired() -> None:
    ev = Evidence(signal=KILL, timed_out=True, oom_kills=1, pids_limit_hits=2)
    assert exceeded(ev) == {"wall_time", "memory", "processes"}


# ---- resolving requested limits ------------------------------------------------------------


def test_resolve_uses_defaults_and_requested_values() -> None:
    rng = LimitRange()
    lim = resolve(rng, {"memory_bytes": 64 * MiB, "wall_time_s": None})
    assert lim.memory_bytes == 64 * MiB and lim.wall_time_s == rng.default.wall_time_s


def test_resolve_names_the_field_and_range_in_the_clients_units() -> None:
    with pytest.raises(InvalidJob) as err:
        resolve(
            LimitRange(),
            {"wall_time_s": 10_000 * 10**9},
            names={"wall_time_s": "resource_limits.wall_time_limit"},
            scale={"wall_time_s": 1e-9},
        )
    assert str(err.value) == (
        "resource_limits.wall_time_limit: 10000000000000 is outside the allowed range "
        "10000000..3600000000000"
    )
