"""Errors in each dialect's own shape. A dialect is chosen per request: by route for
ZeroBoot, by body for the shared POST /execute ("unknown" when the body cannot tell)."""

from __future__ import annotations

from typing import Literal

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

Dialect = Literal["zeroboot", "faber", "executor", "unknown"]

# Faber names each status with a fixed title; its details carry the specifics.
FABER_TITLES = {
    400: "Validation error",
    401: "Authentication required",
    403: "Access denied",
    404: "Not found",
    405: "Method not allowed",
    413: "Request too large",
    415: "Unsupported media type",
    429: "Rate limit exceeded",
    500: "Internal server error",
    503: "Service unavailable",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        dialect: Dialect,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.dialect = dialect
        self.headers = headers or {}


def body_for(dialect: Dialect, status: int, message: str) -> dict[str, str]:
    title = FABER_TITLES.get(status, "Error")
    if dialect == "zeroboot":
        return {"error": message}
    if dialect == "executor":
        return {"detail": message}
    if dialect == "faber":
        return {"error": title, "details": message}
    # both spellings, so a Faber or a Sandbox Executor client understands it
    return {"error": title, "details": message, "detail": message}


def render(
    dialect: Dialect, status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(body_for(dialect, status, message), status_code=status, headers=headers)


def dialect_of_path(path: str) -> Dialect:
    if path.startswith("/v1/"):
        return "zeroboot"
    if path == "/info":
        return "executor"
    return "unknown"


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return render(exc.dialect, exc.status, exc.message, exc.headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return render(dialect_of_path(request.url.path), exc.status_code, str(exc.detail), exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    # only the Sandbox Executor dialect answers with FastAPI's own 422 list
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": jsonable_encoder(exc.errors())}, status_code=422)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    return render(dialect_of_path(request.url.path), 500, "unexpected server error")


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
