"""The documents the gateway answers, and their models for the OpenAPI page.

Responses are built from dicts and rendered by orjson; the pydantic models below only describe
them (and the bodies that :mod:`api.submission` parses by hand) for ``/docs``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import orjson
from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse as _StarletteJSONResponse
from starlette.responses import Response

from queueing.client.core import MAX_SUBMIT_MANY
from queueing.jobs import JobStatus, Snapshot
from queueing.overview import Overview
from queueing.registry import PipelineSpec


class JSONResponse(_StarletteJSONResponse):
    """JSON rendered by orjson (the codec the queue uses too), newline-terminated for curl."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE)


def job_path(request: Request, job_id: str) -> str:
    """Where a job is polled (relative to the host, so it holds behind any proxy)."""
    root: str = request.scope.get("root_path", "")
    return f"{root}/v1/jobs/{job_id}"


def accepted(request: Request, job_id: str, status: JobStatus | str) -> dict[str, Any]:
    return {"id": job_id, "url": job_path(request, job_id), "status": str(status)}


def job_document(request: Request, job: Snapshot) -> Response:
    """A job as polled, cancelled or run synchronously: one shape for all three (its result
    spliced in as stored, never parsed and re-encoded here)."""
    return Response(job.document(job_path(request, job.job_id)), media_type="application/json")


def pipeline_document(spec: PipelineSpec, view: Overview) -> dict[str, Any]:
    """A pipeline's page: its stages with their batch settings, backlog (in all, and per
    priority lane) and live workers."""
    stages = []
    for stage in spec.stages:
        stats = view.stages.get(stage.name)
        stages.append(
            {
                **stage.to_dict(),
                "backlog": stats.backlog if stats else 0,
                "lanes": stats.lanes if stats else {},
                "workers": stats.workers if stats else [],
                "counters": stats.counters if stats else {},
            }
        )
    entry = view.stages.get(spec.entry.name)
    return {
        "name": spec.name,
        "description": spec.description,
        "stages": stages,
        "input_schema": spec.input_schema,
        "example": spec.example,
        "max_backlog": spec.max_backlog,
        "backlog": entry.backlog if entry else 0,
        "lanes": entry.lanes if entry else {},
        "workers": sorted({w for stage in stages for w in stage["workers"]}),
        **({"nodes": view.nodes} if view.nodes else {}),
    }


# -- models for the OpenAPI page ---------------------------------------------------------------


def _one_of(*fields: str) -> Callable[[dict[str, Any]], None]:
    """A body schema's edit: exactly one of ``fields`` is required (rather than all)."""

    def edit(schema: dict[str, Any]) -> None:
        schema["required"] = [name for name in schema["required"] if name not in fields]
        if not schema["required"]:
            del schema["required"]
        schema["oneOf"] = [{"required": [name]} for name in fields]

    return edit


_TIMEOUT_S = (
    "Seconds from now after which a worker no longer starts the job (it expires). For the "
    "synchronous call, also how long to wait (at most the gateway's BATCHLINE_MAX_WAIT_S)."
)


MAX_RESULT_TTL_S = 7 * 24 * 3600
"""The longest ``result_ttl_s`` a submission may ask for (a week)."""

_RESULT_TTL_S = (
    "Seconds each job (its status and result) is kept once it has ended, for polling; "
    "default BATCHLINE_RESULT_TTL_S (3600) for submitted jobs and BATCHLINE_SYNC_RESULT_TTL_S "
    "(60) for the synchronous call, whose answer carries the result. Shorter keeps Redis "
    "smaller."
)


_WEBHOOK = (
    "An http(s) URL each job's document is POSTed to when it ends (done, failed, expired or "
    "cancelled), signed with a `Batchline-Signature` header (HMAC-SHA256 of `<t>.<body>`); "
    "retried on 5xx and timeouts. The document's `webhook` says how its deliveries went."
)


_PRIORITY = (
    "The jobs' priority lane: `high`, `normal` (the default) or `low`. Workers read higher "
    "lanes first, each lane with jobs waiting keeping at least its weighted share of every "
    "batch (the stage's `lane_weights`, 8/4/1 by default); the backlog limit (429) applies "
    "per lane."
)


class SubmitBody(BaseModel):
    """One input (`input`) or several (`inputs`), with an optional deadline: exactly one of
    the two, and no other field."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_one_of("input", "inputs"))

    input: Any = Field(description="The pipeline's input (checked against its schema).")
    inputs: list[Any] = Field(
        min_length=1,
        max_length=MAX_SUBMIT_MANY,
        description="Several inputs, each its own job (instead of `input`).",
    )
    timeout_s: float | None = Field(None, gt=0, description=_TIMEOUT_S)
    webhook: str | None = Field(None, pattern="^https?://", max_length=2048, description=_WEBHOOK)
    result_ttl_s: int | None = Field(None, ge=1, le=MAX_RESULT_TTL_S, description=_RESULT_TTL_S)
    priority: Literal["high", "normal", "low"] | None = Field(None, description=_PRIORITY)


class RunBody(BaseModel):
    """One input, with an optional deadline (which also bounds the wait), and no other field."""

    model_config = ConfigDict(extra="forbid")

    input: Any = Field(..., description="The pipeline's input (checked against its schema).")
    timeout_s: float | None = Field(None, gt=0, description=_TIMEOUT_S)
    webhook: str | None = Field(None, pattern="^https?://", max_length=2048, description=_WEBHOOK)
    result_ttl_s: int | None = Field(None, ge=1, le=MAX_RESULT_TTL_S, description=_RESULT_TTL_S)
    priority: Literal["high", "normal", "low"] | None = Field(None, description=_PRIORITY)


class Accepted(BaseModel):
    id: str
    url: str = Field(description="Where to poll the job: GET it, with ?wait=S to long-poll.")
    status: str


class Timing(BaseModel):
    stage: str
    queue_wait_s: float
    batch_size: int
    compute_s: float
    started_at: float


class JobDocument(BaseModel):
    """A job: ``result`` when done, ``error`` when failed, expired or cancelled."""

    id: str
    url: str
    status: str = Field(
        description="queued, running, done, failed, expired or cancelled. A job shows running "
        "once its batch has run 0.2 s, and between its pipeline's stages; a quicker one goes "
        "from queued to its end"
    )
    pipeline: str
    priority: Literal["high", "normal", "low"] = Field(
        description="The priority lane it waits in at every stage (given on submit)"
    )
    created_at: float
    started_at: float | None
    finished_at: float | None
    timings: list[Timing]
    result: Any = None
    error: str | None = None


class ErrorDocument(BaseModel):
    error: str = Field(description="A stable code: invalid_input, unknown_job, queue_full...")
    message: str


def request_body(model: type[BaseModel], description: str) -> dict[str, Any]:
    """``openapi_extra`` describing a body that the endpoint reads itself."""
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        401: "No API key, or an unknown one.",
        403: "This API key may not use the admin routes (BATCHLINE_ADMIN_KEYS).",
        404: "Unknown pipeline or job (another key's job is unknown too).",
        409: "The Idempotency-Key names a job with a different input.",
        413: "The body is over BATCHLINE_MAX_BODY_BYTES.",
        415: "The body was not sent as JSON (Content-Type: application/json).",
        422: "The body is not JSON, not of this shape, or fails the pipeline's input schema.",
        429: "The pipeline's backlog is full; see Retry-After.",
        503: "Redis is unreachable; see Retry-After.",
        504: "No result within the timeout; the body has the job's id and url, poll it.",
    }
    return {s: {"model": ErrorDocument, "description": descriptions[s]} for s in statuses}
