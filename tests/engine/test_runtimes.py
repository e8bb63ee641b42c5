"""Real code in real sandboxes: the four runtimes, exit codes, stderr, files, env, stdin."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from execbox import runtimes
from execbox.jobs import Job, Status


@pytest.mark.parametrize(
    ("runtime", "code"),
    [("python", "print(1+1)"), ("node", "console.log(1+1)"), ("bash", "echo $((1+1))")],
)
def test_one_plus_one(engine, runtime: str, code: str) -> None:
    out = engine.run(Job(runtime=runtime, code=code))
    assert (out.status, out.exit_code, out.stdout, out.stderr) == (Status.SUCCESS, 0, b"2\n", b"")


def test_system_exit_code(engine) -> None:
    out = engine.py("import sys; print('bye'); sys.exit(3)")
    assert out.exit_code == 3
    assert out.status is Status.FAILURE
    assert out.stdout == b"bye\n"


def test_uncaught_exception_gives_traceback_and_exit_1(engine) -> None:
    out = engine.py("def f():\n    raise ValueError('boom')\nf()")
    assert out.exit_code == 1
    err = out.stderr.decode()
    assert err.startswith("Traceback (most recent call last):")
    assert "ValueError: boom" in err
    assert "line 3, in <module>" in err
    assert "execbox" not in err  # the traceback is the user's, not the runner's


def test_system_exit_with_message(engine) -> None:
    out = engine.py("raise SystemExit('fatal: no input')")
    assert (out.exit_code, out.stderr) == (1, b"fatal: no input\n")


def test_node_and_bash_exit_codes(engine) -> None:
    assert engine.run(Job(runtime="node", code="process.exit(4)")).exit_code == 4
    out = engine.run(Job(runtime="node", code="throw new Error('nope')"))
    assert out.exit_code == 1 and b"Error: nope" in out.stderr
    out = engine.run(Job(runtime="bash", code="echo err >&2; exit 7"))
    assert (out.exit_code, out.stderr) == (7, b"err\n")


def test_numpy_imports_and_random_differs_between_sandboxes(engine) -> None:
    code = (
        "import numpy, random\n"
        "print(numpy.arange(10).sum(), numpy.random.randint(1 << 30), random.getrandbits(64))"
    )
    a, b = (
        engine.run(Job(runtime="python", code=code)),
        engine.run(Job(runtime="python", code=code)),
    )
    assert a.status is Status.SUCCESS, a.stderr
    assert a.stdout.split()[0] == b"45"
    # every sandbox is a copy of one zygote: its generators must still be reseeded
    assert a.stdout.split()[1] != b.stdout.split()[1]
    assert a.stdout.split()[2] != b.stdout.split()[2]


def test_a_forked_child_that_exits_does_not_end_the_run(engine) -> None:
    # the child runs the rest of the runner too; only the sandbox's pid 1 reports the end
    out = engine.py(
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    print('child', flush=True)\n"
        "    sys.exit(3)\n"
        "time.sleep(0.3)\n"
        "print('parent', os.wait()[1] >> 8)"
    )
    assert (out.status, out.exit_code) == (Status.SUCCESS, 0), out
    assert out.stdout == b"child\nparent 3\n", out.stdout


def test_threads_see_the_sandboxs_own_thread_ids_and_can_signal_the_main_one(engine) -> None:
    # the sandbox is cloned by a raw syscall: glibc's record of the main thread's tid and
    # threading's native_id must be the sandbox's, not the zygote's host tid
    out = engine.py(
        "import signal, threading, time\n"
        "got = []\n"
        "signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))\n"
        "main = threading.main_thread()\n"
        "def poke():\n"
        "    try:\n"
        "        signal.pthread_kill(main.ident, signal.SIGUSR1)\n"
        "    except OSError as e:\n"
        "        got.append(e.errno)\n"
        "t = threading.Thread(target=poke); t.start(); t.join(); time.sleep(0.05)\n"
        "print(got == [signal.SIGUSR1], main.native_id, threading.get_native_id())"
    )
    assert out.stdout == b"True 1 1\n", (out.stdout, out.stderr)


def test_command_with_args_files_env_and_stdin(engine) -> None:
    job = Job(
        runtime="command",
        argv=["python", "main.py", "--name", "world"],
        files={
            "main.py": b"import sys, os\nprint(sys.argv[1:], os.environ['GREETING'])\n"
            b"print(open('data/in.txt').read().strip(), sys.stdin.read().strip())\n",
            "data/in.txt": b"from a file",
        },
        env={"GREETING": "hello"},
        stdin=b"from stdin\n",
    )
    out = engine.run(job)
    assert out.status is Status.SUCCESS, out.stderr
    assert out.stdout == b"['--name', 'world'] hello\nfrom a file from stdin\n"


def test_a_command_is_looked_up_in_the_jobs_path(engine) -> None:
    argv = ["python", "-c", "import os; print(os.environ['PATH'])"]
    path = os.path.dirname(engine.engine.settings.runtime_python)  # where its python is
    found = engine.run(Job(runtime="command", argv=argv, env={"PATH": path}))
    assert (found.exit_code, found.stdout) == (0, path.encode() + b"\n"), found.stderr
    # not the sandbox's own default, nor the C library's when there is none
    lost = engine.run(Job(runtime="command", argv=argv, env={"PATH": "/nowhere"}))
    assert lost.exit_code == 127 and b"python" in lost.stderr, (lost.exit_code, lost.stderr)


def test_command_not_found_is_127(engine) -> None:
    out = engine.run(Job(runtime="command", argv=["no-such-binary"]))
    assert out.exit_code == 127
    assert b"no-such-binary" in out.stderr


def test_signal_is_reported(engine) -> None:
    out = engine.run(Job(runtime="bash", code="sh -c 'kill -SEGV $$'; echo after"))
    assert out.stdout == b"after\n"  # the child died by the signal, bash went on
    out = engine.run(Job(runtime="python", code="import ctypes; ctypes.string_at(0)"))
    assert out.status is Status.SIGNALED
    assert out.signal == 11 and out.exit_code is None


def test_timings_are_measured(engine) -> None:
    out = engine.py("print(1)")
    t = out.timings
    assert 0 < t.fork_ms < t.total_ms and 0 < t.exec_ms < t.total_ms


def test_a_file_that_is_also_a_directory_is_refused_before_any_sandbox(engine) -> None:
    from execbox.runtimes import InvalidJob

    job = Job(runtime="command", argv=["cat", "a"], files={"a": b"x", "a/b": b"y"})
    with pytest.raises(InvalidJob, match="'a/b' needs 'a' to be a directory"):
        engine.run(job)


@pytest.mark.parametrize("numpy", [False, True])
def test_python_code_sees_its_jobs_environment_and_nothing_else(engine, numpy: bool) -> None:
    """Nothing of the zygote's own environment (PATH, LANG, OPENBLAS_NUM_THREADS as it set
    them) is left in a sandbox: os.environ and the process's real environment block (what
    a program started with execv would inherit) are the job's, in both Python zygotes, and
    in its order, as a fresh interpreter given it would list them. The job sets each of the
    zygote's variables again, but a variable set again keeps its place (in a dict, and in
    libc's block), so one left behind would show first, out of the job's order."""
    code = (
        ("# numpy\n" if numpy else "")
        + "import os, json\n"
        + "print(json.dumps(list(os.environ.items())))\n"
        + "import ctypes\n"
        + "block = ctypes.POINTER(ctypes.c_char_p).in_dll(ctypes.CDLL(None), 'environ')\n"
        + "n = next(i for i in range(1000) if not block[i])\n"
        + "print(json.dumps([block[i].decode() for i in range(n)]))"
    )
    out = engine.run(Job(runtime="python", code=code, env={"GREETING": "hi"}))
    assert out.status is Status.SUCCESS, out.stderr
    want = runtimes.base_env(engine.engine.paths) | {"GREETING": "hi"}
    seen, block = (json.loads(line) for line in out.stdout.splitlines())
    assert seen == [list(item) for item in want.items()]
    assert block == [f"{k}={v}" for k, v in want.items()]


STREAMS = """
import json, sys
def props(s):
    return [s.fileno(), s.encoding, s.errors, s.line_buffering, s.seekable(),
            s.readable(), s.writable(), type(s.buffer).__name__, type(s.buffer.raw).__name__,
            s.buffer.raw.closefd, s is getattr(sys, "__" + name + "__")]
out = {}
for name in ("stdin", "stdout", "stderr"):
    out[name] = props(getattr(sys, name))
out["read"] = sys.stdin.read()
out["argv"], out["path0"] = sys.argv, sys.path[0]
out["main"] = [__name__, sys.modules["__main__"].__dict__ is globals()]
print(json.dumps(out))
"""


@pytest.mark.parametrize("numpy", [False, True])
def test_python_std_streams_are_what_python_c_has_on_pipes(engine, numpy: bool) -> None:
    """The std streams, argv and __main__ Python code finds in a sandbox (made once in the
    cloner, on a stand-in pipe) are what `python -c` started on pipes has, in both Python
    zygotes: not seekable, stdout block-buffered, stderr line-buffered with
    backslashreplace, and stdin reads the job's input."""
    code = ("# numpy\n" if numpy else "") + STREAMS
    out = engine.run(Job(runtime="python", code=code, stdin=b"in\xc3\xa9\n"))
    assert out.status is Status.SUCCESS, out.stderr
    fresh = subprocess.run(
        [engine.engine.settings.runtime_python, "-I", "-c", code],
        input=b"in\xc3\xa9\n",
        capture_output=True,
        env=runtimes.base_env(engine.engine.paths),
        check=True,
    )
    want = json.loads(fresh.stdout)
    want["path0"] = ""  # -I leaves the script's directory off the path; -c puts "" there
    assert json.loads(out.stdout) == want
    assert want["stdout"][3:5] == [False, False] and want["stderr"][2:4] == [
        "backslashreplace",
        True,
    ]


def test_what_code_does_to_its_main_streams_and_path_stays_in_its_sandbox(engine) -> None:
    """__main__, the streams, argv and sys.path are made once for every sandbox (in the
    cloner): each sandbox changes only its own copy."""
    code = (
        "import sys\n"
        "print(globals().get('left'), sys.argv, sys.path.count('/left'))\n"
        "left = 1\nsys.argv.append('left')\nsys.path.append('/left')\n"
        "sys.stdout.reconfigure(line_buffering=True)\n"
        "print(sys.stdout.line_buffering)"
    )
    for _ in range(3):
        out = engine.py(code)
        assert out.status is Status.SUCCESS, out.stderr
        assert out.stdout == b"None ['-c'] 0\nTrue\n"


ENV_PROBE = """
import ctypes, json, os, sys
from execbox.sandbox import child
start = list(os.environ.items())
child._set_env(json.loads(sys.argv[1]))
block = ctypes.POINTER(ctypes.c_char_p).in_dll(ctypes.CDLL(None), "environ")
n = next(i for i in range(1000) if not block[i])
print(json.dumps([start, list(os.environ.items()), [block[i].decode() for i in range(n)]]))
"""
L = {"LANG": "C.UTF-8"}  # so the interpreter adds no LC_CTYPE of its own (PEP 538)


@pytest.mark.parametrize(
    ("start", "job"),
    [
        (L | {"A": "1", "B": "2"}, L | {"A": "1", "B": "3", "C": "4"}),  # the start leads
        (L | {"A": "1", "B": "2"}, L | {"B": "2", "A": "1"}),  # another order
        (L | {"A": "1", "B": "2"}, L | {"A": "1"}),  # one of the start's left out
        (L, {"Z": "1"} | L),
    ],
)
def test_a_jobs_environment_set_over_the_zygotes_is_exactly_the_jobs(start, job) -> None:
    """child._set_env sets only what differs from the environment the zygote started the
    sandbox with; the result is the job's, in its order, in os.environ and in libc's block,
    whatever the start was."""
    out = subprocess.run(
        [sys.executable, "-I", "-c", ENV_PROBE, json.dumps(job)],
        env=start,
        capture_output=True,
        check=True,
    )
    before, seen, block = json.loads(out.stdout)
    assert before == [list(kv) for kv in start.items()]
    assert seen == [list(kv) for kv in job.items()]
    assert block == [f"{k}={v}" for k, v in job.items()]
