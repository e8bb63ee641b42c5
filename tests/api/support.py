"""One running app (one real engine) shared by tests/api and tests/conformance, with its
HTTP policy swapped per test through configure()."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

from fastapi.testclient import TestClient

from execbox.api.app import configure, create_app
from execbox.config import Settings
from tests.mounts import unmount_below

STATE_DIR = tempfile.mkdtemp(prefix="execbox-api-state-")
UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")

_client: TestClient | None = None
_users = 0


def base_settings() -> Settings:
    pid = os.getpid()
    # its own uids and cgroups, so it can live beside the engine tests' engine
    return Settings.from_env(
        env={},
        pool_size=2,
        max_concurrency=16,
        uid_base=100_000_000 + (pid % 1000) * 32768,
        cgroup_prefix=f"execbox-api/{pid}",
        open_mode=True,
        state_dir=STATE_DIR,
        session_uid_base=5_000_000 + (pid % 1000) * 1000,
        session_uid_count=1000,
        callback_allowed_hosts=("127.0.0.1",),
        callback_secret="test-secret",
        callback_backoff_s=0.05,
    )


def acquire() -> TestClient:
    global _client, _users
    if os.geteuid() != 0:
        raise RuntimeError("the API tests run real sandboxes and need root")
    if _client is None:
        _client = TestClient(create_app(base_settings()))
        _client.__enter__()
    _users += 1
    return _client


def release() -> None:
    global _client, _users
    _users -= 1
    if _users == 0 and _client is not None:
        _client.__exit__(None, None, None)
        _client = None
        unmount_below(STATE_DIR)


@contextlib.contextmanager
def configured(client: TestClient, **overrides: Any) -> Iterator[Settings]:
    """The app's HTTP policy built from base settings plus overrides, for one block."""
    settings = dataclasses.replace(base_settings(), **overrides)
    configure(client.app, settings)  # type: ignore[arg-type]
    try:
        yield settings
    finally:
        configure(client.app, base_settings())  # type: ignore[arg-type]


def keys_file(tmp_path: Any, keys: list[str]) -> str:
    path = tmp_path / "api_keys.json"
    path.write_text(json.dumps(keys))
    return str(path)


def is_uuid7(value: str) -> bool:
    return bool(UUID7.match(value)) and uuid.UUID(value).version == 7
