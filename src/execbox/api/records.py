"""Execution records and sessions, in the Sandbox Executor dialect's shape:
GET /executions/{id}; GET and DELETE /sessions/{id}; GET /sessions/{id}/executions;
GET /sessions/{id}/files; GET, PUT and DELETE /sessions/{id}/files/{path}."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from execbox import sessions as S
from execbox.api import common
from execbox.api.errors import ApiError
from execbox.api.executor import render_record
from execbox.cluster.link import RedisDown

D = "executor"
MAX_FILE_BYTES = 64 << 20

router = APIRouter(tags=["Sandbox Executor: records and sessions"])


def _admit(request: Request) -> None:
    common.admit(request, D)


async def _elsewhere(request: Request, session_id: str, place: bool = False) -> Response | None:
    """Admit the request; then, in a cluster, the answer of the node that holds the
    session, if not this one."""
    _admit(request)
    try:
        S.check_id(session_id)
    except S.SessionError as exc:
        raise ApiError(400, str(exc), D) from None
    return await common.route_session(request, session_id, D, place=place)


def _file_error(exc: Exception, session_id: str, path: str, verb: str) -> ApiError:
    if isinstance(exc, S.SessionError):
        return ApiError(400, str(exc), D)
    if isinstance(exc, FileNotFoundError):
        return ApiError(404, f"file {path!r} not found in session {session_id!r}", D)
    assert isinstance(exc, OSError)
    # a symlink, a directory, a device or a file too large: refused, never followed
    return ApiError(400, f"path: {path!r} cannot be {verb}: {exc.strerror}", D)


def _records_down(exc: RedisDown) -> ApiError:
    return ApiError(503, f"Execution records are in Redis, which is down ({exc})", D,
                    {"Retry-After": "1"})  # fmt: skip


def _workspace(request: Request, session_id: str) -> S.Workspace:
    try:
        ws = common.sessions(request).get(session_id)
    except S.SessionError as exc:
        raise ApiError(400, str(exc), D) from None
    if ws is None:
        raise ApiError(404, f"session {session_id!r} not found", D)
    return ws


@router.get("/executions/{execution_id}", summary="An execution's record")
async def get_execution(request: Request, execution_id: str) -> JSONResponse:
    _admit(request)
    store = request.app.state.records
    try:
        record = await store.call(store.get_execution, execution_id)
    except RedisDown as exc:
        raise _records_down(exc) from None
    if record is None:
        raise ApiError(404, f"execution {execution_id!r} not found", D)
    return JSONResponse(render_record(record))


@router.get("/sessions/{session_id}", summary="A session's state, size and last use")
async def get_session(request: Request, session_id: str) -> Response:
    if (elsewhere := await _elsewhere(request, session_id)) is not None:
        return elsewhere
    ws = _workspace(request, session_id)
    return JSONResponse(await asyncio.to_thread(common.sessions(request).info, ws))


@router.delete("/sessions/{session_id}", summary="Remove a session and its workspace")
async def delete_session(request: Request, session_id: str) -> Response:
    cluster = common.cluster(request)
    try:
        elsewhere = await _elsewhere(request, session_id)
    except ApiError as exc:
        if exc.status != 410 or cluster is None:
            raise
        await cluster.forget(session_id)  # a lost session may now start again, empty
        return Response(status_code=204)
    if elsewhere is not None:
        return elsewhere
    sessions = common.sessions(request)
    _workspace(request, session_id)
    async with sessions.lock(session_id):  # not under a running execution
        await asyncio.to_thread(sessions.delete, session_id)
    if cluster is not None:
        await cluster.forget(session_id)
    return Response(status_code=204)


@router.get("/sessions/{session_id}/executions", summary="A session's records, paginated")
async def list_executions(
    request: Request,
    session_id: str,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=1_000_000_000),
) -> JSONResponse:
    _admit(request)
    store = request.app.state.records
    try:
        rows, total = await store.call(store.list_session_executions, session_id, limit, offset)
    except RedisDown as exc:
        raise _records_down(exc) from None
    return JSONResponse(
        {
            "session_id": session_id,
            "total": total,
            "limit": limit,
            "offset": offset,
            "executions": [render_record(r) for r in rows],
        }
    )


@router.get("/sessions/{session_id}/files", summary="The files of a session's workspace")
async def list_files(request: Request, session_id: str) -> Response:
    if (elsewhere := await _elsewhere(request, session_id)) is not None:
        return elsewhere
    ws = _workspace(request, session_id)
    files: list[dict[str, Any]] = await asyncio.to_thread(S.list_files, ws.path)
    return JSONResponse({"session_id": session_id, "files": files})


@router.get("/sessions/{session_id}/files/{path:path}", summary="Download a file")
async def download(request: Request, session_id: str, path: str) -> Response:
    if (elsewhere := await _elsewhere(request, session_id)) is not None:
        return elsewhere
    ws = _workspace(request, session_id)
    try:
        data = await asyncio.to_thread(S.read_file, ws, path, MAX_FILE_BYTES)
    except (S.SessionError, OSError) as exc:
        raise _file_error(exc, session_id, path, "read") from None
    return Response(data, media_type=S.mimetypes.guess_type(path)[0] or "application/octet-stream")


@router.put("/sessions/{session_id}/files/{path:path}", summary="Upload a file")
async def upload(request: Request, session_id: str, path: str) -> Response:
    if (elsewhere := await _elsewhere(request, session_id, place=True)) is not None:
        return elsewhere
    sessions = common.sessions(request)
    try:
        S.resolve_rel(path)  # a bad path creates no session
        ws = await asyncio.to_thread(sessions.ensure, session_id)
    except S.SessionError as exc:
        raise ApiError(400, str(exc), D) from None
    data = await common.read_body(request, D)
    async with sessions.lock(session_id):
        try:
            await asyncio.to_thread(S.write_file, ws, path, data)
        except OSError as exc:
            code = 507 if exc.errno == 28 else 400  # ENOSPC: over the session's quota
            raise ApiError(code, f"path: {path!r} cannot be written: {exc.strerror}", D) from None
        await asyncio.to_thread(sessions.touch, session_id)
    return JSONResponse(
        {"session_id": session_id, "path": path, "size": len(data)}, status_code=201
    )


@router.delete("/sessions/{session_id}/files/{path:path}", summary="Remove a file")
async def remove(request: Request, session_id: str, path: str) -> Response:
    if (elsewhere := await _elsewhere(request, session_id)) is not None:
        return elsewhere
    ws = _workspace(request, session_id)
    try:
        await asyncio.to_thread(S.delete_file, ws, path)
    except (S.SessionError, OSError) as exc:
        raise _file_error(exc, session_id, path, "removed") from None
    return Response(status_code=204)
