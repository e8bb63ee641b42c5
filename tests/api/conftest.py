from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.api import support


@pytest.fixture(scope="session")
def client() -> Iterator[TestClient]:
    yield support.acquire()
    support.release()
