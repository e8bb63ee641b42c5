"""Keys, open mode and the internal token, in each dialect's own error shape."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from execbox.api.auth import mask
from tests.api.support import configured, keys_file

ZB = ("/v1/exec", {"code": "print(1)"})
FABER = ("/execute", {"tasks": [{"command": "echo", "args": ["hi"]}]})
SE = (
    "/execute",
    {"execution_id": "e1", "session_id": "s1", "code": "echo hi", "language": "shell"},
)


@pytest.fixture
def keyed(client: TestClient, tmp_path):  # type: ignore[no-untyped-def]
    path = keys_file(tmp_path, ["zb_live_key1", "zb_live_key2"])
    with configured(client, open_mode=False, api_keys_file=path, internal_api_token="tok-123"):
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("path,body", [ZB, FABER, SE])
def test_open_mode_needs_no_key(client: TestClient, path: str, body: dict) -> None:
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text


def test_no_keys_configured_is_open(client: TestClient, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with configured(client, open_mode=False, api_keys_file=None):
        assert client.post(*ZB[:1], json=ZB[1]).status_code == 200


def test_open_mode_setting_forces_open(client: TestClient, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with configured(client, open_mode=True, api_keys_file=keys_file(tmp_path, ["k" * 12])):
        assert client.post(ZB[0], json=ZB[1]).status_code == 200


def test_missing_key_is_401_in_every_dialect(keyed: TestClient) -> None:
    r = keyed.post(ZB[0], json=ZB[1])
    assert r.status_code == 401
    assert r.json() == {"error": "API key is required for this endpoint"}
    r = keyed.post(FABER[0], json=FABER[1])
    assert r.status_code == 401
    assert r.json() == {
        "error": "Authentication required",
        "details": "API key is required for this endpoint",
    }
    r = keyed.post(SE[0], json=SE[1])
    assert r.status_code == 401
    assert r.json() == {"detail": "API key is required for this endpoint"}
    r = keyed.post("/v1/exec/batch", json={"executions": []})
    assert r.status_code == 401


def test_invalid_key_is_401_or_403_for_faber(keyed: TestClient) -> None:
    r = keyed.post(ZB[0], json=ZB[1], headers=bearer("zb_live_wrong"))
    assert (r.status_code, r.json()) == (401, {"error": "Invalid API key"})
    r = keyed.post(FABER[0], json=FABER[1], headers=bearer("zb_live_wrong"))
    assert (r.status_code, r.json()) == (
        403,
        {"error": "Access denied", "details": "Invalid API key"},
    )
    r = keyed.post(SE[0], json=SE[1], headers=bearer("zb_live_wrong"))
    assert (r.status_code, r.json()) == (401, {"detail": "Invalid API key"})


def test_valid_keys_and_internal_token_accepted(keyed: TestClient) -> None:
    assert keyed.post(ZB[0], json=ZB[1], headers=bearer("zb_live_key2")).status_code == 200
    assert keyed.post(FABER[0], json=FABER[1], headers=bearer("zb_live_key1")).status_code == 200
    r = keyed.post(SE[0], json=SE[1], headers=bearer("tok-123"))
    assert r.status_code == 200 and r.json()["stdout"] == "hi\n"


def test_health_info_and_metrics_stay_open(keyed: TestClient) -> None:
    for path in ("/health", "/v1/health", "/info", "/v1/metrics"):
        assert keyed.get(path).status_code == 200, path


def test_metrics_closed_when_configured(client: TestClient, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = keys_file(tmp_path, ["zb_live_key1"])
    with configured(client, open_mode=False, api_keys_file=path, metrics_open=False):
        assert client.get("/v1/metrics").status_code == 401
        assert client.get("/v1/metrics", headers=bearer("zb_live_key1")).status_code == 200


def test_keys_are_masked() -> None:
    assert mask("zb_live_abcdefgh1234") == "zb_l...1234"
    assert mask("short") == "****"


def test_audit_log_masks_the_key(client: TestClient, tmp_path) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "audit.jsonl"
    path = keys_file(tmp_path, ["zb_live_secretkey9"])
    with configured(client, open_mode=False, api_keys_file=path, audit_log=str(log)):
        r = client.post(
            ZB[0], json={"code": "print('x' * 3)"}, headers=bearer("zb_live_secretkey9")
        )
        assert r.status_code == 200
        r = client.post(FABER[0], json=FABER[1], headers=bearer("zb_live_secretkey9"))
        assert r.status_code == 200
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [e["dialect"] for e in lines] == ["zeroboot", "faber"]
    first = lines[0]
    assert first["key"] == "zb_l...key9"
    assert "zb_live_secretkey9" not in log.read_text()
    assert first["code_head"] == "print('x' * 3)"
    assert len(first["code_sha256"]) == 64
    assert first["status"] == "success" and first["language"] == "python"
    assert first["client_ip"] == "testclient"
    assert first["timings"]["total_ms"] > 0 and first["request_id"]
