"""A sandbox runs only the at-fork hooks that make its own state (random's reseed) when every
hook is known, and the interpreter's whole after-fork work when one is not."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import textwrap
import time

from execbox.config import Settings
from execbox.jobs import Status
from execbox.sandbox.supervisor import SRC_DIR, Supervisor

RANDOM = "import random, os\nprint(random.getrandbits(64), os.register_at_fork.__module__)"


def _in_runtime(code: str) -> str:
    """Run `code` in the runtime's interpreter as the zygote starts: -I, this tree first."""
    prelude = f"import sys; sys.path.insert(0, {SRC_DIR!r})\n"
    out = subprocess.run(
        [Settings().runtime_python, "-I", "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout


def test_known_hooks_leave_only_randoms_reseed_and_an_unknown_one_all() -> None:
    out = _in_runtime(
        """
        from execbox.sandbox import forkhooks
        forkhooks.record()
        import logging, random, threading
        print(forkhooks.plan() == [random._inst.seed])
        import os
        os.register_at_fork(after_in_child=lambda: None)
        print(forkhooks.plan())
        """
    )
    assert out == "True\nNone\n"


def test_a_registrant_imported_before_the_recording_means_all_hooks() -> None:
    out = _in_runtime(
        """
        import random
        from execbox.sandbox import forkhooks
        forkhooks.record()
        print(forkhooks.plan())
        """
    )
    assert out == "None\n"  # random's hook was registered unseen


def test_the_builtin_is_given_back_and_still_registers() -> None:
    out = _in_runtime(
        """
        import os
        builtin = os.register_at_fork
        from execbox.sandbox import forkhooks
        forkhooks.record()
        print(os.register_at_fork is builtin)
        forkhooks.restore()
        print(os.register_at_fork is builtin, flush=True)
        os.register_at_fork(after_in_child=lambda: print("hook", flush=True))
        if os.fork() == 0:
            os._exit(0)
        os.wait()
        """
    )
    assert out == "False\nTrue\nhook\n"


def test_sandboxes_of_the_lean_zygote_reseed_random_and_see_the_builtin(engine) -> None:
    a, b = engine.py(RANDOM), engine.py(RANDOM)
    assert a.status is Status.SUCCESS and b.status is Status.SUCCESS, (a.stderr, b.stderr)
    assert a.stdout.split()[1] == b"posix"  # not forkhooks' wrapper
    # every sandbox is a copy of the cloner: only the reseed makes these differ
    assert a.stdout.split()[0] != b.stdout.split()[0]
    # and a hook the code registers runs in the code's own forks
    out = engine.py(
        "import os\n"
        "os.register_at_fork(after_in_child=lambda: print('child hook', flush=True))\n"
        "if os.fork() == 0:\n"
        "    os._exit(0)\n"
        "os.wait()"
    )
    assert (out.status, out.stdout) == (Status.SUCCESS, b"child hook\n"), out.stderr


def test_a_zygote_with_an_unknown_hook_runs_the_whole_after_fork(engine) -> None:
    # concurrent.futures.thread registers a hook forkhooks does not know: its sandboxes take the
    # interpreter's whole after-fork work, and still reseed and run threads
    eng = engine.engine
    launch = dataclasses.replace(
        eng._launch(0, "python"),
        name="python-unknown-hook",
        root=eng._root_of("python-unknown-hook"),
        preload=["concurrent.futures.thread"],
        uid_base=170_000_000 + (os.getpid() % 1000) * 64,
        uid_count=64,
        pool_size=1,
    )
    probe = Supervisor(launch)
    real = eng.zygotes["python"]
    engine.call(probe.start())
    eng.zygotes["python"] = probe
    try:
        code = (
            RANDOM + "\nimport sys\nprint('concurrent.futures.thread' in sys.modules)\n"
            "from concurrent.futures import ThreadPoolExecutor\n"
            "with ThreadPoolExecutor(2) as pool:\n"
            "    print(sum(pool.map(abs, [-1, -2])))"
        )
        a, b = engine.py(code), engine.py(code)
        assert a.status is Status.SUCCESS and b.status is Status.SUCCESS, (a.stderr, b.stderr)
        assert a.stdout.split()[1:] == [b"posix", b"True", b"3"]
        assert a.stdout.split()[0] != b.stdout.split()[0]
        assert probe.stats["hits"] + probe.stats["misses"] == 2  # the probe ran them
    finally:
        eng.zygotes["python"] = real
        engine.call(probe.close())
        os.rmdir(launch.root)
    # a sandbox of the closed zygote that was still dying gave back its slot with it
    deadline = time.monotonic() + 5
    while eng._slots._value != eng.settings.max_concurrency:
        assert time.monotonic() < deadline, eng._slots
        time.sleep(0.02)
