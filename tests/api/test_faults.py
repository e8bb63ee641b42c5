"""Faults at the edges: a full disk under the store, a missing runtime, a cgroup limit the
kernel refuses. Each gives a clear error and a health status, never a hang or a 500."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import time

import pytest
from fastapi.testclient import TestClient

from execbox import runtimes
from execbox.api.app import create_app
from tests.api.support import base_settings
from tests.mounts import unmount_below


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A 12 MiB filesystem for the state directory, so it can really fill up."""
    base = tmp_path_factory.mktemp("smalldisk")
    image, mnt = base / "disk.img", base / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(12 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        yield str(mnt)
    finally:
        unmount_below(str(mnt))


def test_full_disk_gives_507_and_an_unhealthy_health(small_disk: str) -> None:
    settings = dataclasses.replace(
        base_settings(),
        state_dir=os.path.join(small_disk, "state"),
        cgroup_prefix=f"execbox-faults/{os.getpid()}",
        uid_base=150_000_000 + (os.getpid() % 1000) * 32768,
        session_quota_bytes=1 << 20,
    )
    with TestClient(create_app(settings)) as client:
        assert client.get("/health").json()["problems"] == []
        filler = os.path.join(small_disk, "filler")
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        for size in (1 << 20, 1 << 12, 1):  # to the last byte
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"x" * size)
        os.close(fd)
        try:
            body = client.get("/health").json()
            assert body["status"] == "unhealthy"
            assert any(p.startswith("storage:") for p in body["problems"]), body
            assert client.get("/v1/health").json()["status"] == "degraded"
            # a new session needs a new workspace: there is no room for one
            req = {"execution_id": "full-1", "session_id": "new", "code": "print(1)",
                   "language": "python"}  # fmt: skip
            t = time.monotonic()
            r = client.post("/execute", json=req)
            assert time.monotonic() - t < 10
            assert r.status_code == 507, r.text
            # whichever layer meets the full disk first (the store, or the new workspace)
            detail = r.json()["detail"]
            assert detail.startswith("Insufficient storage: "), detail
            assert "disk is full" in detail or "no space left" in detail, detail
            # executions that need no storage still run
            r = client.post("/v1/exec", json={"code": "print(2)"})
            assert r.status_code == 200 and r.json()["stdout"] == "2\n"
        finally:
            os.unlink(filler)
        assert client.get("/health").json()["status"] == "healthy"


def test_a_heavy_zygote_down_is_a_warning_and_its_jobs_still_run(client: TestClient) -> None:
    heavy = client.app.state.engine.zygotes[runtimes.PYTHON_HEAVY]  # type: ignore[attr-defined]
    was, heavy.ready = heavy.ready, False  # what a dead or restarting zygote shows
    try:
        r = client.get("/v1/health")
        body = r.json()
        assert r.status_code == 200, body  # degraded, not out of service
        assert body["status"] == "degraded" and body["problems"] == []
        # only the languages a client can ask for are templates
        assert body["templates"] == {
            "python": {"ready": True, "memory_mb": 256},
            "node": {"ready": True, "memory_mb": 256},
        }
        [warning] = body["warnings"]
        assert warning.startswith("python-heavy: ") and "run in the python zygote" in warning
        r = client.get("/health")
        assert r.status_code == 200 and r.json()["status"] == "healthy"
        assert r.json()["warnings"] == [warning]
        r = client.post("/v1/exec", json={"code": "import numpy\nprint(numpy.arange(3).sum())"})
        assert r.status_code == 200 and r.json()["stdout"] == "3\n", r.text
    finally:
        heavy.ready = was
    body = client.get("/v1/health").json()
    assert body["status"] == "ok" and "warnings" not in body
    assert "warnings" not in client.get("/health").json()


def test_missing_runtime_and_refused_cgroup_limit(client: TestClient) -> None:
    engine = client.app.state.engine  # type: ignore[attr-defined]
    real = engine.paths
    engine.paths = dataclasses.replace(real, node="/nonexistent/node")
    try:
        body = client.get("/v1/health").json()
        assert body["status"] == "degraded" and body["templates"]["node"]["ready"] is False
        assert any("node runtime is missing" in p for p in body["problems"])
        r = client.post("/v1/exec", json={"code": "console.log(1)", "language": "node"})
        assert r.status_code == 500 and "apt-get install nodejs" in r.json()["error"]
    finally:
        engine.paths = real
    assert client.get("/v1/health").json()["status"] == "ok"
    # below the memory the sandbox already uses: the kernel refuses the limit (EBUSY)
    task = {"command": "echo", "args": ["x"], "resource_limits": {"memory_limit": 1 << 24}}
    r = client.post("/execute", json={"tasks": [task]})
    res = r.json()["results"][0]
    assert r.status_code == 200 and res["status"] in ("Success", "MemoryLimitExceeded", "Failure")
