"""Property-based checks of the OpenAPI document against the running app: no 5xx, and every
response conforms to the schema it documents."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

from execbox.api.app import create_app
from tests.api.support import base_settings

CHECKS = [not_a_server_error, response_schema_conformance]
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


def test_every_operation_is_covered() -> None:
    assert len(OPERATIONS) == 7


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_operation(client: TestClient, label: str) -> None:
    @given(case=OPERATIONS[label].as_strategy())
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        send(client, case)

    run()
