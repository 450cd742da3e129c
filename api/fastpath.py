"""The hot routes served straight from ASGI: ``POST /v1/pipelines/{name}`` (run),
``POST /v1/pipelines/{name}/jobs`` (submit) and ``GET /v1/jobs/{job_id}`` (poll).

Under load these are nearly every request, and FastAPI's routing, dependency resolution and
middleware layers cost them more CPU than the rest of the request together. This wrapper, in
front of the FastAPI app, recognises the two paths and calls their endpoint functions in
:mod:`api.routes` itself (the same functions FastAPI would call: one implementation, which
FastAPI still describes in ``/docs``), with the body limit, the error mapping and the request
metrics the app applies to every other route. Anything else goes on to FastAPI.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api import routes
from api.errors import BodyTooLarge, error_response
from api.limits import limited, too_large
from api.metrics import Metrics

_PREFIX = "/v1/pipelines/"
_JOBS = "/jobs"
_JOB_PREFIX = "/v1/jobs/"
Endpoint = Callable[[str, Request], Awaitable[Response]]


class FastPath:
    """Serves the hot routes (see the module doc); the rest goes to ``app``."""

    def __init__(self, app: FastAPI, metrics: Metrics, limit: Callable[[], int]) -> None:
        self.app = app
        self.metrics = metrics
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = _match(scope)
        if route is None:
            await self.app(scope, receive, send)
            return
        endpoint, template, name = route
        started = time.perf_counter()
        scope["app"] = self.app  # (what Starlette would set: request.app)
        request = Request(scope, limited(receive, limit := self.limit()))
        try:
            if too_large(scope, limit):
                raise BodyTooLarge(limit)
            response = await endpoint(name, request)
        except Exception as exc:
            response = await error_response(request, exc)
        await response(scope, receive, send)
        self.metrics.count_request(
            scope["method"], template, response.status_code, time.perf_counter() - started
        )


def _match(scope: Scope) -> tuple[Endpoint, str, str] | None:
    """(endpoint, route template, pipeline name or job id) of a hot route, else None."""
    if scope["type"] != "http" or scope.get("root_path"):
        return None
    path: str = scope["path"]
    if scope["method"] == "GET":
        if not path.startswith(_JOB_PREFIX):
            return None
        job_id = path[len(_JOB_PREFIX) :]
        if not job_id or "/" in job_id:
            return None
        return routes.get_job, _JOB_PREFIX + "{job_id}", job_id
    if scope["method"] != "POST" or not path.startswith(_PREFIX):
        return None
    rest = path[len(_PREFIX) :]
    if "/" not in rest:
        return routes.run, _PREFIX + "{name}", rest
    name, _, tail = rest.partition("/")
    if "/" + tail == _JOBS:
        return routes.submit, _PREFIX + "{name}" + _JOBS, name
    return None
