"""Every example in seeds/sandbox-executor-api.zh.md, sent as its curl line sends it."""

from __future__ import annotations

from fastapi.testclient import TestClient

HEADERS = {"Content-Type": "application/json"}
FIELDS = {
    "execution_id", "status", "message", "stdout", "stderr", "exit_code", "duration", "metrics",
}  # fmt: skip


def post(client: TestClient, raw: str) -> dict:
    r = client.post("/execute", content=raw, headers=HEADERS)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= FIELDS  # the spec's fields; execbox adds return_value, artifacts...
    assert isinstance(body["duration"], float) and body["duration"] > 0
    assert set(body["metrics"]) == {"cpu_time_ms", "peak_memory_mb"}
    return body


def test_python_example(client: TestClient) -> None:
    raw = """{
    "execution_id": "exec_001",
    "session_id": "session_001",
    "code": "def handler(event):\\n    name = event.get(\\"name\\", \\"World\\")\\n    return {\\"message\\": f\\"Hello, {name}!\\"}",
    "language": "python",
    "timeout": 10,
    "event": {"name": "Alice"}
  }"""  # noqa: E501
    body = post(client, raw)
    assert body["execution_id"] == "exec_001"
    assert body["status"] == "completed"
    assert body["message"] == "Execution completed"
    assert body["exit_code"] == 0 and body["stderr"] == ""
    assert body["return_value"] == {"message": "Hello, Alice!"}
    assert body["error"] is None and body["session_id"] == "session_001"


def test_javascript_example(client: TestClient) -> None:
    raw = """{
    "execution_id": "exec_js_001",
    "session_id": "session_001",
    "code": "module.exports.handler = (event) => ({ message: `Hello ${event.name}!` });",
    "language": "javascript",
    "timeout": 10,
    "event": {"name": "Bob"}
  }"""
    body = post(client, raw)
    assert (body["execution_id"], body["status"], body["message"]) == (
        "exec_js_001", "completed", "Execution completed",
    )  # fmt: skip
    assert body["exit_code"] == 0
    assert body["return_value"] == {"message": "Hello Bob!"}


def test_shell_example(client: TestClient) -> None:
    raw = """{
    "execution_id": "exec_shell_001",
    "session_id": "session_001",
    "code": "echo \\"Hello from shell!\\" && ls -la /tmp",
    "language": "shell",
    "timeout": 10
  }"""
    body = post(client, raw)
    assert body["status"] == "completed" and body["execution_id"] == "exec_shell_001"
    lines = body["stdout"].splitlines()
    assert lines[0] == "Hello from shell!" and lines[1].startswith("total")


def test_client_example(client: TestClient) -> None:
    # the Python client example posts this with httpx's json=
    r = client.post(
        "/execute",
        json={
            "execution_id": "exec_001",
            "session_id": "session_001",
            "code": "def handler(e): return {'result': 'ok'}",
            "language": "python",
            "timeout": 10,
        },
    )
    assert r.status_code == 200 and r.json()["status"] == "completed"
    # the seed reuses exec_001, which already ran: its record comes back, nothing re-runs
    assert r.json()["execution_id"] == "exec_001"
    fresh = client.post(
        "/execute",
        json={
            "execution_id": "exec_client_001",
            "session_id": "session_001",
            "code": "def handler(e): return {'result': 'ok'}",
            "language": "python",
            "timeout": 10,
        },
    )
    assert fresh.json()["return_value"] == {"result": "ok"}


def test_health(client: TestClient) -> None:
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "healthy"
    assert body["version"] and body["platform"] == "Linux"
    assert body["isolation"] == "namespaces+seccomp"


def test_info(client: TestClient) -> None:
    r = client.get("/info")
    assert r.status_code == 200
    assert r.json() == {
        "version": r.json()["version"],
        "platform": "Linux",
        "isolation": "namespaces+seccomp",
        "workspace_path": "/workspace",
        "active_executions": 0,
    }
    assert isinstance(r.json()["version"], str)


def test_422_example_shape(client: TestClient) -> None:
    raw = '{"execution_id": "e", "session_id": "s", "code": "print(1)", "language": "ruby"}'
    r = client.post("/execute", content=raw, headers=HEADERS)
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", "language"]
    assert isinstance(err["msg"], str) and isinstance(err["type"], str)
