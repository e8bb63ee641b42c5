"""Callbacks against a real local HTTP server: signature, retries with backoff, every
attempt recorded, and the allow-list."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from execbox import callbacks as cb


class Receiver:
    """An HTTP server that fails the first `fail` requests with 503."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.seen: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.seen.append((dict(self.headers), body))
                code = 503 if len(outer.seen) <= outer.fail else 204
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()


def test_delivery_is_signed_retried_and_recorded() -> None:
    recv = Receiver(fail=2)
    attempts: list[tuple[int, int | None, str | None]] = []
    sleeps: list[float] = []

    async def record(n: int, code: int | None, err: str | None) -> None:
        attempts.append((n, code, err))

    async def sleep(s: float) -> None:
        sleeps.append(s)

    policy = cb.CallbackPolicy(allowed_hosts=("127.0.0.1",), secret="s3cret", backoff_s=0.1)
    payload = {"execution_id": "e1", "status": "completed"}
    try:
        ok = asyncio.run(cb.deliver(recv.url, payload, policy, record, sleep=sleep))
    finally:
        recv.close()
    assert ok
    assert [a[1] for a in attempts] == [503, 503, 204]
    assert attempts[0][2] == "HTTP 503" and attempts[2][2] is None
    assert sleeps == [0.1, 0.2]  # backoff doubles
    headers, body = recv.seen[-1]
    assert json.loads(body) == payload
    assert cb.verify("s3cret", headers[cb.TIMESTAMP_HEADER], body, headers[cb.SIGNATURE_HEADER])
    assert not cb.verify("other", headers[cb.TIMESTAMP_HEADER], body, headers[cb.SIGNATURE_HEADER])


def test_gives_up_after_the_last_attempt() -> None:
    recv = Receiver(fail=99)
    attempts: list[int] = []

    async def record(n: int, code: int | None, err: str | None) -> None:
        attempts.append(n)

    async def sleep(s: float) -> None:
        pass

    policy = cb.CallbackPolicy(allowed_hosts=("127.0.0.1",), attempts=3)
    try:
        ok = asyncio.run(cb.deliver(recv.url, {}, policy, record, sleep=sleep))
    finally:
        recv.close()
    assert not ok and attempts == [1, 2, 3]


@pytest.mark.parametrize(
    ("url", "allowed", "why"),
    [
        ("ftp://example.com/x", ("*",), "http or https"),
        ("http://evil.example/x", ("good.example",), "not on the callback allow-list"),
        ("http://127.0.0.1:8080/x", ("*",), "internal address"),
        ("http://10.1.2.3/x", ("*",), "internal address"),
        ("http://169.254.169.254/latest", ("*",), "internal address"),
        ("http://[::1]/x", ("*",), "internal address"),
    ],
)
def test_refused_callback_urls(url: str, allowed: tuple[str, ...], why: str) -> None:
    with pytest.raises(cb.CallbackRefused, match=why):
        cb.check_url(url, cb.CallbackPolicy(allowed_hosts=allowed))


def test_loopback_allowed_only_when_named() -> None:
    policy = cb.CallbackPolicy(allowed_hosts=("127.0.0.1:9000",))
    assert cb.check_url("http://127.0.0.1:9000/hook", policy)
    with pytest.raises(cb.CallbackRefused):
        cb.check_url("http://127.0.0.1:9001/hook", policy)
