"""The end-of-run channel: how a sandbox tells the zygote its program ended, before its own
teardown (about a millisecond of unmapping that nobody needs to wait for).

An init (bash, node, commands) holds it where the program cannot reach it. A Python
sandbox runs the code in the process that reports, so the code can write to it. These
tests do that for real and show it gains nothing: it can only end its own run, with an
exit status of its choosing, as exiting would; it cannot claim a signal, fake a setup
failure, outlive its report, hang or bloat the zygote, or reach the channel in a session.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

from execbox import runtimes
from execbox.jobs import Job, Status
from execbox.sandbox import mounts

from .conftest import proc_status, session_id


def _rss_kb(pid: int) -> int:
    status = proc_status(pid)
    assert status is not None, pid
    return int(status["VmRSS"].split()[0])


WRITE_4 = "import os\ndef say(b):\n    os.write(4, b)\n"


def test_a_forged_end_ends_the_run_and_nothing_of_the_code_outlives_it(engine) -> None:
    code = WRITE_4 + (
        "import sys, time\n"
        "print('before', flush=True)\n"
        "say(b'D0\\n')\n"
        "time.sleep(20)\n"
        "print('after', flush=True)\n"
        "sys.exit(7)\n"
    )
    t = time.monotonic()
    out = engine.run(Job(runtime="python", code=code))
    # the code chose to end with status 0: that is all it got. It was killed at once
    # (the conftest checks after this test that no process of it is left).
    assert time.monotonic() - t < 10
    assert out.status is Status.SUCCESS and out.exit_code == 0, out
    assert b"after" not in out.stdout


def test_forged_setup_failure_ready_and_init_status_are_ignored(engine) -> None:
    code = WRITE_4 + "say(b'Eforged setup failure\\nR\\nS9\\n')\nraise SystemExit(3)\n"
    out = engine.run(Job(runtime="python", code=code))
    assert out.status is Status.FAILURE and out.exit_code == 3 and out.signal is None, out
    assert out.error is None


def test_a_signal_or_a_malformed_status_is_not_taken_from_python_code(engine) -> None:
    # 9 = killed by SIGKILL, 127 = stopped: not ends the runner can report; then junk
    for forged in (b"D9\n", b"D127\n", b"D99999999\n", b"D-1\n", b"Dx\n"):
        code = WRITE_4 + f"say({forged!r})\nraise SystemExit(5)\n"
        out = engine.run(Job(runtime="python", code=code))
        assert out.exit_code == 5 and out.signal is None, (forged, out)
        assert out.status is Status.FAILURE, (forged, out)


def test_flooding_the_channel_neither_hangs_nor_bloats_the_zygote(engine) -> None:
    # the zygote reads a few hundred bytes of a line, then closes its end: the flood ends
    # in EPIPE for the code, not in the zygote's memory
    code = (
        "import os, time\n"
        "os.set_blocking(4, False)\n"
        "closed, end = False, time.monotonic() + 5\n"
        "while time.monotonic() < end:\n"
        "    try:\n"
        "        os.write(4, b'x' * 4096)\n"
        "    except BlockingIOError:\n"
        "        time.sleep(0.001)\n"
        "    except BrokenPipeError:\n"
        "        closed = True\n"
        "        break\n"
        "print('closed', closed)\n"
    )
    zygote = engine.engine.zygotes["python"].proc
    assert zygote is not None
    rss_before = _rss_kb(zygote.pid)
    for _ in range(3):
        out = engine.py(code, wall_time_s=20)
        assert out.status is Status.SUCCESS, out
        assert out.stdout == b"closed True\n"
    assert _rss_kb(zygote.pid) - rss_before < 4096
    assert engine.run(Job(runtime="python", code="print(1+1)")).stdout == b"2\n"


def test_a_code_file_on_the_channel_s_number_gets_nothing_written(engine) -> None:
    # the code puts its own stdout on the channel's number: had the runner written its
    # report there, it would show in the output. It checks the fd is still its pipe, sees
    # it is not, and leaves the report to the exit.
    code = "import os\nos.dup2(1, 4)\nprint('ok')\nraise SystemExit(2)\n"
    out = engine.run(Job(runtime="python", code=code))
    assert out.stdout == b"ok\n" and out.exit_code == 2, out


def test_a_session_s_code_has_no_channel_and_reports_by_exiting(engine) -> None:
    s = session_id()
    code = (
        "import os\n"
        "print(sorted(int(f) for f in os.listdir('/proc/self/fd')))\n"
        "raise SystemExit(4)\n"
    )
    try:
        out = engine.run(Job(runtime="python", code=code, session=s))
        assert out.stdout == b"[0, 1, 2, 3]\n" and out.exit_code == 4, out
    finally:
        engine.sessions.delete(s)


def test_an_init_reports_early_and_ends_what_the_program_left_running(engine) -> None:
    # bash's background job would keep stdout open; the init ends it before reporting
    out = engine.run(Job(runtime="bash", code="sleep 30 & echo started; exit 6"))
    assert out.exit_code == 6 and out.stdout == b"started\n", out
    assert out.timings.total_ms < 5000


def test_node_says_its_exit_code_before_its_teardown_and_a_forged_one_ends_only_itself(
    engine,
) -> None:
    # the real end: exit code and all output there, answered without node's own teardown
    out = engine.run(
        Job(
            runtime="node",
            code="process.on('exit', () => console.log('bye')); console.log('hi'); "
            "process.exitCode = 3",
        )
    )
    assert out.exit_code == 3 and out.stdout == b"hi\nbye\n", out
    # the code writes a code of its own on fd 5 and goes on: it ended its own run, no more
    code = (
        "const fs = require('fs'); console.log('before'); fs.writeSync(5, '0\\n'); "
        "setTimeout(() => { console.log('after'); process.exit(9); }, 20000);"
    )
    t = time.monotonic()
    out = engine.run(Job(runtime="node", code=code))
    assert time.monotonic() - t < 10
    assert out.exit_code == 0 and out.stdout == b"before\n", out
    # garbage or a number out of range is not taken: node's real exit status is
    for forged in ("300\\n", "x\\n", "123456789012\\n"):
        code = f"require('fs').writeSync(5, '{forged}'); setTimeout(() => process.exit(6), 50);"
        out = engine.run(Job(runtime="node", code=code))
        assert out.exit_code == 6, (forged, out)


def _prelude(tmp_path, script: str, warm: str | None = None) -> tuple[int, bytes]:  # type: ignore[no-untyped-def]
    """Run node_prelude.js on the host, as a pooled sandbox starts it (result channel on
    fd 3, the job on fd 4, the end pipe on fd 5), with `script` as the job's main file and
    `warm` as the module it loads while it waits, if any. (exit code, what came out of the
    end pipe)."""
    main = tmp_path / "main.js"
    main.write_text(script)
    res_r, res_w = os.pipe()
    job_r, job_w = os.pipe()
    end_r, end_w = os.pipe()

    def arrange() -> None:
        for src, dst in ((res_w, 3), (job_r, 4), (end_w, 5)):
            os.dup2(src, dst)

    node = shutil.which("node", path="/usr/local/bin:/usr/bin:/bin")
    assert node is not None
    proc = subprocess.Popen(
        [node, "-e", runtimes.NODE_PRELUDE, *([warm] if warm else [])],
        preexec_fn=arrange,
        close_fds=False,  # it would close 3-5 after arrange(); the pipes are not inheritable
        stdout=subprocess.DEVNULL,
    )
    for fd in (res_w, job_r, end_w):
        os.close(fd)
    # as the sandbox's init does: the job is sent once node says it is ready for it
    assert os.read(end_r, 16) == b"ready\n"
    msg = {"env": {}, "argv": ["node", str(main)], "cwd": str(tmp_path), "handler": False}
    os.write(job_w, json.dumps(msg).encode())
    os.close(job_w)
    code = proc.wait(30)
    with os.fdopen(end_r, "rb") as f:
        said = f.read()
    os.close(res_r)
    return code, said


def test_node_code_that_takes_fd_5_gets_nothing_written_there(tmp_path) -> None:
    assert _prelude(tmp_path, "process.exitCode = 2") == (2, b"2\n")
    # the code puts a file of its own on fd 5 (3 and 4, the result channel and the job's
    # pipe, are closed by then: taken first): the prelude sees it is not its pipe and
    # writes nothing there
    mine = tmp_path / "mine"
    script = (
        "const fs = require('fs'); fs.closeSync(5); "
        "fs.openSync('/dev/null', 'r'); fs.openSync('/dev/null', 'r'); "
        f"const fd = fs.openSync({str(mine)!r}, 'w'); "
        "if (fd !== 5) throw new Error(`fd ${fd}`); process.exitCode = 2;"
    )
    assert _prelude(tmp_path, script) == (2, b"")
    assert mine.read_bytes() == b""


def test_node_loads_its_warm_module_while_it_waits_and_the_job_never_sees_it(
    tmp_path, engine
) -> None:
    # the engine gives the prestarted node the empty module of the read-only root
    assert engine.engine._prestart("node")[-1] == mounts.WARM_MODULE
    warm, marker = tmp_path / "warm.js", tmp_path / "loaded"
    warm.write_text(f"require('fs').writeFileSync({str(marker)!r}, 'yes');")
    # the job's exit code: how many modules are in its cache (its own main only)
    script = "process.exitCode = Object.keys(require.cache).length;"
    assert _prelude(tmp_path, script, str(warm)) == (1, b"1\n")
    assert marker.read_text() == "yes"


def test_node_uncaught_error_keeps_node_s_own_report(engine) -> None:
    out = engine.run(Job(runtime="node", code="throw new Error('boom')"))
    assert out.exit_code == 1 and b"Error: boom" in out.stderr, out


def test_python_code_s_background_process_holding_stdout_does_not_delay_the_answer(
    engine,
) -> None:
    code = (
        "import subprocess\n"
        "subprocess.Popen(['sleep', '30'])  # inherits stdout and stderr\n"
        "print('done')\n"
    )
    t = time.monotonic()
    out = engine.run(Job(runtime="python", code=code))
    assert out.status is Status.SUCCESS and out.stdout == b"done\n", out
    assert time.monotonic() - t < 5
