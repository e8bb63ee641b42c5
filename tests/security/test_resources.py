"""Resources (Faber's heading), beyond the fork and memory bombs of test_escape: a thread
bomb, a working directory filled up, stdout and stderr flooded at once, and a CPU burn
that stays within its limits. Each is contained, and the Outcome says what happened."""

from __future__ import annotations

import json
import signal
import time

from execbox.jobs import Job, Status

from ..conftest import make_limits


def test_thread_bomb_is_contained_by_the_pids_limit(engine) -> None:
    code = """
import threading, time
n = 0
try:
    while True:
        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
        n += 1
finally:
    print(n, flush=True)
"""
    t0 = time.monotonic()
    out = engine.py(code, pids=32, wall_time_s=10)
    assert time.monotonic() - t0 < 5  # refused at once, not ended by the wall clock
    assert out.status is Status.PROCESS_LIMIT, (out.status, out.stderr[-300:])
    assert "processes" in out.exceeded
    assert b"can't start new thread" in out.stderr
    started = int(out.stdout)
    assert 16 <= started < 32, started  # threads count against pids.max with pid 1
    # and nothing of it is left on the host: the autouse check after this test


def test_filling_the_working_directory_is_capped_and_reported(engine) -> None:
    cap = engine.engine.settings.limits.default.workdir_bytes
    code = """
import json, os
written = 0
try:
    with open("/workspace/fill", "wb") as f:
        while True:
            written += f.write(b"x" * (1 << 20))
            f.flush()
finally:
    st = os.statvfs("/workspace")
    print(json.dumps({"written": written, "size": st.f_blocks * st.f_frsize}), flush=True)
"""
    out = engine.py(code, memory_bytes=cap * 4, file_size_bytes=cap * 4)
    # ENOSPC from the workdir's own tmpfs; the code's uncaught error fails it
    assert out.status is Status.FAILURE and out.exit_code == 1, out
    assert b"[Errno 28] No space left on device" in out.stderr
    res = json.loads(out.stdout)
    assert res["size"] == cap
    assert cap - (2 << 20) <= res["written"] <= cap

    # under a file size limit below the cap, the kernel's SIGXFSZ is what the status names
    out = engine.run(
        Job(
            runtime="bash",
            code="exec head -c 8M /dev/zero > /workspace/big",
            limits=make_limits(file_size_bytes=1 << 20),
        )
    )
    assert out.status is Status.FILE_SIZE_LIMIT, out
    assert out.signal == signal.SIGXFSZ and "file_size" in out.exceeded


def test_stdout_and_stderr_flooded_at_once_are_capped(engine) -> None:
    cap = 64 << 10
    t0 = time.monotonic()
    out = engine.run(
        Job(
            runtime="bash",
            # a first line on each stream, then both flood together until the cap kills
            code="echo out; echo err >&2; yes EEEEEEE >&2 & yes OOOOOOO & wait",
            limits=make_limits(output_bytes=cap, wall_time_s=10),
        )
    )
    elapsed = time.monotonic() - t0
    assert out.status is Status.OUTPUT_LIMIT, (out.status, out.stderr[-200:])
    assert out.exceeded == {"output"}
    assert elapsed < 3, elapsed  # killed at the cap, not at the wall clock
    assert out.stdout_truncated or out.stderr_truncated
    for data, truncated, first, line in (
        (out.stdout, out.stdout_truncated, b"out\n", b"OOOOOOO\n"),
        (out.stderr, out.stderr_truncated, b"err\n", b"EEEEEEE\n"),
    ):
        assert len(data) <= cap
        if truncated:
            assert len(data) == cap
        # each stream its own: nothing of the other crossed over
        assert data.startswith(first) and set(data[len(first) :]) <= set(line), data[:100]


def test_cpu_burn_within_the_limits_succeeds_with_its_cpu_reported(engine) -> None:
    code = """
import time
t = time.monotonic()
while time.monotonic() - t < 0.8:
    pass
print("done")
"""
    out = engine.py(code, wall_time_s=3, cpu_time_s=3)
    assert (out.status, out.stdout, out.exceeded) == (Status.SUCCESS, b"done\n", frozenset())
    cpu, wall = out.usage.cpu_time_ns, out.usage.wall_time_ns
    assert cpu is not None and wall is not None
    assert 0.8e9 <= wall < 3e9, wall
    # one busy thread: its cpu time is its wall time, less what a busy host takes from it
    assert 0.75 * wall <= cpu <= wall * 1.05 + 20e6, (cpu, wall)
