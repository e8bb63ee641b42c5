"""The two Python zygotes: code that names numpy runs where numpy is imported already, any
other Python code in the lean zygote, and either one runs any code."""

from __future__ import annotations

import pytest

from execbox import runtimes
from execbox.jobs import Job, Status

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
        ("print(1 + 1)", False),
    ],
)
def test_the_heavy_zygote_is_chosen_by_the_module_named_as_a_word(code: str, heavy: bool) -> None:
    pattern = runtimes.heavy_pattern(("numpy",))
    want = runtimes.PYTHON_HEAVY if heavy else "python"
    assert runtimes.zygote_for(Job(runtime="python", code=code), pattern) == want


def test_only_python_jobs_go_to_the_heavy_zygote_and_only_when_it_exists() -> None:
    pattern = runtimes.heavy_pattern(("numpy.linalg", "pandas"))
    assert runtimes.zygote_for(Job(runtime="python", code="import pandas"), pattern) == (
        runtimes.PYTHON_HEAVY
    )
    assert runtimes.zygote_for(Job(runtime="bash", code="echo numpy"), pattern) == "bash"
    assert runtimes.zygote_for(Job(runtime="command", argv=["numpy"]), pattern) == "bash"
    # a non-Python file naming it does not count
    job = Job(runtime="python", code="print(1)", files={"notes.txt": b"numpy"})
    assert runtimes.zygote_for(job, pattern) == "python"
    assert runtimes.heavy_pattern(()) is None
    assert runtimes.zygote_for(Job(runtime="python", code="import numpy"), None) == "python"
