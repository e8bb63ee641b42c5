"""Property-based checks of the OpenAPI document against the running app: no 5xx, and every
response conforms to the schema it documents."""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

from execbox.api.app import create_app
from tests.api.support import base_settings

CHECKS = [not_a_server_error, response_schema_conformance]
# `make fuzz` raises the budget; `make test` keeps it small
EXAMPLES = int(os.environ.get("EXECBOX_FUZZ_EXAMPLES", "25"))
# the document does not depend on a running engine, so it can be read at collection time
SCHEMA = schemathesis.openapi.from_dict(create_app(base_settings()).openapi())
OPERATIONS = {op.ok().label: op.ok() for op in SCHEMA.get_all_operations()}


def send(client: TestClient, case: Any) -> None:
    kwargs = case.as_transport_kwargs(base_url="http://testserver")
    for key in ("timeout", "verify", "allow_redirects", "cert", "proxies", "stream", "cookies"):
        kwargs.pop(key, None)
    if isinstance(kwargs.get("data"), bytes | str):
        kwargs["content"] = kwargs.pop("data")
    response = client.request(**kwargs)
    case.validate_response(response, checks=CHECKS)


EXPECTED = {
    "POST /v1/exec", "POST /v1/exec/batch", "GET /v1/health", "GET /v1/metrics",
    "POST /execute", "GET /health", "GET /info", "GET /executions/{execution_id}",
    "GET /sessions/{session_id}", "DELETE /sessions/{session_id}",
    "GET /sessions/{session_id}/executions", "GET /sessions/{session_id}/files",
    "GET /sessions/{session_id}/files/{path}", "PUT /sessions/{session_id}/files/{path}",
    "DELETE /sessions/{session_id}/files/{path}",
}  # fmt: skip


def test_every_operation_is_covered() -> None:
    assert set(OPERATIONS) == EXPECTED


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_operation(client: TestClient, label: str) -> None:
    @given(case=OPERATIONS[label].as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        send(client, case)

    run()
