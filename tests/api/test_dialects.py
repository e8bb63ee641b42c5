"""Mapping requests onto Jobs and Outcomes back onto each dialect's response."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from execbox.api.ids import uuid7
from tests.api.support import is_uuid7


def test_uuid7_is_time_ordered() -> None:
    a = uuid7()
    time.sleep(0.002)
    b = uuid7()
    assert is_uuid7(a) and is_uuid7(b) and a < b
    assert len({uuid7() for _ in range(1000)}) == 1000


def test_zeroboot_exit_code_status_and_usage(client: TestClient) -> None:
    r = client.post(
        "/v1/exec", json={"code": "import sys; print('e', file=sys.stderr); sys.exit(3)"}
    )
    body = r.json()
    assert r.status_code == 200
    assert body["exit_code"] == 3 and body["stderr"] == "e\n" and body["status"] == "failure"
    assert body["usage"]["wall_time_ns"] > 0
    r = client.post(
        "/v1/exec",
        json={"code": "console.log('js')", "language": "javascript", "timeout_seconds": 5.0},
    )
    assert r.json()["stdout"] == "js\n"
    r = client.post("/v1/exec", json={"code": "import sys; sys.stdout.buffer.write(b'\\xff')"})
    assert r.json()["stdout"] == "\ufffd"


def test_executions_of_dialects_without_ids_are_recorded_finished(client: TestClient) -> None:
    """ZeroBoot and Faber have no execution ids of their own: each run is still recorded,
    off the request's path, with its outcome."""
    r = client.post("/v1/exec", json={"code": "print('recorded')"})
    assert r.status_code == 200, r.text
    exec_id = r.json()["id"]
    store = client.app.state.executions.store  # type: ignore[attr-defined]
    deadline = time.monotonic() + 5
    while (rec := store.get_execution(exec_id)) is None or rec["status"] == "running":
        assert time.monotonic() < deadline, rec
        time.sleep(0.01)
    assert (rec["dialect"], rec["runtime"], rec["status"]) == ("zeroboot", "python", "completed")
    assert rec["result"]["stdout"] == "recorded\n", rec
    assert rec["request"]["code"] == "print('recorded')" and rec["finished_at"], rec


def test_zeroboot_timeout(client: TestClient) -> None:
    r = client.post(
        "/v1/exec", json={"code": "print('a', flush=True)\nwhile True: pass", "timeout_seconds": 1}
    )
    body = r.json()
    assert r.status_code == 200
    assert body["exit_code"] == -1 and body["status"] == "timeout"
    assert body["stderr"] == "Execution timed out after 1s"
    assert body["stdout"] == "a\n"


def test_batch_runs_in_parallel_and_in_order(client: TestClient) -> None:
    code = "import time; time.sleep(0.5); print({})"
    execs = [{"code": code.format(i)} for i in range(4)]
    t0 = time.monotonic()
    r = client.post("/v1/exec/batch", json={"executions": execs})
    elapsed = time.monotonic() - t0
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["stdout"] for x in results] == ["0\n", "1\n", "2\n", "3\n"]
    assert elapsed < 1.5, elapsed  # serially it would take 2s
    assert len({x["id"] for x in results}) == 4 and all(is_uuid7(x["id"]) for x in results)


def test_batch_cap_and_item_errors(client: TestClient) -> None:
    from tests.api.support import configured

    with configured(client, max_batch=2):
        r = client.post("/v1/exec/batch", json={"executions": [{"code": "1"}] * 3})
        assert r.status_code == 400 and "0..2" in r.json()["error"]
    r = client.post("/v1/exec/batch", json={"executions": [{"code": "1"}, {"code": 5}]})
    assert r.status_code == 400 and "executions[1].code" in r.json()["error"]
    r = client.post("/v1/exec/batch", json={"executions": "x"})
    assert r.status_code == 400


def test_faber_statuses_and_files(client: TestClient) -> None:
    tasks = [
        {"command": "bash", "args": ["-c", "echo out; echo err >&2; exit 4"]},
        {"command": "cat", "args": ["data/in.txt"], "files": {"data/in.txt": "payload"}},
        {
            "command": "sleep",
            "args": ["5"],
            "resource_limits": {"wall_time_limit": 300_000_000},
        },
        {"command": "env", "env": {"MY_VAR": "v1"}},
    ]
    r = client.post("/execute", json={"tasks": tasks})
    assert r.status_code == 200
    fail, cat, slow, env = r.json()["results"]
    assert (fail["status"], fail["exit_code"], fail["stdout"], fail["stderr"]) == (
        "Failure", 4, "out\n", "err\n",
    )  # fmt: skip
    assert cat["status"] == "Success" and cat["stdout"] == "payload" and cat["stderr"] is None
    assert slow["status"] == "Timeout"
    assert slow["resource_limits_exceeded"]["wall_time_limit_exceeded"] is True
    assert slow["resource_usage"]["wall_time_ns"] < 2_000_000_000
    assert "MY_VAR=v1" in env["stdout"].splitlines()
    assert fail["resource_limits_exceeded"] == {
        "cpu_time_limit_exceeded": False,
        "wall_time_limit_exceeded": False,
        "process_limit_exceeded": False,
        "file_descriptor_limit_exceeded": False,
        "output_limit_exceeded": False,
    }


def test_faber_output_limit(client: TestClient) -> None:
    task = {
        "command": "bash",
        "args": ["-c", "head -c 100000 /dev/zero"],
        "resource_limits": {"max_output_size": 1000},
    }
    (res,) = client.post("/execute", json={"tasks": [task]}).json()["results"]
    assert res["status"] == "ResourceLimitExceeded"
    assert res["resource_limits_exceeded"]["output_limit_exceeded"] is True
    assert len(res["stdout"]) <= 1000


def test_executor_statuses(client: TestClient) -> None:
    # an execution_id runs once (a repeat returns its record), so each request has its own
    base = {"session_id": "s1", "language": "python"}
    r = client.post("/execute", json={**base, "execution_id": "x1", "code": "print('ok')"})
    body = r.json()
    assert (body["status"], body["message"], body["stdout"], body["exit_code"]) == (
        "completed", "Execution completed", "ok\n", 0,
    )  # fmt: skip
    assert body["execution_id"] == "x1" and body["duration"] > 0
    assert body["metrics"]["cpu_time_ms"] >= 0
    r = client.post("/execute", json={**base, "execution_id": "x2", "code": "raise SystemExit(2)"})
    assert (r.json()["status"], r.json()["exit_code"]) == ("failed", 2)
    assert "code 2" in r.json()["message"]
    r = client.post(
        "/execute",
        json={**base, "execution_id": "x3", "code": "import time; time.sleep(5)", "timeout": 1},
    )
    assert r.json()["status"] == "timeout" and "1s" in r.json()["message"]
    r = client.post(
        "/execute",
        json={
            **base,
            "execution_id": "x4",
            "language": "shell",
            "code": 'echo "$GREETING"',
            "env_vars": {"GREETING": "hey"},
        },
    )
    assert r.json()["stdout"] == "hey\n"


def test_health_and_info(client: TestClient) -> None:
    body = client.get("/health").json()
    assert body["status"] == "healthy" and body["isolation"] == "namespaces+seccomp"
    assert body["platform"] == "Linux" and body["version"]
    assert body["timestamp"].endswith("Z")
    zb = client.get("/v1/health").json()
    assert zb["status"] == "ok"
    assert zb["templates"]["python"] == {"ready": True, "memory_mb": 256}
    assert zb["templates"]["node"]["ready"] is True
    info = client.get("/info").json()
    assert info["workspace_path"] == "/workspace" and info["active_executions"] == 0


def test_health_degrades_when_a_runtime_cannot_run(client: TestClient) -> None:
    engine = client.app.state.engine  # type: ignore[attr-defined]
    zygote = engine.zygotes["node"]
    zygote.ready = False
    try:
        r = client.get("/v1/health")
        assert r.status_code == 503 and r.json()["status"] == "degraded"
        assert r.json()["templates"]["node"]["ready"] is False
        r = client.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "unhealthy"
    finally:
        zygote.ready = True
    assert client.get("/v1/health").status_code == 200
