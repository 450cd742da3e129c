"""Bulk jobs over HTTP: upload a JSON Lines file, follow its progress, stream its results.

- ``POST /v1/pipelines/{name}/bulk``: the body (JSON Lines) is streamed to a file under
  ``BATCHLINE_BULK_DIR``, never held in memory, and limited by ``BATCHLINE_BULK_MAX_BYTES``
  (not by the JSON bodies' ``BATCHLINE_MAX_BODY_BYTES``: see :func:`own_limit`); an rq job is
  enqueued (``batchline-bulk``) and its id answered, 202.
- ``GET /v1/bulk/{id}``: its progress (done, failed, total, items/s, ETA); ``DELETE`` cancels it.
- ``GET /v1/bulk/{id}/results`` (and ``/failures``): the output as written so far, streamed
  (while it runs, up to its last checkpoint: only what is fsync'd).

Like every /v1 route, they take the API key; a bulk job is its key's only. The rq workers
must see ``BATCHLINE_BULK_DIR`` at the same path (one machine, or a shared volume).
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse
from starlette.types import Scope

from api.documents import JSONResponse, error_responses
from api.errors import ApiError, UnsupportedMediaType, cut
from api.routes import _caller
from queueing.bulk import (
    BulkSpec,
    Progress,
    RqConnection,
    UnknownBulk,
    cancel,
    document,
    enqueue,
    fetch,
    prune_uploads,
    rq_connection,
)
from queueing.keys import Keys
from queueing.settings import Settings

router = APIRouter(prefix="/v1", tags=["bulk"])

_UPLOAD = re.compile(r"^/v1/pipelines/[^/]+/bulk/?$")
MEDIA_TYPES = ("application/x-ndjson", "application/jsonl", "application/jsonlines")
CHUNK = 1 << 16


def own_limit(scope: Scope) -> bool:
    """Whether a request is a bulk upload, whose size its route limits itself."""
    return scope.get("method") == "POST" and bool(_UPLOAD.match(scope.get("path", "")))


class BulkTooLarge(ApiError):
    status = 413
    code = "body_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the file is over the limit of {limit} bytes (BATCHLINE_BULK_MAX_BYTES)",
            limit=limit,
        )


def _redis(request: Request, settings: Settings) -> RqConnection:
    """The gateway's client for rq, opened on first use (rq speaks to one server)."""
    connection: RqConnection | None = getattr(request.app.state, "bulk_redis", None)
    if connection is None:
        connection = request.app.state.bulk_redis = rq_connection(settings)
    return connection


async def _job_doc(request: Request, bulk_id: str) -> dict[str, Any]:
    gateway, owner = _caller(request)
    connection = _redis(request, gateway.settings)
    job = await run_in_threadpool(fetch, connection, bulk_id)
    if (owner or "") != (job.meta.get("owner") or ""):
        raise UnknownBulk(bulk_id)  # another key's job is unknown to this one
    doc = document(job)
    doc["url"] = f"/v1/bulk/{bulk_id}"
    doc["results_url"] = f"/v1/bulk/{bulk_id}/results"
    doc["failures_url"] = f"/v1/bulk/{bulk_id}/failures"
    doc["_durable"] = Progress.from_meta(job.meta).checkpoint
    return doc


@router.post(
    "/pipelines/{name}/bulk",
    status_code=202,
    response_model=None,
    summary="Run a JSON Lines file through a pipeline (a bulk job)",
    responses=error_responses(401, 404, 413, 415, 503),
)
async def submit_bulk(
    name: str,
    request: Request,
    max_in_flight: int = Query(1000, ge=1, le=100_000, description="jobs in flight at once"),
) -> Response:
    """The body is the file, one JSON input per line (`Content-Type: application/x-ndjson`).
    Answers the bulk job's id and where to follow it; rows that fail go to its failures."""
    gateway, owner = _caller(request)
    media_type = (request.headers.get("content-type") or "").partition(";")[0].strip().lower()
    if media_type not in MEDIA_TYPES:
        raise UnsupportedMediaType(
            f"the body must be JSON Lines, sent with 'Content-Type: application/x-ndjson'; "
            f"got {cut(media_type)!r}"
        )
    await gateway.client.pipeline(name)  # 404 for an unknown pipeline, before any upload
    settings = gateway.settings
    limit = settings.bulk_max_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BulkTooLarge(limit)
    # Uploads older than their rq jobs go first (a disk of uploads is not kept for ever).
    await run_in_threadpool(prune_uploads, settings.bulk_dir)
    bulk_id = str(uuid.uuid4())
    folder = await anyio.Path(settings.bulk_dir).resolve() / bulk_id
    await folder.mkdir(parents=True)
    source = folder / "input.jsonl"
    try:
        received = 0
        async with await anyio.open_file(source, "wb") as f:
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise BulkTooLarge(limit)
                await f.write(chunk)
        spec = BulkSpec(
            pipeline=name,
            input=str(source),
            output=str(folder / "results.jsonl"),
            format="jsonl",
            max_in_flight=max_in_flight,
            owner=owner or "",
        )
        connection = _redis(request, settings)
        await run_in_threadpool(lambda: enqueue(connection, spec, job_id=bulk_id))
    except BaseException:
        await run_in_threadpool(shutil.rmtree, str(folder), True)
        raise
    url = f"/v1/bulk/{bulk_id}"
    return JSONResponse(
        {"id": bulk_id, "url": url, "results_url": f"{url}/results", "bytes": received},
        202,
        {"Location": url},
    )


@router.get(
    "/bulk/{bulk_id}",
    response_model=None,
    summary="A bulk job's progress",
    responses=error_responses(401, 404, 503),
)
async def get_bulk(bulk_id: str, request: Request) -> Response:
    doc = await _job_doc(request, bulk_id)
    doc.pop("_durable")
    for path in ("input", "output", "failures"):
        doc.pop(path)  # (the gateway's disk layout is not the caller's business)
    return JSONResponse(doc)


@router.delete(
    "/bulk/{bulk_id}",
    response_model=None,
    summary="Cancel a bulk job",
    responses=error_responses(401, 404, 503),
)
async def cancel_bulk(bulk_id: str, request: Request) -> Response:
    """A queued or scheduled job never runs; a running one cancels the jobs it has in flight
    (queued ones never reach a model) and stops. Answers its progress."""
    gateway, _ = _caller(request)
    await _job_doc(request, bulk_id)  # (404 for another key's)
    connection = _redis(request, gateway.settings)
    keys = Keys(gateway.settings.prefix)
    doc = await run_in_threadpool(cancel, connection, keys, bulk_id)
    for path in ("input", "output", "failures"):
        doc.pop(path)
    return JSONResponse(doc)


async def _stream(path: str, size: int) -> AsyncIterator[bytes]:
    async with await anyio.open_file(path, "rb") as f:
        left = size
        while left > 0:
            chunk = await f.read(min(CHUNK, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk


async def _file(request: Request, bulk_id: str, which: str) -> Response:
    doc = await _job_doc(request, bulk_id)
    path = doc["output"] if which == "results" else doc["failures"]
    durable = doc["_durable"].get("out" if which == "results" else "fail", 0)
    file = anyio.Path(path)
    size = (await file.stat()).st_size if await file.exists() else 0
    if doc["state"] != "done":
        size = min(size, durable)  # what is past the last checkpoint may yet be rewritten
    headers = {"X-Bulk-State": doc["state"], "Content-Length": str(size)}
    if size == 0:
        return Response(b"", media_type=MEDIA_TYPES[0], headers=headers)
    return StreamingResponse(_stream(path, size), media_type=MEDIA_TYPES[0], headers=headers)


@router.get(
    "/bulk/{bulk_id}/results",
    response_model=None,
    summary="A bulk job's results (JSON Lines, in input order)",
    responses=error_responses(401, 404, 503),
)
async def get_bulk_results(bulk_id: str, request: Request) -> Response:
    """`{"row": n, "result": ...}` per line; while the job runs, up to its last checkpoint
    (the `X-Bulk-State` header says whether it has ended)."""
    return await _file(request, bulk_id, "results")


@router.get(
    "/bulk/{bulk_id}/failures",
    response_model=None,
    summary="A bulk job's failed rows (JSON Lines, with their reasons)",
    responses=error_responses(401, 404, 503),
)
async def get_bulk_failures(bulk_id: str, request: Request) -> Response:
    return await _file(request, bulk_id, "failures")
