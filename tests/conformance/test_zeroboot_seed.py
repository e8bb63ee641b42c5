"""Every example in seeds/zeroboot-api.txt, sent as its curl line sends it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.api.support import configured, is_uuid7, keys_file

HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer zb_live_..."}
TIMING = ("fork_time_ms", "exec_time_ms", "total_time_ms")


@pytest.fixture
def zb(client: TestClient, tmp_path) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    path = keys_file(tmp_path, ["zb_live_...", "zb_live_key2"])
    with configured(client, open_mode=False, api_keys_file=path):
        yield client


def check_result(body: dict, stdout: str) -> None:
    assert is_uuid7(body["id"])
    assert body["stdout"] == stdout
    assert body["stderr"] == ""
    assert body["exit_code"] == 0
    for key in TIMING:
        assert isinstance(body[key], float) and body[key] >= 0
    assert body["total_time_ms"] >= body["exec_time_ms"]


def test_exec_request_example(zb: TestClient) -> None:
    raw = '{\n"code": "print(1 + 1)",\n"language": "python",\n"timeout_seconds": 30\n}'
    r = zb.post("/v1/exec", content=raw, headers=HEADERS)
    assert r.status_code == 200
    check_result(r.json(), "2\n")


def test_numpy_curl_example(zb: TestClient) -> None:
    raw = '{"code": "import numpy; print(numpy.random.rand(3))", "language": "python"}'
    r = zb.post("/v1/exec", content=raw, headers=HEADERS)
    assert r.status_code == 200
    body = r.json()
    out = body["stdout"].strip()
    assert out.startswith("[") and out.endswith("]")
    numbers = [float(x) for x in out[1:-1].split()]
    assert len(numbers) == 3 and all(0 <= x < 1 for x in numbers)
    check_result(body, body["stdout"])


def test_batch_example(zb: TestClient) -> None:
    raw = (
        '{\n"executions": [\n{"code": "print(1)", "language": "python"},\n'
        '{"code": "console.log(2)", "language": "node"}\n]\n}'
    )
    r = zb.post("/v1/exec/batch", content=raw, headers=HEADERS)
    assert r.status_code == 200
    first, second = r.json()["results"]
    check_result(first, "1\n")
    check_result(second, "2\n")


def test_health_example(zb: TestClient) -> None:
    r = zb.get("/v1/health")
    assert r.status_code == 200
    body = r.json()
    # the seed's body exactly; execbox adds the reasons when unhealthy, none here
    assert body.pop("problems") == []
    assert body == {
        "status": "ok",
        "templates": {
            "python": {"ready": True, "memory_mb": 256},
            "node": {"ready": True, "memory_mb": 256},
        },
    }


def test_metrics(zb: TestClient) -> None:
    r = zb.get("/v1/metrics")
    assert r.status_code == 200
    assert "zeroboot_fork_time_milliseconds_bucket" in r.text
    assert "zeroboot_exec_time_milliseconds_bucket" in r.text
    assert "execbox_http_requests_total" in r.text


def test_auth_rules(zb: TestClient) -> None:
    body = '{"code": "print(1)"}'
    r = zb.post("/v1/exec", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 401
    bad = {**HEADERS, "Authorization": "Bearer zb_live_nope"}
    assert zb.post("/v1/exec", content=body, headers=bad).status_code == 401
    other = {**HEADERS, "Authorization": "Bearer zb_live_key2"}
    assert zb.post("/v1/exec", content=body, headers=other).status_code == 200
