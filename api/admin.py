"""The operators' side of the gateway: the live dashboard (``/dashboard``, a static page that
polls ``/v1/admin/overview``) and the dead-letter routes under ``/v1/admin/dead`` (the same
tools as ``batchline dlq``, see :mod:`queueing.deadletter`).

Every ``/v1/admin`` route needs an API key when keys are on, as the rest of ``/v1`` does, and
one of ``BATCHLINE_ADMIN_KEYS`` when that is set (a 403 for another key): dead letters hold every
caller's inputs, and settings are the operators'. Unset, any configured key may. The page itself holds no data and is served to anyone;
it asks for a key when the API answers 401 and keeps it in the tab only (sessionStorage).
"""

from __future__ import annotations

import time
from importlib.resources import files
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.responses import Response

from api.documents import ErrorDocument, JSONResponse, error_responses
from api.errors import ApiError, Forbidden, InvalidInput
from api.gateway import Gateway
from api.routes import GatewayDep, Owner
from queueing.cluster import AsyncRedis
from queueing.connection import broker_errors
from queueing.deadletter import DeadLetter, DeadLetters, Requeue, Requeued, full_stage_name
from queueing.keys import Keys
from queueing.lanes import MAX_WEIGHT
from queueing.live_config import BadSetting, reset_settings, set_settings, stage_spec
from queueing.overview import overview
from queueing.registry import StageSpec
from queueing.stagestats import in_flight, read_recent

WINDOW_S = 300.0
"""What the dashboard's rates and percentiles cover."""
BUCKET_S = 5.0
"""One point of the items/s sparkline."""
LATEST_DEAD = 5
"""Dead letters per stage the overview lists (the newest)."""

_STATIC = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


class NoDeadLetter(ApiError):
    status = 404
    code = "unknown_dead_letter"


class NotRequeued(ApiError):
    """The dead letter's job cannot be requeued (see :class:`~queueing.deadletter.Requeue`)."""

    status = 409
    code = "not_requeued"


async def _admin(gateway: GatewayDep, owner: Owner) -> str | None:
    """The caller, if it may use the admin routes (see the module's docstring)."""
    if gateway.admins and owner not in gateway.admins:
        raise Forbidden("this API key may not use the admin routes (see BATCHLINE_ADMIN_KEYS)")
    return owner


Admin = Annotated[str | None, Depends(_admin)]

admin = APIRouter(prefix="/v1/admin", tags=["admin"])
dashboard = APIRouter(include_in_schema=False)

_409: dict[int | str, dict[str, Any]] = {
    409: {
        "model": ErrorDocument,
        "description": "The job cannot be requeued (the message "
        "says why: it ended otherwise, its record expired, or it is a fan-out branch).",
    }
}


@dashboard.get("/dashboard")
async def dashboard_page() -> Response:
    return _static("index.html", "text/html; charset=utf-8")


@dashboard.get("/dashboard/{name}")
async def dashboard_file(name: str) -> Response:
    media_type = _STATIC.get(name)
    if media_type is None:
        raise HTTPException(404, f"no dashboard file {name[:80]!r}")
    return _static(name, media_type)


def _static(name: str, media_type: str) -> Response:
    content = (files("api") / "static" / name).read_bytes()
    return Response(content, media_type=media_type, headers={"Cache-Control": "no-cache"})


@admin.get(
    "/overview",
    response_model=None,
    summary="Everything the dashboard shows",
    responses=error_responses(401, 403, 503),
)
async def get_overview(gateway: GatewayDep, owner: Admin) -> Response:
    """Per pipeline and stage: backlog, in flight, counters, items/s over the last five minutes
    (5 s buckets), batch sizes, p50/p99 of queue wait and compute, live workers, dead letters
    (count and the newest five); and every live worker with its device and last heartbeat."""
    return JSONResponse(await _overview(gateway))


@admin.get(
    "/dead/{pipeline}/{stage}",
    response_model=None,
    summary="A stage's dead letters, newest first",
    responses=error_responses(401, 403, 422, 503),
)
async def list_dead(
    pipeline: str,
    stage: str,
    gateway: GatewayDep,
    owner: Admin,
    limit: Annotated[int, Query(ge=1, le=1000, description="The newest N")] = 100,
) -> Response:
    letters = _letters(gateway)
    name = _stage(pipeline, stage)
    with broker_errors():
        found = await letters.newest(name, limit)
        total = (await letters.counts([name]))[name]
    return JSONResponse(
        {"stage": name, "count": total, "dead_letters": [letter.to_dict() for letter in found]}
    )


@admin.get(
    "/dead/{pipeline}/{stage}/jobs/{job_id}",
    response_model=None,
    summary="One job's dead letter, with its payload",
    responses=error_responses(401, 403, 404, 422, 503),
)
async def show_dead(
    pipeline: str, stage: str, job_id: str, gateway: GatewayDep, owner: Admin
) -> Response:
    letter = await _find(gateway, _stage(pipeline, stage), job_id)
    return JSONResponse(letter.to_dict(with_data=True))


@admin.post(
    "/dead/{pipeline}/{stage}/jobs/{job_id}/requeue",
    response_model=None,
    summary="Requeue one job at the stage it died in",
    responses={**error_responses(401, 403, 404, 422, 503), **_409},
)
async def requeue_one(
    pipeline: str, stage: str, job_id: str, gateway: GatewayDep, owner: Admin
) -> Response:
    """The job goes back to queued at this stage, its attempts here reset; it then runs and
    ends once, as any job (its waiters are woken by that end)."""
    letter = await _find(gateway, _stage(pipeline, stage), job_id)
    with broker_errors():
        answer = await _letters(gateway).requeue(letter)
    if answer.outcome is not Requeue.REQUEUED:
        raise NotRequeued(answer.message, outcome=answer.outcome.value)
    return JSONResponse(answer.to_dict())


@admin.post(
    "/dead/{pipeline}/{stage}/requeue",
    response_model=None,
    summary="Requeue every dead letter of a stage",
    responses=error_responses(401, 403, 422, 503),
)
async def requeue_all(pipeline: str, stage: str, gateway: GatewayDep, owner: Admin) -> Response:
    """One answer per dead letter: `requeued`, or why not."""
    with broker_errors():
        answers = await _letters(gateway).requeue_all(_stage(pipeline, stage))
    return JSONResponse(_summary(answers))


@admin.delete(
    "/dead/{pipeline}/{stage}",
    response_model=None,
    summary="Purge a stage's dead letters",
    responses=error_responses(401, 403, 422, 503),
)
async def purge(pipeline: str, stage: str, gateway: GatewayDep, owner: Admin) -> Response:
    """Deletes them; their jobs stay failed."""
    name = _stage(pipeline, stage)
    with broker_errors():
        purged = await _letters(gateway).purge(name)
    return JSONResponse({"stage": name, "purged": purged})


class StageSettingsBody(BaseModel):
    """The batch settings to change (at least one); those not named keep their values."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int | None = Field(
        None,
        ge=1,
        description="The most items per batch (the most cost, for a stage with a batch_size_fn).",
        examples=[64],
    )
    batch_wait_timeout_s: float | Literal["auto"] | None = Field(
        None,
        description='Seconds a partial batch waits for more (>= 0), or "auto" (adaptive).',
        examples=[0.002, "auto"],
    )
    max_latency_ms: float | None = Field(
        None,
        gt=0,
        description="The adaptive wait's latency budget (null drops it).",
        examples=[20],
    )
    lane_weights: list[Annotated[int, Field(ge=1, le=MAX_WEIGHT)]] | None = Field(
        None,
        min_length=3,
        max_length=3,
        description="The priority lanes' weights (high, normal, low): each lane with jobs "
        "waiting gets at least its weighted share of every batch.",
        examples=[[8, 4, 1]],
    )


@admin.get(
    "/config/{pipeline}/{stage}",
    response_model=None,
    summary="A stage's batch settings in force",
    responses=error_responses(401, 403, 404, 422, 503),
)
async def get_stage_settings(
    pipeline: str, stage: str, gateway: GatewayDep, owner: Admin
) -> Response:
    """The values in force and since when (`settings_since`: null while the values declared
    in code are in force)."""
    name = _stage(pipeline, stage)
    with broker_errors():
        spec = await stage_spec(_redis(gateway), gateway.settings, name)
    return JSONResponse(_settings_document(spec))


@admin.put(
    "/config/{pipeline}/{stage}",
    response_model=None,
    summary="Change a stage's batch settings live",
    responses=error_responses(401, 403, 404, 422, 503),
)
async def put_stage_settings(
    pipeline: str, stage: str, body: StageSettingsBody, gateway: GatewayDep, owner: Admin
) -> Response:
    """Sets `max_batch_size`, `batch_wait_timeout_s`, `max_latency_ms` and/or `lane_weights`
    for the stage: its running workers batch with them within a second (no restart), and the
    pipeline's page shows them with `settings_since`. They last until changed or reset
    (DELETE), across worker restarts. The same as `batchline config set PIPELINE.STAGE
    NAME=VALUE...`."""
    name = _stage(pipeline, stage)
    values = body.model_dump(exclude_unset=True)
    try:
        with broker_errors():
            spec = await set_settings(_redis(gateway), gateway.settings, name, values)
    except BadSetting as exc:
        raise InvalidInput(str(exc), [{"where": "body", "message": str(exc)}]) from None
    return JSONResponse(_settings_document(spec))


@admin.delete(
    "/config/{pipeline}/{stage}",
    response_model=None,
    summary="Drop a stage's live batch settings",
    responses=error_responses(401, 403, 404, 422, 503),
)
async def reset_stage_settings(
    pipeline: str, stage: str, gateway: GatewayDep, owner: Admin
) -> Response:
    """The values declared in code are in force again (workers apply them within a second)."""
    name = _stage(pipeline, stage)
    with broker_errors():
        await stage_spec(_redis(gateway), gateway.settings, name)
        await reset_settings(_redis(gateway), gateway.settings, name)
        spec = await stage_spec(_redis(gateway), gateway.settings, name)
    return JSONResponse(_settings_document(spec))


def _settings_document(spec: StageSpec) -> dict[str, Any]:
    return {
        "stage": spec.name,
        "max_batch_size": spec.max_batch_size,
        "batch_wait_timeout_s": spec.batch_wait_timeout_s,
        "max_latency_ms": spec.max_latency_ms,
        "batch_size_fn": spec.batch_size_fn,
        "lane_weights": list(spec.lane_weights),
        "settings_since": spec.settings_since,
    }


def _letters(gateway: Gateway) -> DeadLetters:
    return DeadLetters(_redis(gateway), gateway.settings)


def _redis(gateway: Gateway) -> AsyncRedis:
    return gateway.client.redis


def _stage(pipeline: str, stage: str) -> str:
    try:
        return full_stage_name(f"{pipeline}.{stage}")
    except ValueError as exc:
        raise InvalidInput(str(exc), [{"where": "path", "message": str(exc)}]) from None


async def _find(gateway: Gateway, stage: str, job_id: str) -> DeadLetter:
    with broker_errors():
        letter = await _letters(gateway).find(job_id)
    if letter is None or letter.stage != stage:
        raise NoDeadLetter(f"job {job_id[:80]} has no dead letter at {stage}")
    return letter


def _summary(answers: list[Requeued]) -> dict[str, Any]:
    return {
        "requeued": sum(answer.outcome is Requeue.REQUEUED for answer in answers),
        "results": [answer.to_dict() for answer in answers],
    }


async def _overview(gateway: Gateway) -> dict[str, Any]:
    settings = gateway.settings
    client = _redis(gateway)
    keys = Keys(settings.prefix)
    with broker_errors():
        view = await overview(client, settings)
        names = list(view.stages)
        activity = await read_recent(client, keys, names, window_s=WINDOW_S, bucket_s=BUCKET_S)
        busy = await in_flight(client, keys, names, settings.partitions)
        letters = DeadLetters(client, settings)
        dead_counts = await letters.counts(names)
        latest = await letters.latest(names, LATEST_DEAD)
    pipelines = []
    for name, spec in sorted(view.pipelines.items()):
        stages = []
        for stage in spec.stages:
            stats = view.stages[stage.name]
            stages.append(
                {
                    "name": stage.name,
                    "max_batch_size": stage.max_batch_size,
                    "backlog": stats.backlog,
                    "in_flight": busy[stage.name],
                    "counters": stats.counters,
                    "workers": stats.workers,
                    **activity[stage.name].to_dict(),
                    "dead": {
                        "count": dead_counts[stage.name],
                        "latest": [letter.to_dict() for letter in latest[stage.name]],
                    },
                }
            )
        pipelines.append({"name": name, "stages": stages})
    return {
        "now": time.time(),
        "window_s": WINDOW_S,
        "bucket_s": BUCKET_S,
        "pipelines": pipelines,
        "workers": [{"name": name, **doc} for name, doc in sorted(view.workers.items())],
    }
