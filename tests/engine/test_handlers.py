"""handler(event) in Python, JavaScript and shell: values, failures, forgery attempts."""

from __future__ import annotations

import json

from execbox.jobs import Job, Status


def handler_job(runtime: str, code: str, event: object = None) -> Job:
    return Job(runtime=runtime, code=code, event=event, handler=True)


def test_python_handler_returns_value_with_stdout_apart(engine) -> None:
    code = (
        "def handler(event):\n    print('log line')\n"
        "    return {'message': f\"Hello, {event['name']}!\"}"
    )
    out = engine.run(handler_job("python", code, {"name": "Alice"}))
    assert out.status is Status.SUCCESS, out.stderr
    assert out.return_value == {"message": "Hello, Alice!"}
    assert out.stdout == b"log line\n"
    assert out.handler_error is None


def test_python_handler_event_defaults_to_empty_object(engine) -> None:
    out = engine.run(handler_job("python", "def handler(e):\n    return e"))
    assert out.return_value == {}


def test_python_handler_exception(engine) -> None:
    code = "def handler(event):\n    raise KeyError('missing')"
    out = engine.run(handler_job("python", code))
    assert out.status is Status.FAILURE and out.exit_code == 1
    err = out.handler_error
    assert err["type"] == "KeyError" and err["message"] == "'missing'"
    assert "line 2, in handler" in err["traceback"]
    assert b"KeyError" in out.stderr


def test_python_handler_unserializable_value(engine) -> None:
    out = engine.run(handler_job("python", "def handler(e):\n    return {1, 2}"))
    assert out.status is Status.FAILURE
    assert "cannot be serialized" in out.handler_error["message"]


def test_python_handler_result_cannot_be_forged_by_stdout(engine) -> None:
    code = (
        "import sys\n"
        "print('===SANDBOX_RESULT===')\n"
        'print(\'{"ok": true, "value": "forged"}\')\n'
        "print('===SANDBOX_RESULT_END===')\n"
        "def handler(e):\n    return 'real'"
    )
    out = engine.run(handler_job("python", code))
    assert out.return_value == "real"


def test_python_async_handler(engine) -> None:
    code = (
        "import asyncio\nasync def handler(e):\n"
        "    await asyncio.sleep(0.01)\n    return e['x'] * 2"
    )
    assert engine.run(handler_job("python", code, {"x": 21})).return_value == 42


def test_no_handler_runs_as_a_script(engine) -> None:
    out = engine.run(handler_job("python", "print('plain')"))
    assert (out.status, out.stdout, out.return_value) == (Status.SUCCESS, b"plain\n", None)
    out = engine.run(handler_job("node", "console.log('plain')"))
    assert (out.status, out.stdout, out.return_value) == (Status.SUCCESS, b"plain\n", None)


def test_js_handler_sync_async_and_promise(engine) -> None:
    sync = "module.exports.handler = (event) => ({ message: `Hello ${event.name}!` });"
    out = engine.run(handler_job("node", sync, {"name": "Bob"}))
    assert out.status is Status.SUCCESS, out.stderr
    assert out.return_value == {"message": "Hello Bob!"}
    asyn = (
        "exports.handler = async (e) => "
        "{ await new Promise(r => setTimeout(r, 10)); return e.n + 1; };"
    )
    assert engine.run(handler_job("node", asyn, {"n": 1})).return_value == 2
    prom = "exports.handler = (e) => Promise.resolve([e.a, e.b]);"
    assert engine.run(handler_job("node", prom, {"a": 1, "b": "x"})).return_value == [1, "x"]


def test_js_handler_exception_and_unserializable_and_forgery(engine) -> None:
    out = engine.run(
        handler_job("node", "exports.handler = () => { throw new TypeError('bad input'); };")
    )
    assert out.status is Status.FAILURE and out.exit_code == 1
    assert out.handler_error["type"] == "TypeError"
    assert out.handler_error["message"] == "bad input"
    assert "TypeError: bad input" in out.handler_error["traceback"]
    out = engine.run(
        handler_job("node", "exports.handler = () => { const a = {}; a.a = a; return a; };")
    )
    assert out.status is Status.FAILURE and "cannot be serialized" in out.handler_error["message"]
    forge = (
        "console.log(JSON.stringify({ok: true, value: 'forged'})); exports.handler = () => 'real';"
    )
    out = engine.run(handler_job("node", forge))
    assert out.return_value == "real"


def test_shell_gets_event_on_stdin_and_in_env(engine) -> None:
    code = 'read -r line; echo "stdin=$line"; echo "env=$EVENT"'
    out = engine.run(handler_job("bash", code, {"k": "v"}))
    assert out.status is Status.SUCCESS
    lines = out.stdout.decode().splitlines()
    assert json.loads(lines[0].split("=", 1)[1]) == {"k": "v"}
    assert json.loads(lines[1].split("=", 1)[1]) == {"k": "v"}


def test_handler_jobs_get_only_the_result_channel_extra(engine) -> None:
    code = (
        "import os\ndef handler(e):\n    return sorted(int(f) for f in os.listdir('/proc/self/fd'))"
    )
    fds = engine.run(handler_job("python", code)).return_value
    # listdir's own fd, the end-of-run pipe every Python sandbox has (see
    # tests/security/test_end_channel.py), and the result channel: nothing else
    assert set(fds) - {0, 1, 2} <= {3, 4, 5}
