"""The two Python zygotes: code that names numpy runs where numpy is imported already, any
other Python code in the lean zygote, and either one runs any code."""

from __future__ import annotations

import dataclasses
import os
import signal
import time

import pytest

from execbox import runtimes
from execbox.jobs import Job, Status
from execbox.sandbox.supervisor import Supervisor

from ..conftest import make_limits

# True in a sandbox of the heavy zygote: numpy was imported before the code ran. The code
# spells the name so that it does not name the module itself.
HAS_NUMPY = "import sys\nprint('nu' + 'mpy' in sys.modules)"


def _counts(engine, name: str) -> int:
    stats = engine.engine.zygotes[name].stats
    return stats["hits"] + stats["misses"]


def test_code_naming_numpy_runs_in_the_zygote_that_imported_it(engine) -> None:
    heavy = _counts(engine, runtimes.PYTHON_HEAVY)
    lean = _counts(engine, "python")
    out = engine.py(HAS_NUMPY + "\nimport numpy as np\nprint(np.arange(10).sum())")
    assert out.status is Status.SUCCESS, out.stderr
    assert out.stdout == b"True\n45\n"
    out = engine.py(HAS_NUMPY)
    assert out.status is Status.SUCCESS and out.stdout == b"False\n"
    assert _counts(engine, runtimes.PYTHON_HEAVY) == heavy + 1
    assert _counts(engine, "python") == lean + 1


def test_a_python_file_naming_numpy_counts_too(engine) -> None:
    helper = b"from numpy import arange\n\ndef total():\n    return arange(4).sum()\n"
    job = Job(
        runtime="python",
        code=HAS_NUMPY + "\nimport helper\nprint(helper.total())",
        files={"helper.py": helper},
        limits=make_limits(),
    )
    out = engine.run(job)
    assert out.status is Status.SUCCESS, out.stderr
    assert out.stdout == b"True\n6\n"


def test_the_lean_zygote_imports_numpy_when_the_code_does_so_unnamed(engine) -> None:
    out = engine.py(HAS_NUMPY + "\nm = __import__('nu' + 'mpy')\nprint(m.arange(5).sum())")
    assert out.status is Status.SUCCESS, out.stderr
    assert out.stdout == b"False\n10\n"


def test_while_the_heavy_zygote_is_down_the_lean_one_runs_its_jobs(engine) -> None:
    sup = engine.engine.zygotes[runtimes.PYTHON_HEAVY]
    was, sup.ready = sup.ready, False  # what a dead or restarting zygote shows
    try:
        out = engine.py(HAS_NUMPY + "\nimport numpy\nprint(numpy.ones(3).sum())")
    finally:
        sup.ready = was
    assert out.status is Status.SUCCESS, out.stderr
    assert out.stdout == b"False\n3.0\n"


@pytest.mark.parametrize(
    ("code", "heavy"),
    [
        ("import numpy as np", True),
        ("from numpy.linalg import norm", True),
        ("x = 1  # numpy later", True),
        ("import numpyish", False),
        ("import mynumpy", False),
        ("_numpy = 1", False),
        ("numpy_x = 1", False),
        ("np = sys.modules['numpy']", True),
        ("print(1 + 1)", False),
    ],
)
def test_the_heavy_zygote_is_chosen_by_the_module_named_as_a_word(code: str, heavy: bool) -> None:
    pattern = runtimes.heavy_names(("numpy",))
    want = runtimes.PYTHON_HEAVY if heavy else "python"
    assert runtimes.zygote_for(Job(runtime="python", code=code), pattern) == want


def test_only_python_jobs_go_to_the_heavy_zygote_and_only_when_it_exists() -> None:
    pattern = runtimes.heavy_names(("numpy.linalg", "pandas"))
    assert runtimes.zygote_for(Job(runtime="python", code="import pandas"), pattern) == (
        runtimes.PYTHON_HEAVY
    )
    assert runtimes.zygote_for(Job(runtime="bash", code="echo numpy"), pattern) == "bash"
    assert runtimes.zygote_for(Job(runtime="command", argv=["numpy"]), pattern) == "bash"
    # a non-Python file naming it does not count
    job = Job(runtime="python", code="print(1)", files={"notes.txt": b"numpy"})
    assert runtimes.zygote_for(job, pattern) == "python"
    # a .py file is searched as it is, as a word there too
    job = Job(runtime="python", code="print(1)", files={"a.py": b"# \xff\nimport pandas\n"})
    assert runtimes.zygote_for(job, pattern) == runtimes.PYTHON_HEAVY
    job = Job(runtime="python", code="print(1)", files={"a.py": b"import pandas_ext\n"})
    assert runtimes.zygote_for(job, pattern) == "python"
    assert runtimes.heavy_names(()) is None
    assert runtimes.zygote_for(Job(runtime="python", code="import numpy"), None) == "python"


def _zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"


def test_a_heavy_zygote_that_dies_during_the_take_leaves_the_job_to_the_lean_one(
    engine,
) -> None:
    sup = engine.engine.zygotes[runtimes.PYTHON_HEAVY]
    job = Job(runtime="python", code=HAS_NUMPY + "\nimport numpy\nprint(numpy.ones(2).sum())")
    job = dataclasses.replace(job, limits=make_limits())

    async def die_then_run():  # type: ignore[no-untyped-def]
        assert sup.ready and sup.proc is not None
        os.kill(sup.proc.pid, signal.SIGKILL)
        # dead before the loop can hear of it: the engine still takes it for ready, and
        # its take meets the dead socket
        deadline = time.monotonic() + 10
        while not _zombie(sup.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert sup.ready
        return await engine.engine.run(job)

    out = engine.call(die_then_run())
    assert out.status is Status.SUCCESS, (out.error, out.stderr)
    assert out.stdout == b"False\n2.0\n"  # the lean zygote, which imported numpy for it
    # and the heavy one is restarted
    deadline = time.monotonic() + 60
    while not sup.ready and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sup.ready, sup.last_error
    out = engine.py(HAS_NUMPY + "\nimport numpy")
    assert out.status is Status.SUCCESS and out.stdout == b"True\n"


def test_health_warns_of_a_heavy_zygote_down_or_without_its_modules(engine) -> None:
    eng = engine.engine
    assert eng.health()[runtimes.PYTHON_HEAVY] == {
        "ready": True, "error": None, "memory_mb": 256, "fallback": "python",
    }  # fmt: skip
    launch = dataclasses.replace(
        eng._launch(0, runtimes.PYTHON_HEAVY),
        name="python-probe",
        root=eng._root_of("python-probe"),
        preload=["json", "execbox_no_such_module"],
        uid_base=160_000_000 + (os.getpid() % 1000) * 64,
        uid_count=64,
        pool_size=1,
    )
    probe = Supervisor(launch)
    real = eng.zygotes[runtimes.PYTHON_HEAVY]
    engine.call(probe.start())  # a module it cannot import does not keep it from starting
    try:
        assert probe.ready
        assert list(probe.preload_failed) == ["execbox_no_such_module"]
        assert "ModuleNotFoundError" in probe.preload_failed["execbox_no_such_module"]
        eng.zygotes[runtimes.PYTHON_HEAVY] = probe
        state = eng.health()[runtimes.PYTHON_HEAVY]
        assert state["ready"] is False
        assert state["error"].startswith("cannot import execbox_no_such_module: ")
        assert eng.health()["python"]["ready"] is True  # python itself still serves
    finally:
        eng.zygotes[runtimes.PYTHON_HEAVY] = real
        engine.call(probe.close())
        os.rmdir(launch.root)
