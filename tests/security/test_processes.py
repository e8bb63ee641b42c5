"""Processes (Faber's heading): kill(-1) reaches only the sandbox's own processes, and
daemons that double-fork out of the code's way die with the execution."""

from __future__ import annotations

import json
import secrets
import subprocess
import threading
import time

import pytest

from execbox.jobs import Job, Status

from ..conftest import make_limits, nice_of
from .conftest import cmdlines_containing


def test_kill_minus_one_kills_only_the_sandboxs_own_processes(engine) -> None:
    host_victim = subprocess.Popen(["sleep", "30"])
    zygotes = {name: z.proc.pid for name, z in engine.engine.zygotes.items() if z.proc}
    try:
        # a neighbour sandbox with a child of its own, running through the attack
        victim = Job(
            runtime="bash",
            code="echo start=$EPOCHREALTIME; sleep 30 & child=$!; sleep 1.5; "
            "kill -0 $child && echo child-alive; echo end=$EPOCHREALTIME; echo victim-done",
            limits=make_limits(wall_time_s=10),
        )
        # the attacks: from the program (pid 2 under the sandbox's init) and from pid 1
        shell = Job(
            runtime="bash",
            code="sleep 0.3; sleep 30 & sleep 30 & kill -9 -1; echo rc=$?; echo at=$EPOCHREALTIME; "
            "wait; echo done",
            limits=make_limits(wall_time_s=10),
        )
        python = Job(
            runtime="python",
            code="""
import json, os, signal, time
time.sleep(0.3)
kids = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    kids.append(pid)
os.kill(-1, signal.SIGKILL)
at = time.time()
codes = [os.waitstatus_to_exitcode(os.waitpid(k, 0)[1]) for k in kids]
print(json.dumps({"me": os.getpid(), "kids": codes, "at": at}))
""",
            limits=make_limits(wall_time_s=10),
        )
        t0 = time.monotonic()
        v, a, p = engine.many([victim, shell, python])
        elapsed = time.monotonic() - t0
        # the attackers' own children died, the attackers lived and ended normally
        shell_out = dict(line.split("=", 1) for line in a.stdout.decode().split()[:2])
        assert a.status is Status.SUCCESS and shell_out["rc"] == "0", a
        assert a.stdout.endswith(b"\ndone\n"), a
        assert p.status is Status.SUCCESS, p.stderr
        py_out = json.loads(p.stdout)
        assert (py_out["me"], py_out["kids"]) == (1, [-9, -9])
        # nothing else was reached: the neighbour, its child, the host, the zygotes
        lines = v.stdout.decode().split()
        assert v.status is Status.SUCCESS, v
        assert lines[1:2] + lines[3:] == ["child-alive", "victim-done"], v
        # and the neighbour was running while both attacks were made
        start, end = float(lines[0].split("=")[1]), float(lines[2].split("=")[1])
        assert start < float(shell_out["at"]) < end, (start, shell_out, end)
        assert start < py_out["at"] < end, (start, py_out, end)
        assert elapsed < 8, elapsed  # the attackers' 30 s sleeps were killed
        assert host_victim.poll() is None  # root's: out of the sandbox's reach by uid too
        for name, pid in zygotes.items():
            z = engine.engine.zygotes[name]
            assert z.proc is not None and z.proc.pid == pid and z.proc.poll() is None, name
        assert engine.py("print('after')").stdout == b"after\n"
    finally:
        host_victim.kill()
        host_victim.wait()


DAEMONS = {
    "python": """
import os, signal, time
pid = os.fork()
if pid == 0:
    os.setsid()
    if os.fork() == 0:  # the daemon: no session leader, deaf to SIGHUP and SIGTERM
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.execv("/bin/sleep", ["sleep-{marker}", "60"])
    os._exit(0)
os.waitpid(pid, 0)
print("daemonized", flush=True)
time.sleep(1)
""",
    "bash": """
trap '' HUP TERM
( setsid bash -c 'exec -a sleep-{marker} sleep 60' </dev/null >/dev/null 2>&1 & )
nohup bash -c 'exec -a sleep-{marker} sleep 60' </dev/null >/dev/null 2>&1 & disown
echo daemonized
sleep 1
""",
}


@pytest.mark.parametrize("runtime", sorted(DAEMONS))
def test_double_forked_daemons_die_with_the_execution(engine, runtime: str) -> None:
    marker = f"execbox-daemon-{secrets.token_hex(6)}"
    seen: list[int] = []

    def watch() -> None:  # the host sees the daemons while the execution runs
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            seen.extend(cmdlines_containing(marker))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    out = engine.run(
        Job(
            runtime=runtime,
            code=DAEMONS[runtime].replace("{marker}", marker),
            limits=make_limits(wall_time_s=10),
        )
    )
    # The answer comes before the sandbox's teardown: its init has SIGKILLed the rest of
    # its pid namespace, but a killed process on a busy host may not have been scheduled to
    # exit yet, and its cmdline stays readable until then. It never runs user code again;
    # it must be gone shortly, while a daemon that escaped would live on for 60 s.
    deadline = time.monotonic() + 2
    while (left := cmdlines_containing(marker)) and time.monotonic() < deadline:
        time.sleep(0.02)
    watcher.join()
    assert (out.status, out.stdout) == (Status.SUCCESS, b"daemonized\n"), out
    assert seen, "the daemons never ran: the test would prove nothing"
    assert left == [], f"daemons outlived the execution: {left}"


def test_the_sandbox_is_its_own_process_group_and_cannot_raise_its_priority(engine) -> None:
    """Its init leads a process group of its own, so a signal or a priority sent to "my
    group" stays inside; and no process of it can go below nice 0."""
    zygote = engine.engine.zygotes["python"].proc.pid
    before = nice_of(zygote)
    out = engine.py(
        """
import errno, json, os
res = {"sid": os.getsid(0), "pgid": os.getpgid(0), "pid": os.getpid()}
os.setpriority(os.PRIO_PGRP, 0, 19)  # the whole group: only the sandbox's own processes
res["niced"] = os.getpriority(os.PRIO_PROCESS, 0)
for how in ("back", "below", "nice"):
    try:
        if how == "nice":
            os.nice(-1)
        else:
            os.setpriority(os.PRIO_PROCESS, 0, 0 if how == "back" else -5)
        res[how] = "done"
    except OSError as exc:
        res[how] = errno.errorcode[exc.errno]
res["after"] = os.getpriority(os.PRIO_PROCESS, 0)
print(json.dumps(res))
"""
    )
    assert out.status is Status.SUCCESS, out.stderr
    res = json.loads(out.stdout)
    # its session's leader is outside its pid namespace (0); a session of its own would
    # cost a scheduler autogroup per sandbox
    assert (res["sid"], res["pgid"], res["pid"]) == (0, 1, 1), res
    assert (res["niced"], res["after"]) == (19, 19), res
    assert {res["back"], res["below"], res["nice"]} <= {"EACCES", "EPERM"}, res
    assert nice_of(zygote) == before == 0  # the group it reniced did not include the zygote
    node = engine.run(
        Job(
            runtime="node",
            code="const os = require('os');"
            "try { os.setPriority(-1); console.log('raised'); } catch (e) { console.log(e.code); }"
            "console.log(os.getPriority());",
        )
    )
    assert node.status is Status.SUCCESS, node.stderr
    assert node.stdout.split() == [b"ERR_SYSTEM_ERROR", b"0"], node.stdout
