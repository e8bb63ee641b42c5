"""The outermost layer of every request: body size, request id, rate-limit headers the
handlers left in the scope's state, and the request counter."""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from execbox.api.errors import dialect_of_path, render
from execbox.api.ids import uuid7

KNOWN_ROUTES = {
    "/v1/exec", "/v1/exec/batch", "/v1/health", "/v1/metrics", "/execute", "/health",
    "/info", "/docs", "/swagger-ui", "/openapi.json", "/redoc",
}  # fmt: skip


class BodyTooLarge(Exception):
    pass


class HttpLayer:
    def __init__(self, app: ASGIApp, max_body: int, metrics: Any) -> None:
        self.app = app
        self.max_body = max_body
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        app_state = getattr(scope.get("app"), "state", None)
        settings = getattr(app_state, "settings", None)
        # read per request, so configure() can change it on a running app
        max_body = settings.max_body_bytes if settings is not None else self.max_body
        state = scope.setdefault("state", {})
        state["request_id"] = uuid7()
        path = scope["path"]
        route = path if path in KNOWN_ROUTES else "unmatched"
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = list(message.get("headers", []))
                for k, v in (state.get("rate_limit_headers") or {}).items():
                    if not any(h[0].lower() == k.lower().encode() for h in headers):
                        headers.append((k.encode(), v.encode()))
                headers.append((b"x-request-id", state["request_id"].encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            length = int(dict(scope["headers"]).get(b"content-length", b"0") or 0)
        except ValueError:
            length = 0
        if length > max_body:
            await self._too_large(scope, receive, send_wrapper, max_body)
        else:
            seen = 0

            async def receive_wrapper() -> Message:
                nonlocal seen
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > max_body:
                        raise BodyTooLarge
                return message

            await self.app(scope, receive_wrapper, send_wrapper)
        self.metrics.request(route, scope["method"], status["code"])

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        msg = f"Request body exceeds maximum size limit of {limit} bytes"
        await render(dialect_of_path(scope["path"]), 413, msg)(scope, receive, send)
