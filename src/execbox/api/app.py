"""The app factory: one Engine per app, the HTTP policy derived from Settings, and the
three dialects' routers."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from execbox.api import errors, executor, faber, records, shared, zeroboot
from execbox.api.common import VERSION, Policy
from execbox.api.metrics import Metrics
from execbox.api.middleware import HttpLayer
from execbox.callbacks import CallbackPolicy, allowed_hosts
from execbox.config import Settings
from execbox.engine import Engine
from execbox.executions import Executions, RecordCaps
from execbox.sessions import SessionConfig, Sessions
from execbox.store.sqlite import Store

log = logging.getLogger("execbox.api")
HOUSEKEEPING_S = 30.0

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


def session_config(s: Settings) -> SessionConfig:
    return SessionConfig(
        root=os.path.join(s.state_dir, "sessions"),
        uid_base=s.session_uid_base,
        uid_count=s.session_uid_count,
        quota_bytes=s.session_quota_bytes,
        idle_ttl_s=s.session_idle_ttl_s,
    )


def record_caps(s: Settings) -> RecordCaps:
    return RecordCaps(s.record_retention_s, s.record_max_code_bytes, s.record_max_output_bytes)


def callback_policy(s: Settings) -> CallbackPolicy:
    return CallbackPolicy(
        allowed_hosts=allowed_hosts(s.callback_allowed_hosts),
        secret=s.callback_secret or "",
        attempts=s.callback_attempts,
        backoff_s=s.callback_backoff_s,
    )


async def _housekeeping(store: Store, sessions: Sessions) -> None:
    """Expire old records and idle sessions, now and then, off the request path."""
    while True:
        await asyncio.sleep(HOUSEKEEPING_S)
        try:
            await store.call(store.expire)
            await asyncio.to_thread(sessions.gc)
        except Exception:  # a bug: keep the server up, and say so
            log.exception("housekeeping failed")


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = Store(os.path.join(settings.state_dir, "execbox.db"))
        sessions = Sessions(store, session_config(settings))
        sessions.prepare()  # before the zygotes start, so they see the workspaces' mounts
        engine = Engine(settings, sessions)
        await engine.start()
        metrics.attach(engine)
        cluster = None
        if settings.redis_url:
            from execbox.cluster.node import Cluster

            cluster = Cluster(settings, engine, store, sessions)
        execs = Executions(
            engine,
            cluster.records if cluster else store,
            record_caps(settings),
            callback_policy(settings),
            node=cluster.me if cluster else "local",
            queue=cluster.queue if cluster else None,
        )
        app.state.engine = engine
        app.state.store = store
        app.state.records = execs.store
        app.state.sessions = sessions
        app.state.executions = execs
        app.state.cluster = cluster
        if cluster is not None:
            cluster.attach(execs)
            await cluster.start()
        recovered = await execs.recover()
        if any(recovered.values()):
            log.warning("recovered executions after a restart: %s", recovered)
        housekeeping = asyncio.get_running_loop().create_task(_housekeeping(store, sessions))
        try:
            yield
        finally:
            housekeeping.cancel()
            if cluster is not None:
                await cluster.close()
            await execs.drain(timeout=5)
            metrics.detach(engine)
            await engine.close()
            store.close()

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
    app.include_router(records.router)

    @app.get("/swagger-ui", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="execbox API")

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(HttpLayer, max_body=settings.max_body_bytes, metrics=metrics)
    return app
