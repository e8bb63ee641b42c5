"""Faults: a zygote killed under load, and cleanup after every execution."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

from execbox.jobs import Job, Status

from ..conftest import make_limits


def _cgroups_below(prefix: str) -> list[str]:
    out = []
    for ctrl in ("memory", "pids", "cpuacct", "cpu"):
        base = os.path.join("/sys/fs/cgroup", ctrl, prefix)
        if os.path.isdir(base):
            for dirpath, dirnames, _ in os.walk(base):
                out += [os.path.join(dirpath, d) for d in dirnames]
    return out


def test_zygote_killed_under_load_fails_inflight_and_recovers(engine) -> None:
    sup = engine.engine.zygotes["python"]
    old_pid = sup.proc.pid
    results: list = []

    def run() -> None:
        job = Job(runtime="python", code="import time; time.sleep(5)", limits=make_limits())
        results.append(engine.run(job))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # they are running now
    t_kill = time.monotonic()
    os.kill(old_pid, signal.SIGKILL)
    for t in threads:
        t.join(10)
    elapsed = time.monotonic() - t_kill
    assert len(results) == 4
    assert all(r.status is Status.INTERNAL_ERROR for r in results), [r.status for r in results]
    assert all("zygote died" in (r.error or "") for r in results)
    assert elapsed < 1.5, elapsed  # within a second or so, not at the 5 s sleep or the wall
    deadline = time.monotonic() + 10
    while not (sup.ready and sup.proc and sup.proc.pid != old_pid):
        assert time.monotonic() < deadline, "zygote was not restarted"
        time.sleep(0.05)
    out = engine.py("print('back')")
    assert out.status is Status.SUCCESS and out.stdout == b"back\n"
    assert sup.restarts >= 1


def test_no_process_or_cgroup_left_after_executions(engine) -> None:
    sup = engine.engine.zygotes["python"]
    prefix = sup.launch.cgroup_prefix
    engine.many([Job(runtime="python", code="print(1)") for _ in range(8)])
    engine.py("import os\nfor _ in range(3):\n    os.fork()\n")  # orphans, exits at once
    time.sleep(0.3)
    live = _cgroups_below(prefix)
    # only the pooled sandboxes (waiting for a job) remain, each in its own cgroup
    assert len({os.path.basename(p) for p in live}) <= sup.launch.pool_size, live
    uid_lo = sup.launch.uid_base
    uid_hi = uid_lo + sup.launch.uid_count
    owners = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            with contextlib.suppress(FileNotFoundError):
                owners.append(os.stat(f"/proc/{p}").st_uid)
    in_range = [u for u in owners if uid_lo <= u < uid_hi]
    assert len(in_range) <= sup.launch.pool_size, in_range


def test_output_held_open_past_the_programs_end_still_gets_its_answer(engine) -> None:
    """A program that ended and said so (before its sandbox's teardown) gets its answer
    even if something still holds its stdout: what a fork bomb's hundreds of processes
    do while the teardown, in the idle class, reaches them. Here the holder is this test,
    with the pipe reopened from the engine's end, so the hold is certain."""
    sup = engine.engine.zygotes["python"]
    held: list[int] = []
    done = threading.Event()

    def hold() -> None:
        deadline = time.monotonic() + 5
        while not held and time.monotonic() < deadline and not done.is_set():
            for lease in list(sup._leases.values()):
                with contextlib.suppress(OSError):
                    held.append(os.open(f"/proc/self/fd/{lease.stdout_fd}", os.O_WRONLY))
            time.sleep(0.005)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        t0 = time.monotonic()
        out = engine.py("import time\nprint('kept', flush=True)\ntime.sleep(0.5)")
        elapsed = time.monotonic() - t0
        done.set()
        holder.join()
        assert held, "the test could not take hold of the sandbox's stdout"
        assert out.status is Status.SUCCESS and out.stdout == b"kept\n", out
        assert elapsed < 4, elapsed  # the end, plus the grace for the pipes to close
    finally:
        done.set()
        holder.join()
        for fd in held:
            os.close(fd)
