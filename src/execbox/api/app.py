"""The app factory: one Engine per app, the HTTP policy derived from Settings, and the
three dialects' routers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from execbox.api import errors, executor, faber, shared, zeroboot
from execbox.api.common import VERSION, Policy
from execbox.api.metrics import Metrics
from execbox.api.middleware import HttpLayer
from execbox.config import Settings
from execbox.engine import Engine

# request bodies are read by hand (each dialect shapes its own errors), so their schemas
# are added to the document here rather than discovered from the endpoints' signatures
REQUEST_MODELS: list[type[BaseModel]] = [
    zeroboot.ZbExecRequest,
    zeroboot.ZbBatchRequest,
    faber.FaberRequest,
    executor.ExecutorRequest,
]


def configure(app: FastAPI, settings: Settings) -> None:
    """(Re)derive auth, rate limits and audit from settings; the engine is left running."""
    app.state.settings = settings
    app.state.policy = Policy.from_settings(settings)


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    _, top = models_json_schema(
        [(m, "validation") for m in REQUEST_MODELS], ref_template="#/components/schemas/{model}"
    )
    schema.setdefault("components", {}).setdefault("schemas", {}).update(top["$defs"])
    app.openapi_schema = schema
    return schema


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = Engine(settings)
        await engine.start()
        metrics.attach(engine)
        app.state.engine = engine
        try:
            yield
        finally:
            metrics.detach(engine)
            await engine.close()

    app = FastAPI(
        title="execbox",
        version=VERSION,
        description="Runs untrusted code in kernel-isolated sandboxes. Speaks three APIs: "
        "ZeroBoot (/v1/*), Faber (POST /execute with tasks) and Sandbox Executor "
        "(POST /execute with code, GET /info).",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.metrics = metrics
    configure(app, settings)
    errors.install(app)
    app.include_router(zeroboot.router)
    app.include_router(shared.router)
    app.include_router(executor.router)

    @app.get("/swagger-ui", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="execbox API")

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(HttpLayer, max_body=settings.max_body_bytes, metrics=metrics)
    return app
