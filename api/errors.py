"""Every error the gateway answers, mapped to an HTTP status in this one module.

The body is always JSON of one shape, never a traceback::

    {"error": "<code>", "message": "<what happened, and what to do>", ...details}

- 422 ``InvalidInput``, ``InvalidEventId``, FastAPI's ``RequestValidationError``: ``errors``, each
  ``{"where", "message"}`` (``where`` like ``input.name`` or ``query.wait``)
- 413 ``BodyTooLarge``: ``limit`` in bytes
- 415 ``UnsupportedMediaType``: a body sent as anything but JSON (``Content-Type``)
- 401 ``Unauthorized``: ``WWW-Authenticate: Bearer``
- 404 ``UnknownPipeline``, ``UnknownJob`` (another key's job is unknown too), unknown routes
- 405 a method the path does not take: ``Allow`` lists every one it does
- 409 ``IdempotencyConflict``: ``id`` of the job the key names
- 429 ``QueueFull``, ``TooManyStreams`` (the gateway follows BATCHLINE_MAX_STREAMS event
  streams already; nothing was submitted): ``Retry-After``
- 503 ``BrokerUnavailable`` (and redis-py's errors of an unreachable Redis, should one slip by),
  ``BrokerFull`` (Redis at its ``maxmemory``), ``NotReady``: ``Retry-After``; ``NotDurable``
  (a durable submit queued but not confirmed on disk or on a replica): ``ids`` and ``urls`` of
  the jobs it queued, which run
- 504 ``ResultTimeout``: ``id`` and ``url`` of the job, which goes on: poll it
- 500 any other ``BatchlineError`` (a deployment problem), and anything else (with its
  traceback)

What a client sent is echoed cut short (:func:`cut`): a message never repeats a whole input.
What is internal (Redis's address and errno, an exception's text, a traceback) goes to the log,
never into a body.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from api.documents import JSONResponse, job_path
from api.methods import allowed_methods
from queueing.connection import REDIS_DOWN
from queueing.errors import (
    BatchlineError,
    BrokerFull,
    BrokerUnavailable,
    IdempotencyConflict,
    InvalidEventId,
    NotDurable,
    QueueFull,
    ResultTimeout,
    TooManyStreams,
    UnknownJob,
    UnknownPipeline,
)

log = logging.getLogger(__name__)

BROKER_RETRY_AFTER_S = 2
"""What a 503 tells clients to wait before retrying while Redis is unreachable."""

MAX_REPORTED_ERRORS = 20
MAX_ECHO_CHARS = 200
"""The most of a client's value (an input, a key, a field name) an error repeats."""
MAX_MESSAGE_CHARS = 600
"""The longest ``message`` an error body holds."""
_INTERNAL = "internal error; the gateway's log has the details"


def cut(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """``text``, cut to ``limit`` characters (the cut marked with an ellipsis)."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


class ApiError(Exception):
    """An error only the gateway raises (bad requests, mostly)."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidInput(ApiError):
    """The body is not JSON, not of the expected shape, or fails the pipeline's schema."""

    status = 422
    code = "invalid_input"

    def __init__(self, message: str, errors: Sequence[Mapping[str, str]] = ()) -> None:
        super().__init__(
            cut(message, MAX_MESSAGE_CHARS),
            errors=[
                {key: cut(value) for key, value in error.items()}
                for error in errors[:MAX_REPORTED_ERRORS]
            ],
        )


class BodyTooLarge(ApiError):
    """The request body passed the configured limit (counted on the bytes received)."""

    status = 413
    code = "body_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the request body is over the limit of {limit} bytes (BATCHLINE_MAX_BODY_BYTES)",
            limit=limit,
        )


class UnsupportedMediaType(ApiError):
    """A body sent as anything but JSON (a form or plain text, as any web page can make a
    browser send: refusing them is what keeps such pages from submitting jobs)."""

    status = 415
    code = "unsupported_media_type"


class Unauthorized(ApiError):
    """No API key, or one that is not configured."""

    status = 401
    code = "unauthorized"


class Forbidden(ApiError):
    """A valid API key that may not do this (an admin route, with BATCHLINE_ADMIN_KEYS)."""

    status = 403
    code = "forbidden"


class NotReady(ApiError):
    """Redis answers but the gateway cannot serve yet (no pipeline is registered)."""

    status = 503
    code = "not_ready"


def problem(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None, **details: Any
) -> Response:
    """The one error body shape."""
    return JSONResponse(
        {"error": code, "message": cut(message, MAX_MESSAGE_CHARS), **details},
        status,
        dict(headers or {}),
    )


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    headers: dict[str, str] | None = None
    if isinstance(exc, Unauthorized):
        headers = {"WWW-Authenticate": "Bearer"}
    elif isinstance(exc, NotReady):
        headers = _retry_after(BROKER_RETRY_AFTER_S)
    return problem(exc.status, exc.code, exc.message, headers, **exc.details)


async def _batchline_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BatchlineError)
    message = str(exc)
    if isinstance(exc, UnknownPipeline):
        return problem(404, "unknown_pipeline", message, pipeline=cut(exc.name))
    if isinstance(exc, UnknownJob):
        return problem(404, "unknown_job", message)
    if isinstance(exc, IdempotencyConflict):
        return problem(409, "idempotency_conflict", message, id=exc.job_id)
    if isinstance(exc, QueueFull):
        headers = _retry_after(exc.retry_after)
        return problem(429, "queue_full", message, headers, lane=exc.lane)
    if isinstance(exc, InvalidEventId):  # (the routes check theirs first, naming the header)
        return problem(422, "invalid_input", message, errors=[])
    if isinstance(exc, TooManyStreams):
        return problem(429, "too_many_streams", message, _retry_after(exc.retry_after))
    if isinstance(exc, BrokerFull):
        log.warning("answering 503: %s", exc)
        return problem(503, "broker_full", message, _retry_after(exc.retry_after))
    if isinstance(exc, BrokerUnavailable):
        # Its text names Redis's address and errno: for the log, not for clients.
        log.warning("answering 503: %s", exc)
        return problem(
            503,
            "broker_unavailable",
            f"Redis is unreachable; retry after {BROKER_RETRY_AFTER_S}s",
            _retry_after(BROKER_RETRY_AFTER_S),
        )
    if isinstance(exc, NotDurable):
        # Queued all the same (the jobs run): the caller learns their ids, and that a crash
        # (or failover) of the server before it syncs could lose them.
        log.warning("answering 503: %s", exc)
        return problem(
            503,
            "not_durable",
            message,
            _retry_after(BROKER_RETRY_AFTER_S),
            ids=exc.job_ids,
            urls=[job_path(request, job_id) for job_id in exc.job_ids],
        )
    if isinstance(exc, ResultTimeout):
        return problem(504, "timeout", message, id=exc.job_id, url=job_path(request, exc.job_id))
    log.error("answering 500: %s: %s", type(exc).__name__, exc)
    return problem(500, "internal", _INTERNAL)


async def _redis_unreachable(request: Request, exc: Exception) -> Response:
    # A safety net: the client converts these where they enter; one that slips through is
    # still an unreachable broker, not a bug to show as a 500.
    return await _batchline_error(request, BrokerUnavailable(f"Redis is unreachable: {exc}"))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"where": cut(".".join(str(part) for part in error["loc"])), "message": cut(error["msg"])}
        for error in exc.errors()
    ]
    summary = "; ".join(f"{e['where']}: {e['message']}" for e in errors[:3])
    return problem(
        422, "invalid_input", f"invalid request: {summary}", errors=errors[:MAX_REPORTED_ERRORS]
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        # Starlette's Allow names the methods of the first route on the path; a path served
        # by several routes (GET and POST /v1/pipelines/{name}) takes all of theirs.
        allowed = ", ".join(allowed_methods(request))
        return problem(
            405,
            "method_not_allowed",
            f"{cut(request.url.path)} takes {allowed}",
            {**(exc.headers or {}), "Allow": allowed},
        )
    code = {404: "not_found"}.get(exc.status_code, "http_error")
    return problem(exc.status_code, code, str(exc.detail), exc.headers)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(500, "internal", _INTERNAL)


HANDLERS: dict[type[Exception], Callable[[Request, Exception], Awaitable[Response]]] = {
    ApiError: _api_error,
    BatchlineError: _batchline_error,
    # (Redis's own errors only: an OSError here is as likely a file's as a socket's.)
    **{kind: _redis_unreachable for kind in REDIS_DOWN if kind is not OSError},
    RequestValidationError: _validation_error,
    StarletteHTTPException: _http_error,
    Exception: _unexpected,
}
"""The mapping, by exception type (the most specific class in an exception's MRO wins)."""


async def error_response(request: Request, exc: Exception) -> Response:
    """The answer for ``exc`` (for routes served outside FastAPI's exception handling)."""
    for cls in type(exc).__mro__:
        handler = HANDLERS.get(cls)
        if handler is not None:
            return await handler(request, exc)
    return await _unexpected(request, exc)


def install(app: FastAPI) -> None:
    """Register the mapping above on ``app``."""
    for cls, handler in HANDLERS.items():
        app.add_exception_handler(cls, handler)
