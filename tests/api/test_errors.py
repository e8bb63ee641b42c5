"""413, 400 and 422 in each dialect's shape."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi.testclient import TestClient

from tests.api.support import configured

SE = {"execution_id": "e1", "session_id": "s1", "code": "print(1)", "language": "python"}


def test_413_by_content_length(client: TestClient) -> None:
    with configured(client, max_body_bytes=1000):
        big = "x" * 2000
        r = client.post("/v1/exec", json={"code": big})
        assert r.status_code == 413
        assert r.json() == {"error": "Request body exceeds maximum size limit of 1000 bytes"}
        r = client.post("/execute", json={"tasks": [{"command": big}]})
        assert r.status_code == 413
        body = r.json()
        assert body["error"] == "Request too large" and "1000 bytes" in body["details"]
        assert body["detail"] == body["details"]  # a Sandbox Executor client reads this one
        assert client.post("/v1/exec", json={"code": "print(1)"}).status_code == 200


def test_413_by_streamed_bytes(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"code": "'
        for _ in range(10):
            yield b"x" * 500
        yield b'"}'

    with configured(client, max_body_bytes=1000):
        # no Content-Length: the body arrives chunked and is counted as it streams
        r = client.post("/v1/exec", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        assert "1000 bytes" in r.json()["error"]
        r = client.post("/execute", content=chunks())
        assert r.status_code == 413 and r.json()["error"] == "Request too large"


def test_malformed_json(client: TestClient) -> None:
    r = client.post("/v1/exec", content=b"{nope")
    assert r.status_code == 400 and r.json()["error"].startswith("Malformed JSON")
    r = client.post("/execute", content=b"{nope")
    assert r.status_code == 400
    assert r.json()["error"] == "Validation error" and "Malformed JSON" in r.json()["details"]


def test_execute_with_neither_key(client: TestClient) -> None:
    r = client.post("/execute", json={"foo": 1})
    assert r.status_code == 400
    body = r.json()
    assert "tasks" in body["detail"] and "code" in body["detail"] and body["error"]
    assert client.post("/execute", json=[1, 2]).status_code == 400


def test_zeroboot_validation(client: TestClient) -> None:
    r = client.post("/v1/exec", json={"code": "1", "language": "ruby"})
    assert r.status_code == 400 and "ruby" in r.json()["error"]
    r = client.post("/v1/exec", json={"language": "python"})
    assert r.status_code == 400 and "code" in r.json()["error"]
    for bad in (0, -3, 1.5, "10", True, 3601, 2.0e9):
        r = client.post("/v1/exec", json={"code": "1", "timeout_seconds": bad})
        assert r.status_code == 400, bad
        assert "timeout_seconds" in r.json()["error"] and "1 and 3600" in r.json()["error"]


def test_faber_validation(client: TestClient) -> None:
    r = client.post("/execute", json={"tasks": [{"command": ""}]})
    assert r.status_code == 400
    assert r.json() == {
        "error": "Validation error",
        "details": "Invalid command: command cannot be empty",
    }
    for name in ("../x.py", "/etc/passwd", "a/../../b"):
        r = client.post("/execute", json={"tasks": [{"command": "ls", "files": {name: "x"}}]})
        assert r.status_code == 400, name
        assert r.json()["error"] == "Validation error" and name in r.json()["details"]
    r = client.post(
        "/execute",
        json={"tasks": [{"command": "ls", "resource_limits": {"memory_limit": 1024}}]},
    )
    details = r.json()["details"]
    assert r.status_code == 400 and "tasks[0].resource_limits.memory_limit" in details
    assert "16777216" in details and "8589934592" in details
    r = client.post(
        "/execute",
        json={"tasks": [{"command": "ls", "resource_limits": {"wall_time_limit": 10**13}}]},
    )
    assert r.status_code == 400 and "wall_time_limit" in r.json()["details"]
    r = client.post("/execute", json={"tasks": [{"args": ["x"]}]})
    assert r.status_code == 400 and "command" in r.json()["details"]
    r = client.post("/execute", json={"tasks": []})
    assert r.status_code == 400


def test_faber_validates_every_task_before_running_any(client: TestClient, tmp_path) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "audit.jsonl"
    with configured(client, audit_log=str(marker)):
        r = client.post(
            "/execute", json={"tasks": [{"command": "echo", "args": ["1"]}, {"command": ""}]}
        )
    assert r.status_code == 400
    assert not marker.exists()  # nothing ran, so nothing was audited


def test_executor_422(client: TestClient) -> None:
    r = client.post("/execute", json={**SE, "language": "ruby"})
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", "language"] and err["msg"] and err["type"]
    for t in (0, 3601):
        r = client.post("/execute", json={**SE, "timeout": t})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "timeout"]
    body = dict(SE)
    del body["execution_id"]
    r = client.post("/execute", json=body)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "execution_id"]


def test_unknown_route_404(client: TestClient) -> None:
    r = client.get("/v1/nope")
    assert r.status_code == 404 and "error" in r.json()
