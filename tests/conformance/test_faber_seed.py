"""Every example in seeds/faber-api.txt, sent as its curl line sends it."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.api.support import configured, keys_file

HEADERS = {"Authorization": "Bearer your-api-key", "Content-Type": "application/json"}
USAGE = {
    "cpu_time_ns", "wall_time_ns", "memory_peak_bytes", "memory_current_bytes",
    "process_count", "file_descriptors", "io_read_bytes", "io_write_bytes",
    "system_time_ns", "user_time_ns",
}  # fmt: skip
EXCEEDED = {
    "cpu_time_limit_exceeded", "wall_time_limit_exceeded", "process_limit_exceeded",
    "file_descriptor_limit_exceeded", "output_limit_exceeded",
}  # fmt: skip


@pytest.fixture
def fb(client: TestClient, tmp_path) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with configured(client, open_mode=False, api_keys_file=keys_file(tmp_path, ["your-api-key"])):
        yield client


def post(client: TestClient, raw: str) -> list[dict]:
    r = client.post("/execute", content=raw, headers=HEADERS)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    for res in results:
        assert set(res) == {
            "status", "exit_code", "stdout", "stderr", "error", "resource_usage",
            "resource_limits_exceeded",
        }  # fmt: skip
        assert set(res["resource_usage"]) == USAGE
        assert set(res["resource_limits_exceeded"]) == EXCEEDED
        assert res["resource_usage"]["wall_time_ns"] > 0
        assert res["resource_usage"]["cpu_time_ns"] is not None
    return results


def ok(res: dict, stdout: str) -> None:
    assert res["status"] == "Success"
    assert res["exit_code"] == 0
    assert res["stdout"] == stdout
    assert res["stderr"] is None
    assert res["error"] is None
    assert not any(res["resource_limits_exceeded"].values())


def test_request_body_example(fb: TestClient) -> None:
    raw = (
        '{ "tasks": [ { "command": "echo", "args": ["hello", "world"], "env": { "CUSTOM_VAR": '
        '"value" }, "files": { "script.py": "print(\'Hello from Python\')" }, "resource_limits": '
        '{ "memory_limit": 536870912, "cpu_time_limit": 30000000000, "wall_time_limit": '
        '60000000000, "max_processes": 10, "max_file_descriptors": 100, "max_output_size": '
        "1048576 } } ]}"
    )
    (res,) = post(fb, raw)
    ok(res, "hello world\n")


def test_basic_command(fb: TestClient) -> None:
    (res,) = post(fb, '{"tasks": [{ "command": "ls", "args": ["-la"]}]}')
    assert res["status"] == "Success" and res["stdout"].startswith("total")


def test_script_task_type(fb: TestClient) -> None:
    raw = (
        '{"tasks": [{ "command": "python", "args": ["script.py"], "files": { "script.py": '
        "\"print('Hello from Python')\\nimport sys\\nprint(f'Python version: {sys.version}')\" }}]}"
    )
    (res,) = post(fb, raw)
    lines = res["stdout"].splitlines()
    assert lines[0] == "Hello from Python" and lines[1].startswith("Python version: 3.")
    assert res["status"] == "Success"


def test_environment_task_type(fb: TestClient) -> None:
    raw = (
        '{"tasks": [{ "command": "env", "env": { "CUSTOM_VAR": "custom_value", "DEBUG": "true" }}]}'
    )
    (res,) = post(fb, raw)
    env = res["stdout"].splitlines()
    assert "CUSTOM_VAR=custom_value" in env and "DEBUG=true" in env


def test_simple_command_execution(fb: TestClient) -> None:
    raw = '{ "tasks": [ { "command": "echo", "args": ["Hello, Faber!"] } ] }'
    (res,) = post(fb, raw)
    ok(res, "Hello, Faber!\n")


def test_python_script_execution(fb: TestClient) -> None:
    raw = (
        '{ "tasks": [ { "command": "python", "args": ["script.py"], "files": { "script.py": '
        '"import sys\\nprint(f\\"Python {sys.version}\\")\\nprint(\\"Hello from sandbox!\\")" }, '
        '"env": { "PYTHONPATH": "/tmp" } } ] }'
    )
    (res,) = post(fb, raw)
    assert res["status"] == "Success" and res["stderr"] is None
    first, second = res["stdout"].splitlines()
    assert re.match(r"^Python 3\.\d+\.\d+", first) and second == "Hello from sandbox!"


def test_multiple_tasks(fb: TestClient) -> None:
    raw = (
        '{ "tasks": [ { "command": "echo", "args": ["Task 1"] }, { "command": "python", '
        '"args": ["-c", "print(\\"Task 2\\")"] }, { "command": "bash", "args": ["-c", '
        '"echo \\"Task 3\\""] } ] }'
    )
    results = post(fb, raw)
    assert len(results) == 3
    for i, res in enumerate(results, 1):
        ok(res, f"Task {i}\n")


def test_resource_constrained_task(fb: TestClient) -> None:
    # the seed's own example sleeps 10s under a 10s wall clock: it takes 10s to run
    raw = (
        '{ "tasks": [ { "command": "python", "args": ["-c", "import time; time.sleep(10)"], '
        '"resource_limits": { "memory_limit": 268435456, "cpu_time_limit": 5000000000, '
        '"wall_time_limit": 10000000000, "max_processes": 5 } } ] }'
    )
    (res,) = post(fb, raw)
    assert res["status"] == "Timeout"
    assert res["exit_code"] is None
    assert res["resource_limits_exceeded"]["wall_time_limit_exceeded"] is True
    assert res["resource_limits_exceeded"]["cpu_time_limit_exceeded"] is False
    assert 10_000_000_000 <= res["resource_usage"]["wall_time_ns"] < 13_000_000_000
    assert res["resource_usage"]["cpu_time_ns"] < 5_000_000_000


def test_health(fb: TestClient) -> None:
    r = fb.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "healthy"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", body["timestamp"])
    assert isinstance(body["version"], str) and body["version"]


def test_error_responses(fb: TestClient) -> None:
    raw = '{"tasks": [{"command": ""}]}'
    r = fb.post("/execute", content=raw, headers=HEADERS)
    assert (r.status_code, r.json()) == (
        400, {"error": "Validation error", "details": "Invalid command: command cannot be empty"},
    )  # fmt: skip
    r = fb.post("/execute", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 401
    assert r.json() == {
        "error": "Authentication required",
        "details": "API key is required for this endpoint",
    }
    bad = {**HEADERS, "Authorization": "Bearer nope"}
    r = fb.post("/execute", content=raw, headers=bad)
    assert (r.status_code, r.json()) == (
        403,
        {"error": "Access denied", "details": "Invalid API key"},
    )


def test_rate_limit_headers(fb: TestClient) -> None:
    r = fb.post("/execute", content='{"tasks": [{"command": "true"}]}', headers=HEADERS)
    assert r.headers["X-RateLimit-Limit"] == "100"
    assert int(r.headers["X-RateLimit-Remaining"]) == 99
    assert int(r.headers["X-RateLimit-Reset"]) > 1640995200


def test_swagger_ui(fb: TestClient) -> None:
    r = fb.get("/swagger-ui")
    assert r.status_code == 200 and "/openapi.json" in r.text
