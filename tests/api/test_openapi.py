"""The OpenAPI document describes all three dialects, with the seeds' examples."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_document(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert {"/v1/exec", "/v1/exec/batch", "/v1/health", "/v1/metrics", "/execute", "/health",
            "/info"} <= set(doc["paths"])  # fmt: skip
    schemas = doc["components"]["schemas"]
    assert schemas["ZbExecRequest"]["examples"][0]["code"] == "print(1 + 1)"
    assert schemas["FaberRequest"]["examples"][0]["tasks"][0]["command"] == "echo"
    assert schemas["ExecutorRequest"]["examples"][2]["language"] == "shell"
    body = doc["paths"]["/execute"]["post"]["requestBody"]["content"]["application/json"]
    refs = {x["$ref"].rsplit("/", 1)[1] for x in body["schema"]["oneOf"]}
    assert refs == {"FaberRequest", "ExecutorRequest"}
    for ref in refs | {"ZbExecRequest", "ZbBatchRequest", "Task", "ResourceLimits"}:
        assert ref in schemas


def test_swagger_ui(client: TestClient) -> None:
    for path in ("/swagger-ui", "/docs"):
        r = client.get(path)
        assert r.status_code == 200 and "swagger-ui" in r.text and "/openapi.json" in r.text
