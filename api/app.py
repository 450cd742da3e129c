"""The gateway app: ``create_app()`` builds it; ``app`` is the one ``uvicorn api.app:app`` runs.

Nothing connects, and no setting is read, at import: settings come from the environment (or the
factory's argument) and the Redis client is opened in the lifespan, closed on shutdown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import bulk, errors
from api.admin import admin, dashboard
from api.fastpath import FastPath
from api.gateway import GATEWAY_RETRY_S, Gateway
from api.limits import BodyLimit
from api.methods import HeadAsGet
from api.metrics import Metrics, RequestMetrics
from api.routes import ops, v1
from queueing.client import AsyncClient
from queueing.heap import settle_heap
from queueing.settings import Settings

DESCRIPTION = """\
Submit inputs to batchline's pipelines, poll or wait for their results, cancel them.

Errors are JSON, `{"error": code, "message": text, ...}`: 401 (API key), 404 (unknown pipeline
or job), 409 (idempotency key reused with another input), 413 (body too large), 415 (a body
sent without `Content-Type: application/json`), 422 (not JSON, or not what the pipeline's input
schema says, with where), 429 and 503 (with `Retry-After`), 504 (a synchronous call past its
timeout: poll the job it names).
"""


def create_app(settings: Settings | None = None) -> FastPath:
    """A gateway app: the FastAPI app (``.app``) behind the hot routes' fast path.
    ``settings`` default to ``Settings.from_env()``, read at start-up."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        resolved = settings or Settings.from_env()
        # A request rides out a Redis blip of up to a second, then gets its 503 (a client
        # of its own would rather wait longer: BATCHLINE_RETRY_S).
        client = AsyncClient(resolved.replace(retry_s=min(resolved.retry_s, GATEWAY_RETRY_S)))
        gateway = Gateway(resolved, client, metrics)
        try:
            await gateway.warm_up()
            app.state.gateway = gateway
            settle_heap()
            yield
        finally:
            await gateway.batcher.close()
            await client.close()

    app = FastAPI(
        title="batchline",
        description=DESCRIPTION,
        version="0.1.0",
        lifespan=lifespan,
    )
    app.include_router(v1)
    app.include_router(ops)
    app.include_router(bulk.router)
    app.include_router(admin)
    app.include_router(dashboard)
    errors.install(app)

    def body_limit() -> int:
        gateway: Gateway | None = getattr(app.state, "gateway", None)
        return (gateway.settings if gateway else Settings()).max_body_bytes

    # Added last, run first: metrics see every request, including a 413. The hot routes are
    # served before all of FastAPI's layers, with the same limit, metrics and error mapping.
    app.add_middleware(HeadAsGet)
    app.add_middleware(BodyLimit, limit=body_limit, exempt=bulk.own_limit)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return FastPath(app, metrics=metrics, limit=body_limit)


app = create_app()
