"""Rate limits per key (per client IP in open mode), headers, and 429 shapes."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from tests.api.support import configured, keys_file

ZB_BODY = {"code": "print(1)"}


def test_headers_count_down_then_429(client: TestClient) -> None:
    with configured(client, rate_limit="5/minute"):
        remaining = []
        for _ in range(5):
            r = client.post("/v1/exec", json=ZB_BODY)
            assert r.status_code == 200
            assert r.headers["X-RateLimit-Limit"] == "5"
            assert int(r.headers["X-RateLimit-Reset"]) >= int(time.time())
            remaining.append(int(r.headers["X-RateLimit-Remaining"]))
        assert remaining == [4, 3, 2, 1, 0]
        r = client.post("/v1/exec", json=ZB_BODY)
        assert r.status_code == 429
        assert r.json() == {"error": "Too many requests, please try again later"}
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        assert r.headers["X-RateLimit-Remaining"] == "0"
        # Faber and Sandbox Executor share the bucket but keep their own shapes
        r = client.post("/execute", json={"tasks": [{"command": "true"}]})
        assert r.status_code == 429
        assert r.json()["error"] == "Rate limit exceeded" and "details" in r.json()
        r = client.post(
            "/execute",
            json={"execution_id": "e", "session_id": "s", "code": "1", "language": "python"},
        )
        assert r.status_code == 429 and set(r.json()) == {"detail"}
        # unlimited routes are not counted and still answer
        assert client.get("/health").status_code == 200


def test_batch_counts_as_one(client: TestClient) -> None:
    with configured(client, rate_limit="2/minute"):
        batch = {"executions": [ZB_BODY] * 3}
        r = client.post("/v1/exec/batch", json=batch)
        assert r.status_code == 200 and r.headers["X-RateLimit-Remaining"] == "1"
        assert client.post("/v1/exec/batch", json=batch).status_code == 200
        assert client.post("/v1/exec/batch", json=batch).status_code == 429


def test_each_key_has_its_own_bucket(client: TestClient, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = keys_file(tmp_path, ["key-aaaaaaaa1", "key-bbbbbbbb2"])
    with configured(client, rate_limit="1/minute", open_mode=False, api_keys_file=path):
        a = {"Authorization": "Bearer key-aaaaaaaa1"}
        b = {"Authorization": "Bearer key-bbbbbbbb2"}
        assert client.post("/v1/exec", json=ZB_BODY, headers=a).status_code == 200
        assert client.post("/v1/exec", json=ZB_BODY, headers=a).status_code == 429
        assert client.post("/v1/exec", json=ZB_BODY, headers=b).status_code == 200


def test_forwarded_for_only_from_trusted_proxies(client: TestClient) -> None:
    one = {"X-Forwarded-For": "203.0.113.1"}
    two = {"X-Forwarded-For": "203.0.113.2"}
    with configured(client, rate_limit="1/minute"):
        # the peer is not a trusted proxy: the header is ignored, both share one bucket
        assert client.post("/v1/exec", json=ZB_BODY, headers=one).status_code == 200
        assert client.post("/v1/exec", json=ZB_BODY, headers=two).status_code == 429
    with configured(client, rate_limit="1/minute", trusted_proxies=("testclient",)):
        assert client.post("/v1/exec", json=ZB_BODY, headers=one).status_code == 200
        assert client.post("/v1/exec", json=ZB_BODY, headers=two).status_code == 200
        assert client.post("/v1/exec", json=ZB_BODY, headers=one).status_code == 429


def test_local_counting_starts_no_thread_per_request_and_still_drops_old_entries(
    monkeypatch,
) -> None:
    import limits.storage.memory as memory

    from execbox.api.auth import Identity
    from execbox.api.ratelimit import RateLimiter

    started: list[object] = []

    class CountingTimer(memory.threading.Timer):  # type: ignore[name-defined,misc]
        def start(self) -> None:
            started.append(self)
            super().start()

    monkeypatch.setattr(memory.threading, "Timer", CountingTimer)
    limiter = RateLimiter("100/second")
    # the storage's constructor starts one, once: proof that this patch sees the library's
    # timers at all
    assert len(started) == 1
    started.clear()
    who = Identity(None, "10.0.0.9")
    for _ in range(5):
        limiter.hit(who, "zeroboot")
        time.sleep(0.03)  # longer than the library's 10 ms timer: it would start anew
    assert started == []
    storage = limiter.local.storage
    key = next(k for k in storage.events if "10.0.0.9" in k)
    assert len(storage.events[key]) == 5
    time.sleep(1.1)  # the window has passed, and so has the expiry's interval
    limiter.hit(who, "zeroboot")
    assert len(storage.events[key]) == 1  # the five old entries were dropped
