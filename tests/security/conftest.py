"""The security matrix's own fixtures: after every test that ran sandboxes, nothing of
them may be left on the host (issue 7, Lifecycle), and the test fails if it is.

"Left" is judged from the host, with kernel evidence, not from what the engine believes:

- processes: every process running as one of the engine's sandbox uids must be the pid 1
  of a pooled sandbox (a child of its zygote, waiting for a job), or the interpreter a
  Node sandbox starts while it waits; nothing may run as a session uid at all;
- cgroups: every cgroup below a zygote's prefix must hold a pooled sandbox, and every
  sandbox process must be inside its zygote's prefix;
- mounts: on the host, only the sessions directory and the workspaces of existing
  sessions (and their loop devices); in each zygote's mount namespace, nothing new but
  those workspaces;
- temporary directories: no scratch directory of these tests, no zygote root but the
  engine's own, no session directory without its session.

The check waits a few seconds for the engine to settle (a sandbox just killed is reaped
and its cgroup removed a moment after its outcome is returned).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator

import pytest

from execbox.sandbox.cgroups import CgroupDriver

SCRATCH_PREFIX = f"execbox-sectest-{os.getpid()}-"
SETTLE_S = 6.0


def live_zygote_roots() -> set[str]:
    """The roots of every live zygote of any engine (the API tests' engine runs beside
    this one): each names its root on its command line."""
    found: set[str] = set()
    for proc in os.listdir("/proc"):
        if not proc.isdigit():
            continue
        try:
            with open(f"/proc/{proc}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
        except OSError:
            continue
        if "execbox.sandbox.zygote" in cmd:
            found.update(re.findall(r'"root": "(/tmp/\.execbox-root-[^"]+)"', cmd))
    return found


def scratch_dir() -> str:
    """A host directory for a test's bait and targets, found by the leftover check if a
    test forgets to remove it."""
    return tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir="/tmp")


def remove_scratch(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


# ---- reading the host ------------------------------------------------------------------------


def proc_status(pid: int | str) -> dict[str, str] | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            return {k: v.strip() for k, _, v in (line.partition(":") for line in f)}
    except OSError:
        return None


def real_uid(status: dict[str, str]) -> int:
    # /proc/<pid> itself is owned by root for a non-dumpable process (a sandbox's init,
    # Node's prestart): the Uid line is the truth
    return int(status["Uid"].split()[0])


def host_processes() -> dict[int, dict[str, str]]:
    out = {}
    for p in os.listdir("/proc"):
        if p.isdigit() and (st := proc_status(p)) is not None:
            out[int(p)] = st
    return out


def cmdlines_containing(marker: str) -> list[int]:
    found = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(p))
        except OSError:
            continue
    return found


def memory_cgroup(pid: int) -> str | None:
    """The process's cgroup in the memory hierarchy (v1), else in the unified one."""
    found: dict[str, str] = {}
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                _, ctrls, path = line.rstrip("\n").split(":", 2)
                found["memory" if "memory" in ctrls.split(",") else ctrls or "unified"] = path
    except OSError:
        return None
    return found.get("memory", found.get("unified"))


def mount_points(pid: int | str = "self") -> set[str]:
    try:
        with open(f"/proc/{pid}/mountinfo") as f:
            return {line.split()[4] for line in f}
    except OSError:
        return set()


def loop_backing_files() -> list[str]:
    out = []
    for path in glob.glob("/sys/block/loop*/loop/backing_file"):
        with contextlib.suppress(OSError), open(path) as f:
            out.append(f.read().strip())
    return out


def cgroup_dirs(prefix: str) -> dict[str, set[str]]:
    """controller root -> names of the cgroups directly below a zygote's prefix."""
    driver = CgroupDriver.detect(prefix)
    out: dict[str, set[str]] = {}
    for root in set(driver.roots.values()) if driver else ():
        try:
            out[root] = {d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))}
        except FileNotFoundError:
            out[root] = set()
    return out


# ---- the check -------------------------------------------------------------------------------


def leftovers(runner, zygote_mounts: dict[int, set[str]]) -> list[str]:  # type: ignore[no-untyped-def]
    """What sandboxes left on the host, as sentences; empty when nothing is left."""
    eng = runner.engine
    problems: list[str] = []
    if eng.stats.running or eng.stats.queued:
        problems.append(f"engine busy: {eng.stats.running} running, {eng.stats.queued} queued")
    procs = host_processes()
    scfg = runner.sessions.cfg
    for pid, st in procs.items():
        if scfg.uid_base <= real_uid(st) < scfg.uid_base + scfg.uid_count:
            problems.append(f"pid {pid} ({st.get('Name')}) runs as session uid {real_uid(st)}")
    workspaces = {
        os.path.join(runner.sessions.root, sid, "workspace") for sid in runner.store.all_sessions()
    }
    for z in eng.zygotes.values():
        if z._leases:
            problems.append(f"{z.runtime}: sandboxes handed out, not exited: {list(z._leases)}")
        if z.proc is None:
            continue
        zpid = z.proc.pid
        lo, hi = z.launch.uid_base, z.launch.uid_base + z.launch.uid_count
        mine = {pid: st for pid, st in procs.items() if lo <= real_uid(st) < hi}
        inits = {pid for pid, st in mine.items() if st.get("PPid") == str(zpid)}
        for pid, st in mine.items():
            if pid in inits:
                continue
            ppid = int(st.get("PPid", "0"))
            if z.launch.prestart and ppid in inits and st.get("NSpid", "").split()[-1] == "2":
                continue  # the interpreter a pooled Node sandbox starts ahead of its job
            problems.append(
                f"{z.runtime}: pid {pid} ({st.get('Name')}, ppid {ppid}) runs as sandbox uid "
                f"{real_uid(st)} but is no pooled sandbox"
            )
        prefix = "/" + z.launch.cgroup_prefix.strip("/") + "/"
        held: set[str] = set()
        for pid in mine:
            cg = memory_cgroup(pid)
            if cg is None:
                continue
            if not cg.startswith(prefix):
                problems.append(f"{z.runtime}: pid {pid} is outside its cgroups: {cg}")
            else:
                held.add(cg[len(prefix) :].split("/")[0])
        for root, names in cgroup_dirs(z.launch.cgroup_prefix).items():
            for name in sorted(names - held):
                problems.append(f"{z.runtime}: cgroup {root}/{name} holds no pooled sandbox")
        before = zygote_mounts.get(zpid)
        if before is not None:
            extra = mount_points(zpid) - before - workspaces
            if extra:
                problems.append(f"{z.runtime}: new mounts in the zygote's namespace: {extra}")
    root = runner.sessions.root
    host_mounts = {m for m in mount_points() if m == root or m.startswith(root + "/")}
    if host_mounts - workspaces - {root}:
        problems.append(f"mounts left below the sessions directory: {host_mounts - workspaces}")
    loops = [b for b in loop_backing_files() if b.startswith(root + "/")]
    images = {os.path.join(os.path.dirname(w), "image.ext4") for w in workspaces}
    if set(loops) - images or len(loops) > len(images):
        problems.append(f"loop devices left for deleted sessions: {loops}")
    dirs = set(os.listdir(root)) if os.path.isdir(root) else set()
    if dirs != set(runner.store.all_sessions()):
        problems.append(
            f"session directories {sorted(dirs)} != sessions {sorted(runner.store.all_sessions())}"
        )
    roots = {z.launch.root for z in eng.zygotes.values()} | live_zygote_roots()
    stray_roots = set(glob.glob(f"/tmp/.execbox-root-{os.getpid()}-*")) - roots
    if stray_roots:
        problems.append(f"zygote roots of no zygote: {stray_roots}")
    scratch = glob.glob(f"/tmp/{SCRATCH_PREFIX}*")
    if scratch:
        problems.append(f"scratch directories left: {scratch}")
    return problems


def wait_for_nothing_left(runner, zygote_mounts: dict[int, set[str]]) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + SETTLE_S
    while problems := leftovers(runner, zygote_mounts):
        if time.monotonic() > deadline:
            pytest.fail("left on the host after the test:\n  " + "\n  ".join(problems))
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def nothing_left_on_the_host(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every test of the matrix that used the engine: no process, cgroup, mount or
    temporary directory of its sandboxes is left on the host."""
    if "engine" not in request.fixturenames:
        yield
        return
    runner = request.getfixturevalue("engine")
    zygotes = [z for z in runner.engine.zygotes.values() if z.proc is not None]
    zygote_mounts = {z.proc.pid: mount_points(z.proc.pid) for z in zygotes}
    yield
    wait_for_nothing_left(runner, zygote_mounts)


# ---- helpers for the tests -------------------------------------------------------------------


def py_json(runner, code: str, **limits: object) -> dict:  # type: ignore[no-untyped-def]
    """Run Python code that prints one JSON document; it must succeed."""
    out = runner.py(code, **limits)
    assert out.status.value == "success", (out.status, out.stderr.decode()[-2000:])
    return json.loads(out.stdout)


def session_id() -> str:
    return f"sectest-{os.getpid()}-{secrets.token_hex(4)}"
