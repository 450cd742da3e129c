"""The endpoints. Each one reads its request, calls the :class:`~api.gateway.Gateway`, and
shapes the answer; errors are raised and mapped to status codes in :mod:`api.errors`."""

from __future__ import annotations

import math
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Header, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from api import events
from api.auth import presented_key
from api.documents import (
    Accepted,
    JobDocument,
    JSONResponse,
    RunBody,
    SubmitBody,
    accepted,
    error_responses,
    job_document,
    pipeline_document,
    request_body,
)
from api.errors import InvalidInput, NotReady, Unauthorized, cut
from api.gateway import Gateway
from api.submission import MAX_DEPTH, MAX_INT, MIN_INT, check_content_type, parse_submission
from queueing.chunks import check_event_id
from queueing.errors import BrokerUnavailable, InvalidEventId, UnknownPipeline

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="The API key")


async def _gateway(request: Request) -> Gateway:
    # async: a plain def dependency would cost every request a hop to the thread pool
    return cast(Gateway, request.app.state.gateway)


GatewayDep = Annotated[Gateway, Depends(_gateway)]


async def _owner(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    api_key: Annotated[str | None, Security(_api_key)],
) -> str | None:
    """The caller's identity (None when auth is off); 401 without a valid key. (The two
    security schemes are declared for /docs; the headers are read as the hot routes do.)"""
    return _caller(request)[1]


Owner = Annotated[str | None, Depends(_owner)]

# The hot routes (submit, run, poll) read their caller and headers here rather than through
# FastAPI's dependency injection, which cost them more than the rest of the request; their
# parameters and security are described for /docs by _HOT_DOCS instead.
_IDEMPOTENCY_KEY_MAX = 200
_HOT_DOCS: dict[str, Any] = {
    "parameters": [
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "description": "Retrying with the same key returns the same job(s) instead of new "
            "ones; the same key with a different input is a 409. Keys are per API key, kept for "
            "BATCHLINE_RESULT_TTL_S. 1 to 200 characters.",
            "schema": {"type": "string", "minLength": 1, "maxLength": _IDEMPOTENCY_KEY_MAX},
        }
    ],
    "security": [{"HTTPBearer": []}, {"APIKeyHeader": []}],
}


def _caller(request: Request) -> tuple[Gateway, str | None]:
    """The gateway, and the caller's identity (None when auth is off); 401 without a valid
    key (``X-API-Key: <key>`` or ``Authorization: Bearer <key>``)."""
    gateway = cast(Gateway, request.app.state.gateway)
    if not gateway.keys.enabled:
        return gateway, None
    presented = presented_key(header(request, b"x-api-key"), header(request, b"authorization"))
    return gateway, gateway.keys.owner(presented)


def header(request: Request, name: bytes) -> str | None:
    """The value of a request's header ``name`` (lower case, as ASGI hands names over), None
    without one. (Starlette's ``request.headers.get`` raises and catches a KeyError for each
    header that is absent, a cost on the hot routes.)"""
    for key, value in request.scope["headers"]:
        if key == name:
            return cast(bytes, value).decode("latin-1")
    return None


def _sees_operations(request: Request) -> bool:
    """Whether the caller may see the operations data (metrics, pipeline names): always with
    auth off or BATCHLINE_PUBLIC_OPS, else with a valid key (401 for a wrong one)."""
    gateway = cast(Gateway, request.app.state.gateway)
    if not gateway.keys.enabled or gateway.settings.public_ops:
        return True
    headers = request.headers
    if "x-api-key" not in headers and "authorization" not in headers:
        return False
    _caller(request)
    return True


def _idempotency_key(request: Request) -> str | None:
    key = header(request, b"idempotency-key")
    if key is not None and not 0 < len(key) <= _IDEMPOTENCY_KEY_MAX:
        raise InvalidInput(
            f"the Idempotency-Key header must be 1 to {_IDEMPOTENCY_KEY_MAX} characters",
            [{"where": "header.Idempotency-Key", "message": "empty or too long"}],
        )
    return key


_BODY = (
    "JSON, sent with `Content-Type: application/json` (or another `application/*+json`). "
    f"Arrays and objects nest at most {MAX_DEPTH} levels deep (the body's object is the first); "
    f"integers are from {MIN_INT} to {MAX_INT}."
)

v1 = APIRouter(prefix="/v1", tags=["jobs"])
ops = APIRouter(tags=["operations"])


@v1.post(
    "/pipelines/{name}/jobs",
    status_code=202,
    response_model=None,
    summary="Submit one input, or several",
    responses={
        202: {
            "model": Accepted | list[Accepted],
            "description": "Queued: the job's id and where to poll it (a list for `inputs`).",
        },
        **error_responses(401, 404, 409, 413, 415, 422, 429, 503),
    },
    openapi_extra={**request_body(SubmitBody, _BODY), **_HOT_DOCS},
)
async def submit(name: str, request: Request) -> Response:
    """Queue `{"input": ...}` (answers one job) or `{"inputs": [...]}` (answers a list, one job
    per input, in order). Each input is checked against the pipeline's input schema first.
    Retrying with the same Idempotency-Key returns the same jobs rather than new ones (inputs
    are queued all or none, except past 256 of them or across partitions)."""
    gateway, owner = _caller(request)
    check_content_type(header(request, b"content-type"))
    idempotency_key = _idempotency_key(request)
    submission = parse_submission(await request.body())
    jobs = await gateway.submit(name, submission, idempotency_key=idempotency_key, owner=owner)
    docs = [accepted(request, job_id, status) for job_id, status in jobs]
    if submission.many:
        return JSONResponse(docs, 202)
    return JSONResponse(docs[0], 202, {"Location": docs[0]["url"]})


@v1.post(
    "/pipelines/{name}",
    response_model=None,
    summary="Run one input and wait for its result",
    responses={
        200: {
            "model": JobDocument,
            "description": "The job has finished: `status` says how (done, failed, expired or "
            "cancelled), with `result` or `error`; the same document as a poll.",
        },
        **error_responses(401, 404, 409, 413, 415, 422, 429, 503, 504),
    },
    openapi_extra={**request_body(RunBody, _BODY), **_HOT_DOCS},
)
async def run(name: str, request: Request) -> Response:
    """Submit `{"input": ...}` and wait until the job finishes, at most `timeout_s` (and at
    most the gateway's BATCHLINE_MAX_WAIT_S). A finished job is a 200 whatever its outcome;
    past the timeout the answer is a 504 with the job's id and url: it goes on, poll it."""
    gateway, owner = _caller(request)
    check_content_type(header(request, b"content-type"))
    idempotency_key = _idempotency_key(request)
    submission = parse_submission(await request.body(), allow_many=False)
    ended = await gateway.run(name, submission, idempotency_key=idempotency_key, owner=owner)
    return job_document(request, ended)


_WAIT_DOCS = {
    "name": "wait",
    "in": "query",
    "required": False,
    "description": "Long-poll: answer as soon as the job finishes, or after this many seconds "
    "(capped at BATCHLINE_MAX_WAIT_S) with its status then.",
    "schema": {"type": "number", "minimum": 0, "default": 0},
}


@v1.get(
    "/jobs/{job_id}",
    response_model=None,
    summary="A job's status, result or error, and timings",
    responses={200: {"model": JobDocument}, **error_responses(401, 404, 422, 503)},
    openapi_extra={"parameters": [_WAIT_DOCS], "security": _HOT_DOCS["security"]},
)
async def get_job(job_id: str, request: Request) -> Response:
    gateway, owner = _caller(request)
    return job_document(request, await gateway.poll(job_id, owner, _wait(request)))


def _wait(request: Request) -> float:
    """The poll's ``wait`` query parameter: seconds >= 0 (0 without one)."""
    text = request.query_params.get("wait")
    if text is None:
        return 0.0
    try:
        wait = float(text)
    except ValueError:
        wait = math.nan
    if not 0 <= wait < math.inf:
        raise InvalidInput(
            f"wait must be a number of seconds >= 0, got {cut(text)!r}",
            [{"where": "query.wait", "message": "must be a number >= 0"}],
        )
    return wait


@v1.delete(
    "/jobs/{job_id}",
    response_model=None,
    summary="Cancel a job",
    responses={200: {"model": JobDocument}, **error_responses(401, 404, 503)},
)
async def cancel_job(job_id: str, request: Request, gateway: GatewayDep, owner: Owner) -> Response:
    """A queued job never reaches a model; a running one's result is dropped. A job that has
    already finished keeps its outcome. Answers the job as it is after."""
    return job_document(request, await gateway.cancel(job_id, owner))


@v1.post(
    "/pipelines/{name}/stream",
    response_model=None,
    response_class=events.EventStream,
    summary="Run one input and stream its outputs (Server-Sent Events)",
    responses=events.responses(401, 404, 409, 413, 415, 422, 429, 503),
    openapi_extra={**request_body(RunBody, _BODY), **_HOT_DOCS},
)
async def stream(name: str, request: Request) -> Response:
    """Submit `{"input": ...}` and answer `text/event-stream`: first a `job` event (its `id`
    and `url`), then one event per output the job streams, each with an `id:`, `event: chunk`
    (`{"seq", "attempt", "value"}`), `event: restart` (`{"attempt"}`: its worker died and
    another runs it again: drop the chunks so far), and last `event: end` (`{"status"}`, and
    `"error"` unless done). A pipeline that does not stream sends its result as one chunk. The
    response stays open at most BATCHLINE_MAX_WAIT_S (then `event: timeout`); if reading the
    stream fails meanwhile (the job's record expired, Redis stayed unreachable), it ends with
    `event: error` (`{"error"}`). Disconnecting cancels nothing: resume with
    `GET /v1/jobs/{id}/events` and `Last-Event-ID`. Past BATCHLINE_MAX_STREAMS open streams,
    429 (with `Retry-After`), and nothing is submitted."""
    gateway, owner = _caller(request)
    check_content_type(header(request, b"content-type"))
    idempotency_key = _idempotency_key(request)
    submission = parse_submission(await request.body(), allow_many=False)
    job_id, status, found = await gateway.stream(  # (429 past BATCHLINE_MAX_STREAMS)
        name, submission, idempotency_key=idempotency_key, owner=owner
    )
    job = accepted(request, job_id, status)
    job["events"] = job["url"] + "/events"
    body = events.sse(found, job_id, gateway.settings.max_wait_s, events.frame("job", job))
    headers = {**events.HEADERS, "Location": job["url"]}
    return events.EventStream(body, headers=headers)


@v1.get(
    "/jobs/{job_id}/events",
    response_model=None,
    response_class=events.EventStream,
    summary="Follow a job's streamed outputs (Server-Sent Events), or resume them",
    responses=events.responses(401, 404, 422, 429, 503),
    openapi_extra={"security": _HOT_DOCS["security"]},
)
async def job_events(
    job_id: str,
    request: Request,
    last_event_id: Annotated[
        str | None,
        Header(
            pattern=r"^[0-9]{1,20}(-[0-9]{1,20})?$",
            description="Resume after this event (the `id:` of the last one received): "
            "`<ms>-<seq>` or `<ms>`, each part at most 18446744073709551615.",
        ),
    ] = None,
) -> Response:
    """The job's events as `POST /v1/pipelines/{name}/stream` sends them (without its `job`
    event: `chunk`, `restart`, then `end`; `timeout` past BATCHLINE_MAX_WAIT_S; `error`
    (`{"error"}`) if reading the stream fails meanwhile), from the start or after
    `Last-Event-ID` (422 if it is not an event id). Past BATCHLINE_MAX_STREAMS open streams,
    429 (with `Retry-After`)."""
    gateway, owner = _caller(request)
    after = _last_event_id(last_event_id)
    found = await gateway.events(job_id, owner, after)
    body = events.sse(found, job_id, gateway.settings.max_wait_s)
    return events.EventStream(body, headers=events.HEADERS)


def _last_event_id(value: str | None) -> str:
    """The header's cursor ("0": none), checked before the answer starts."""
    if not value:
        return "0"
    try:
        return check_event_id(value)
    except InvalidEventId as exc:
        raise InvalidInput(
            f"Last-Event-ID: {exc}", [{"where": "header.last-event-id", "message": str(exc)}]
        ) from exc


@v1.get(
    "/pipelines",
    response_model=None,
    summary="The registered pipelines",
    responses=error_responses(401, 503),
)
async def list_pipelines(gateway: GatewayDep, owner: Owner) -> Response:
    """Each pipeline's stages with their batch settings, its input schema and example, its
    backlog and the live workers serving it."""
    view = await gateway.overview()
    return JSONResponse(
        {"pipelines": [pipeline_document(spec, view) for _, spec in sorted(view.pipelines.items())]}
    )


@v1.get(
    "/pipelines/{name}",
    response_model=None,
    summary="One pipeline",
    responses=error_responses(401, 404, 503),
)
async def get_pipeline(name: str, gateway: GatewayDep, owner: Owner) -> Response:
    view = await gateway.overview()
    spec = view.pipelines.get(name)
    if spec is None:
        raise UnknownPipeline(name)
    doc: dict[str, Any] = pipeline_document(spec, view)
    doc["live_workers"] = {worker: view.workers[worker] for worker in doc["workers"]}
    return JSONResponse(doc)


@ops.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@ops.get(
    "/readyz",
    summary="Redis answers and pipelines are registered",
    responses=error_responses(401, 503),
)
async def readyz(request: Request, gateway: GatewayDep) -> Response:
    """200 once Redis answers and a pipeline is registered (for probes: no key needed); the
    pipelines' names only for those who may see them (see BATCHLINE_PUBLIC_OPS)."""
    pipelines = await gateway.ready()
    if not pipelines:
        raise NotReady("no pipeline is registered yet: start a worker, or run `batchline register`")
    if not _sees_operations(request):
        return JSONResponse({"status": "ready"})
    nodes = gateway.nodes()
    return JSONResponse(
        {"status": "ready", "pipelines": pipelines, **({"nodes": nodes} if nodes else {})}
    )


@ops.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses=error_responses(401),
)
async def metrics(request: Request, gateway: GatewayDep) -> Response:
    """Prometheus text; with API keys on, for a valid key only (unless BATCHLINE_PUBLIC_OPS)."""
    if not _sees_operations(request):
        raise Unauthorized(
            "an API key is required for /metrics (or set BATCHLINE_PUBLIC_OPS=1 to open it)"
        )
    try:
        view = await gateway.overview()
    except BrokerUnavailable:
        view = None  # the gateway's own figures are still worth scraping
    return Response(gateway.metrics.render(view), media_type=CONTENT_TYPE_LATEST)
