"""Lifecycle (Faber's heading): a server that ran abusive code and stopped leaves nothing
on the host. (After every other test of the matrix, the autouse check in conftest.py
asserts the same of the shared engine while it runs.)

A real server process is started for this: its own engine, zygotes, uid ranges, cgroups
and session workspace. It runs daemons, a timeout, a fork bomb, a memory bomb and a
session with a FIFO and a background process, deletes the session, closes, and exits.
Then the host is searched for anything of it."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from tests.mounts import unmount_below

from .conftest import (
    cmdlines_containing,
    host_processes,
    loop_backing_files,
    mount_points,
    real_uid,
)

SERVER = textwrap.dedent(
    """
    import asyncio, dataclasses, json, os, sys
    from execbox.config import Settings
    from execbox.engine import Engine
    from execbox.jobs import Job, Limits
    from execbox.sessions import SessionConfig, Sessions
    from execbox.store.sqlite import Store

    state, marker = sys.argv[1], sys.argv[2]
    pid = os.getpid()
    settings = Settings.from_env(env={}, pool_size=1, runtimes=("python", "bash"),
                                 uid_base=150_000_000 + (pid % 1000) * 32768, state_dir=state)
    store = Store(os.path.join(state, "execbox.db"))
    sessions = Sessions(store, SessionConfig(
        root=os.path.join(state, "sessions"), uid_base=7_000_000 + (pid % 1000) * 1000,
        uid_count=1000, quota_bytes=8 << 20, idle_ttl_s=3600))
    sessions.prepare()

    def lim(**kw):
        return dataclasses.replace(Limits(wall_time_s=5, cpu_time_s=5), **kw)

    DAEMON = f'''
    import os
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv("/bin/sleep", ["sleep-{marker}", "60"])
        os._exit(0)
    '''

    async def main():
        engine = Engine(settings, sessions)
        await engine.start()
        jobs = [
            Job("python", code=DAEMON, limits=lim()),
            Job("bash", code=f"(setsid bash -c 'exec -a sleep-{marker} sleep 100' &); sleep 100",
                limits=lim(wall_time_s=0.5)),
            Job("bash", code="bomb() { bomb | bomb & }; bomb; sleep 5",
                limits=lim(wall_time_s=0.5, pids=16)),
            Job("python", code="x = []\\nwhile True:\\n    x.append(bytearray(16 << 20))",
                limits=lim(memory_bytes=64 << 20)),
        ]
        outs = list(await asyncio.gather(*(engine.run(j) for j in jobs)))
        outs.append(await engine.run(Job("python", session="lc", limits=lim(),
            code="import os; os.mkfifo('p'); open('f', 'w').write('x')")))
        outs.append(await engine.run(Job("bash", session="lc", limits=lim(),
            code=f"nohup bash -c 'exec -a sleep-{marker} sleep 100' >/dev/null 2>&1 & echo bg")))
        report = {
            "pid": pid,
            "statuses": [o.status.value for o in outs],
            "zygotes": [z.proc.pid for z in engine.zygotes.values()],
            "uids": [[z.launch.uid_base, z.launch.uid_base + z.launch.uid_count]
                     for z in engine.zygotes.values()]
                    + [[sessions.cfg.uid_base, sessions.cfg.uid_base + sessions.cfg.uid_count]],
            # what the engine used: execbox/<pid>, the parent of each zygote's prefix
            "cgroup_prefix": sorted({os.path.dirname(z.launch.cgroup_prefix)
                                     for z in engine.zygotes.values()}),
            "roots": [z.launch.root for z in engine.zygotes.values()],
            "sessions_root": sessions.root,
        }
        sessions.delete("lc")  # what the API's DELETE /sessions/{id} does
        await engine.close()
        store.close()
        print(json.dumps(report))

    asyncio.run(main())
    """
)


@pytest.fixture(scope="module")
def stopped_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    if os.geteuid() != 0:
        pytest.fail("the sandbox tests need root, as execbox itself does")
    state = str(tmp_path_factory.mktemp("lifecycle-state"))
    marker = f"execbox-lifecycle-{os.getpid()}"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", SERVER, state, marker],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        report = json.loads(proc.stdout.splitlines()[-1])
        report.update(state=state, marker=marker)
        yield report
    finally:
        unmount_below(state)  # only if the test failed: it asserts nothing is mounted there


def test_a_stopped_server_leaves_no_process_cgroup_or_mount(stopped_server: dict) -> None:
    r = stopped_server
    assert r["statuses"] == [
        "success",  # daemonized, then exited
        "timeout",
        "timeout",  # the fork bomb, held by pids.max, then ended at the wall clock
        "memory_limit",
        "success",  # the session's FIFO
        "success",  # the session's background process
    ]
    # processes: nothing runs as any of its uids, nothing carries the daemons' marker,
    # its zygotes are gone
    procs = host_processes()
    left = [
        (pid, st.get("Name"))
        for pid, st in procs.items()
        if any(lo <= real_uid(st) < hi for lo, hi in r["uids"])
    ]
    assert left == []
    assert cmdlines_containing(r["marker"]) == [], "a daemon outlived its server"
    assert not set(r["zygotes"]) & set(procs)
    # cgroups: its tree is gone from every hierarchy
    assert len(r["cgroup_prefix"]) == 1, r["cgroup_prefix"]  # one tree for the server
    tree = r["cgroup_prefix"][0]
    assert glob.glob(f"/sys/fs/cgroup/*/{tree}") + glob.glob(f"/sys/fs/cgroup/{tree}") == []
    # mounts and loop devices: nothing below its state directory; no session directory
    state = os.path.realpath(r["state"])
    below = [m for m in mount_points() if m == state or m.startswith(state + "/")]
    # the sessions directory's own bind mount stays, on purpose: it is the shared mount
    # that lets a restarted server's zygotes see the workspaces (Sessions.prepare)
    assert below == [r["sessions_root"]], below
    assert [b for b in loop_backing_files() if b.startswith(state + "/")] == []
    assert os.listdir(r["sessions_root"]) == []


def test_a_stopped_server_leaves_no_temporary_directory(stopped_server: dict) -> None:
    roots = glob.glob(f"/tmp/.execbox-root-{stopped_server['pid']}-*")
    for path in roots:  # clean up after the check: they are empty
        shutil.rmtree(path, ignore_errors=True)
    assert sorted(roots) == [], roots
    # the exact roots its zygotes used, whatever the naming scheme
    assert stopped_server["roots"] and not any(map(os.path.exists, stopped_server["roots"]))
