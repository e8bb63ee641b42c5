"""Warm pools: never reused, limits applied to pooled sandboxes, growing and shrinking."""

from __future__ import annotations

import os
import time

from execbox.jobs import Job, Status
from execbox.sandbox import libc, mounts
from execbox.sandbox import zygote as zygote_mod

from ..conftest import make_limits, nice_of


def test_pooled_sandboxes_are_never_reused(engine) -> None:
    code = (
        "import os\nprint(open('/proc/self/uid_map').read().split()[1], "
        "os.path.exists('/tmp/m'))\nopen('/tmp/m', 'w')"
    )
    outs = []
    for _ in range(6):
        outs.append(engine.py(code))
        time.sleep(0.1)  # let the pool refill, so these are pooled sandboxes
    assert all(o.pool_hit for o in outs[1:]), [o.pool_hit for o in outs]
    # no sandbox saw a marker: each started fresh
    assert all(o.stdout.split()[1] == b"False" for o in outs)


def test_per_request_limits_hold_in_pooled_sandboxes(engine) -> None:
    engine.py("print(1)")  # the pool is warm
    out = engine.py(
        "x = bytearray(200 << 20); x[::4096] = b'x' * len(x[::4096])", memory_bytes=64 << 20
    )
    assert out.pool_hit and out.status is Status.MEMORY_LIMIT
    out = engine.py("import os\nfor _ in range(50):\n    os.fork()", pids=8)
    assert out.pool_hit and "processes" in out.exceeded
    # and the next pooled sandbox has the defaults back
    out = engine.py("x = bytearray(200 << 20); x[::4096] = b'x' * len(x[::4096]); print('ok')")
    assert out.status is Status.SUCCESS and out.stdout == b"ok\n"


def test_pools_grow_under_load_and_shrink_when_idle(engine) -> None:
    sup = engine.engine.zygotes["bash"]
    floor = engine.engine.settings.pool_min
    engine.many([Job(runtime="bash", code="sleep 0.3", limits=make_limits()) for _ in range(12)])
    grown = sup.pool_target
    assert grown > floor, grown
    deadline = time.monotonic() + 10
    while sup.pool_target > floor or sup.pool_size > floor:
        assert time.monotonic() < deadline, (sup.pool_target, sup.pool_size)
        time.sleep(0.1)
    assert sup.refill_ms and all(ms > 0 for ms in sup.refill_ms)


def test_offered_sandboxes_are_given_back_when_the_pool_shrinks(engine) -> None:
    """Ready Python sandboxes are offered to the engine ahead of their take; only the
    engine may withdraw an offer. Once idle, the pool is back to its floor: in the engine's
    offers, in the zygote's count, and in the sandboxes that exist."""
    sup = engine.engine.zygotes["python"]
    floor = engine.engine.settings.pool_min
    jobs = [Job(runtime="python", code="import time; time.sleep(0.3)") for _ in range(12)]
    engine.many(jobs)
    assert sup.pool_target > floor, sup.pool_target
    # the grown pool's ready sandboxes are offered (before the idle pool shrinks, 2 s on)
    deadline = time.monotonic() + 1.5
    while len(sup._offers) <= floor:
        assert time.monotonic() < deadline, ("not offered", len(sup._offers), sup.pool_size)
        time.sleep(0.02)
    deadline = time.monotonic() + 10
    while True:
        with open(f"/proc/{sup.proc.pid}/task/{sup.proc.pid}/children") as f:
            sandboxes = len(f.read().split()) - 1  # its cloner is a child too
        state = (sup.pool_target, len(sup._offers), sup.pool_size, sandboxes)
        if max(state) <= floor:
            break
        assert time.monotonic() < deadline, state
        time.sleep(0.1)
    out = engine.py("print(1)")  # and what is left still serves
    assert out.status is Status.SUCCESS and out.pool_hit


def test_nothing_left_behind_after_a_burst(engine) -> None:
    from .test_faults import _cgroups_below

    sup = engine.engine.zygotes["python"]
    outs = engine.many([Job(runtime="python", code="print(1)") for _ in range(32)])
    assert all(o.status is Status.SUCCESS for o in outs)
    time.sleep(0.5)
    names = {p.rsplit("/", 1)[1] for p in _cgroups_below(sup.launch.cgroup_prefix)}
    assert len(names) <= max(sup.pool_size, sup.pool_target) + 1, names
    # every slot is back: each was held until its sandbox was reaped, not only answered
    slots = engine.engine._slots
    assert slots._value == engine.engine.settings.max_concurrency, slots


def test_prestarted_node_behaves_like_a_fresh_node(engine) -> None:
    code = (
        "const fs = require('fs');\n"
        "console.log(JSON.stringify({cwd: process.cwd(), argv: process.argv.slice(1),"
        " env: process.env.GREETING, keys: Object.keys(process.env).includes('HOME'),"
        " main: require.main === module, fds: fs.readdirSync('/proc/self/fd').length,"
        " cache: Object.keys(require.cache), children: module.children.length,"
        # the warm-up's empty writes on the real stdio: nothing written, nothing queued
        " written: [process.stdout.bytesWritten, process.stdout.writableLength,"
        " process.stderr.bytesWritten, process.stderr.writableLength]}));"
        # the warm-up's module is in the read-only root, and what it looked up there too
        f"for (const p of ['{mounts.WARM_MODULE}', '/.execbox/package.json', '/package.json'])"
        " try { fs.writeFileSync(p, '{\"type\": \"module\"}'); console.log('wrote', p); }"
        " catch (e) { console.log(e.code); }"
    )
    for _ in range(3):  # pooled, prestarted sandboxes each time
        out = engine.run(Job(runtime="node", code=code, env={"GREETING": "hi"}))
        assert out.status is Status.SUCCESS, out.stderr
        first, *writes = out.stdout.decode().splitlines()
        res = __import__("json").loads(first)
        assert res["cwd"] == "/workspace" and res["env"] == "hi" and res["main"] is True
        assert res["argv"] == ["/tmp/.execbox/main.js"] and res["keys"] is True
        # the module the prelude loaded to warm node's loader left no trace in the job's
        assert res["cache"] == ["/tmp/.execbox/main.js"] and res["children"] == 0, res
        assert writes == ["EROFS"] * 3, writes
        assert res["written"] == [0, 0, 0, 0], res
        silent = engine.run(Job(runtime="node", code="let quiet = true"))
        assert (silent.stdout, silent.stderr, silent.exit_code) == (b"", b"", 0), silent
        time.sleep(0.1)


def test_prestarted_node_gets_the_jobs_limits_and_is_not_billed_for_its_start(engine) -> None:
    time.sleep(0.3)  # a warm, prestarted sandbox
    out = engine.run(
        Job(
            runtime="node",
            code="const f = []; for (let i = 0; i < 100; i++) "
            "f.push(require('fs').openSync('/dev/null'))",
            limits=make_limits(fds=48),
        )
    )
    assert out.status is Status.FAILURE and b"EMFILE" in out.stderr
    time.sleep(0.3)
    out = engine.run(Job(runtime="node", code="console.log(1)"))
    assert out.pool_hit and out.status is Status.SUCCESS
    # Node's own start costs ~30 ms of cpu; it ran before the job and is not counted
    assert out.usage.cpu_time_ns < 20_000_000, out.usage


BASH_PROBE = r"""
read -r -a stat < /proc/$$/stat
read -r up _ < /proc/uptime
age=$(( ${up%.*}${up#*.} - ${stat[21]} ))  # centiseconds since bash started (HZ=100)
echo "age=$age"
echo "args=$0|$*|$#"
echo "pwd=$PWD old=${OLDPWD-unset} lvl=$SHLVL"
env | grep -v '^_=' | sort
"""


def _bash_probe(engine, env: dict[str, str]) -> tuple[int, list[str]]:
    out = engine.run(Job(runtime="bash", code=BASH_PROBE, env=env))
    assert out.status is Status.SUCCESS, out.stderr
    lines = out.stdout.decode().splitlines()
    return int(lines[0].removeprefix("age=")), lines[1:]


def test_prestarted_bash_behaves_like_a_fresh_bash(engine) -> None:
    time.sleep(0.5)  # the pool's bash started by now, before the job existed
    age, warm = _bash_probe(engine, {"GREETING": "hi there"})
    assert age >= 30, f"bash started {age} cs before the job: not prestarted"
    # a name bash cannot hold as a variable makes a fresh bash: the same view otherwise
    age_cold, cold = _bash_probe(engine, {"GREETING": "hi there", "NOT-A-NAME": "x"})
    assert age_cold < 30, age_cold
    assert "NOT-A-NAME=x" in cold
    assert warm == [line for line in cold if line != "NOT-A-NAME=x"], (warm, cold)
    assert "args=/tmp/.execbox/main.sh||0" in warm and "GREETING=hi there" in warm
    assert "pwd=/workspace old=unset lvl=1" in warm


def test_prestarted_bash_keeps_a_scripts_exit_signal_stdin_and_return(engine) -> None:
    time.sleep(0.3)
    out = engine.run(Job(runtime="bash", code='read x; echo "got $x"; exit 7', stdin=b"in\n"))
    assert (out.status, out.exit_code, out.stdout) == (Status.FAILURE, 7, b"got in\n")
    out = engine.run(Job(runtime="bash", code="kill -TERM $$"))
    assert (out.status, out.signal) == (Status.SIGNALED, 15)
    # `return` outside a function is an error in a script, as in a fresh bash
    out = engine.run(Job(runtime="bash", code="return 5"))
    assert out.exit_code == 2 and b"can only `return'" in out.stderr
    # and a command in the bash pool is its own program, not a bash builtin's view of it
    out = engine.run(Job(runtime="command", argv=["/bin/sh", "-c", "echo $0"]))
    assert out.stdout == b"/bin/sh\n"


def test_prestarted_node_exits_as_a_fresh_node_would(engine) -> None:
    # the warm node leaves without V8's teardown, but only once the program is done
    cases = {
        "process.on('exit', c => { console.log('bye', c); process.exitCode = 4 });"
        " setTimeout(() => console.log('later'), 50); console.log('now')": (
            4, b"now\nlater\nbye 0\n", b""),
        "throw new Error('boom')": (1, b"", b"Error: boom"),
        "Promise.reject(new Error('rejected'))": (1, b"", b"Error: rejected"),
        "process.stdout.write('x'.repeat(300000)); process.exitCode = 7": (7, b"x" * 300000, b""),
    }  # fmt: skip
    for code, (exit_code, stdout, stderr) in cases.items():
        time.sleep(0.1)
        out = engine.run(Job(runtime="node", code=code))
        assert out.exit_code == exit_code, (code, out)
        assert out.stdout == stdout, (code, out.stdout[:80])
        assert stderr in out.stderr, (code, out.stderr)
        if stderr:  # node's own report of the uncaught error, to its end
            assert out.stderr.rstrip().split(b"\n")[-1].startswith(b"Node.js v"), out.stderr


def test_jobs_run_at_normal_priority(engine) -> None:
    # a sandbox is put in the idle class only for its teardown, after its end was reported,
    # and an interpreter started ahead of time waits at zygote.WARMUP_NICE: the job in it
    # runs in the normal class at nice 0, from a ready sandbox or from one taken while it
    # was still starting (threads: node's own, started during its warm-up)
    stat = "/proc/self/task/*/stat"
    programs = {
        "python": "import os; print(os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0))",
        "node": "const fs = require('fs'); const t = '/proc/self/task/';"
        "const f = fs.readdirSync(t).map(p => fs.readFileSync(t + p + '/stat', 'utf8')"
        ".split(')').pop().trim().split(' '));"
        "console.log(f.length > 1, [...new Set(f.map(x => x[38] + ' ' + x[16]))].join())",
        "bash": f"cat {stat} | cut -d')' -f2 | cut -d' ' -f18,40 | sort -u",
    }
    # the scheduling policy and the nice of every thread (bash prints nice first)
    expect = {"python": b"0 0", "node": b"true 0 0", "bash": b"0 0"}
    for runtime, code in programs.items():
        engine.run(Job(runtime=runtime, code=code))
        time.sleep(0.3)  # the pool refills: the next one is a pooled sandbox
        out = engine.run(Job(runtime=runtime, code=code))
        assert out.pool_hit and out.stdout.strip() == expect[runtime], (runtime, out)
        burst = engine.many([Job(runtime=runtime, code=code) for _ in range(8)])
        assert not all(o.pool_hit for o in burst), "no sandbox was taken while starting"
        for o in burst:
            assert o.status is Status.SUCCESS and o.stdout.strip() == expect[runtime], o
        time.sleep(0.3)


def test_pool_target_follows_the_take_rate_not_the_sandboxes_in_flight() -> None:
    from types import SimpleNamespace

    from execbox.engine import pool_target

    now = 100.0
    # steady closed-loop load: 200 takes a second, a refill in 16 ms -> a few ahead
    steady = SimpleNamespace(
        take_times=[now - i / 200 for i in range(200)][::-1],
        refill_ms=[16.0] * 32,
        fastest_refill_ms=12.0,
        _leases={str(i): None for i in range(8)},
        pool_target=1,
    )
    assert pool_target(steady, now, 1, 1000) == 8
    # a burst of a thousand long executions on a saturated machine (refills of 800 ms):
    # not one ready sandbox per execution in flight, which nobody would take
    burst = SimpleNamespace(
        take_times=[now - 0.5] * 1000,
        refill_ms=[800.0] * 256,  # every recent one slow: the fastest is older
        fastest_refill_ms=12.0,
        _leases={str(i): None for i in range(1000)},
        pool_target=1,
    )
    assert pool_target(burst, now, 1, 1000) == 49  # refills counted as 24 ms, not 800
    # a runtime whose refill is slow even on an idle machine (node: ~60 ms) keeps more
    slow = SimpleNamespace(
        **{**steady.__dict__, "refill_ms": [60.0] * 32, "fastest_refill_ms": 55.0}
    )
    assert pool_target(slow, now, 1, 1000) == 25
    # idle: back to the floor
    assert pool_target(steady, now + 10, 1, 1000) == 1


def _syscall(pid: int) -> list[str]:
    with open(f"/proc/{pid}/syscall") as f:
        return f.read().split()


def test_a_node_sandbox_is_ready_only_once_node_waits_for_the_job(engine) -> None:
    """Node takes ~70 ms of cpu to start and warm up. A sandbox whose init waits for its job
    (a read of fd 3) must have its node waiting too (a read of fd 4): else a job handed to
    it, counted as a pool hit, would wait for node's start. The start gives way to running
    jobs (a nice, where the zygote can undo one); once ready, the sandbox is offered to the
    engine and waits at normal priority, as a job may be written to it at any moment."""
    sup = engine.engine.zygotes["node"]
    zygote = sup.proc.pid
    engine.run(Job(runtime="node", code="console.log(1)"))  # the pool refills from here
    ready: set[int] = set()
    starting_nice: set[int] = set()
    warmup_nice = zygote_mod.WARMUP_NICE if libc.has_capability(libc.CAP_SYS_NICE) else 0
    # until a start and a ready sandbox were both seen: the refill waits for the used
    # sandbox's teardown, which runs in the idle class (later on a busy machine)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (ready and warmup_nice in starting_nice):
        with open(f"/proc/{zygote}/task/{zygote}/children") as f:
            kids = [int(p) for p in f.read().split()]
        for init in kids:
            try:
                with open(f"/proc/{init}/task/{init}/children") as f:
                    node = int(f.read().split()[0])
                if _syscall(init)[:2] != ["0", "0x3"]:
                    # its init has not said ready yet (or it ran the job above, and ends)
                    starting_nice.add(nice_of(node))
                    continue
                # node says ready just before its read: it may be on its way there still
                for _ in range(20):
                    if _syscall(node)[:2] == ["0", "0x4"]:
                        break
                    time.sleep(0.001)
                assert _syscall(node)[:2] == ["0", "0x4"], _syscall(node)
                ready.add(node)
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue  # gone meanwhile, or no node yet
        time.sleep(0.002)
    assert ready, "no ready node sandbox was seen"
    assert warmup_nice in starting_nice, starting_nice
    time.sleep(0.1)  # the zygote unnices what it offers, at the "ready" it reads
    nices = {nice_of(node) for node in ready if os.path.exists(f"/proc/{node}")}
    assert nices == {0}, nices  # the pool's floor waits on: at least one is still there
