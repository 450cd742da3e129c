"""What the routes call: one :class:`~queueing.client.AsyncClient` per process, plus the rules
the HTTP API adds on top of it (job ownership, schema checks, bounded waits).

Waiting never polls Redis: a long poll or a synchronous call waits on the client's pub/sub
listener (:meth:`~queueing.client.AsyncJob.wait`), and re-reads the job record when woken.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from api.auth import ApiKeys
from api.metrics import Metrics
from api.submission import SchemaChecker, Submission
from queueing.client import AsyncClient, AsyncJob
from queueing.connection import broker_errors
from queueing.errors import BrokerUnavailable, ResultTimeout, UnknownJob
from queueing.jobs import JobRecord, JobStatus
from queueing.keys import is_job_id
from queueing.overview import Overview, overview
from queueing.registry import PipelineSpec
from queueing.settings import Settings

log = logging.getLogger(__name__)

REGISTRY_TTL_S = 2.0
"""How long the gateway trusts its copy of the registry before reading it again (a pipeline
re-published with a new schema is seen within this time)."""
SUBSCRIBE_TIMEOUT_S = 2.0
"""How long a request waits for the result listener to (re)subscribe before answering 503."""


class Gateway:
    """The gateway's state for one process; created in the app's lifespan."""

    def __init__(self, settings: Settings, client: AsyncClient, metrics: Metrics) -> None:
        self.settings = settings
        self.client = client
        self.metrics = metrics
        self.keys = ApiKeys(settings.api_keys)
        self.schemas = SchemaChecker()
        self._registry_read_at = -math.inf

    async def warm_up(self) -> None:
        """Subscribe for results and read the registry; a gateway whose Redis is down still
        starts (and answers 503, and not ready, until Redis is back)."""
        try:
            await self._listening()
            await self.client.pipelines()
            self._registry_read_at = time.monotonic()
        except BrokerUnavailable as exc:
            log.warning("%s; answering 503 until it is reachable", exc)

    # -- pipelines ---------------------------------------------------------------------------

    async def spec(self, name: str) -> PipelineSpec:
        """A pipeline's spec (UnknownPipeline if none is registered under ``name``)."""
        if time.monotonic() - self._registry_read_at > REGISTRY_TTL_S:
            # Marked first, so that the requests arriving meanwhile do not all re-read it.
            self._registry_read_at = time.monotonic()
            try:
                await self.client.pipelines(refresh=True)
            except BrokerUnavailable:
                self._registry_read_at = -math.inf
                raise
        return await self.client.pipeline(name)

    async def overview(self) -> Overview:
        with broker_errors():
            return await overview(self.client.redis, self.settings)

    async def ready(self) -> list[str]:
        """The registered pipelines' names (BrokerUnavailable if Redis does not answer)."""
        await self._listening()
        specs = await self.client.pipelines(refresh=True)
        self._registry_read_at = time.monotonic()
        return sorted(specs)

    # -- jobs --------------------------------------------------------------------------------

    async def submit(
        self,
        pipeline: str,
        submission: Submission,
        *,
        idempotency_key: str | None,
        owner: str | None,
    ) -> list[tuple[AsyncJob, JobStatus]]:
        """Check and enqueue the submission's inputs; each job with its status now."""
        spec = await self.spec(pipeline)
        self.schemas.check(spec, submission)
        await self._listening()
        keys = self._idempotency_keys(idempotency_key, owner, submission)
        jobs = await self.client.submit_many(
            pipeline,
            submission.inputs,
            timeout_s=submission.timeout_s,
            idempotency_keys=keys,
            owner=owner,
        )
        self.metrics.submitted.labels(pipeline).inc(len(jobs))
        if idempotency_key is None:
            return [(job, JobStatus.QUEUED) for job in jobs]
        # A replayed key names jobs that may have moved on: say where they are.
        statuses = await asyncio.gather(*(job.status() for job in jobs))
        return list(zip(jobs, statuses, strict=True))

    async def run(
        self,
        pipeline: str,
        submission: Submission,
        *,
        idempotency_key: str | None,
        owner: str | None,
    ) -> JobRecord:
        """Submit one input and wait for its end (ResultTimeout past the timeout: the job goes
        on, the caller can poll it)."""
        [(job, _)] = await self.submit(
            pipeline, submission, idempotency_key=idempotency_key, owner=owner
        )
        timeout = min(submission.timeout_s or self.settings.max_wait_s, self.settings.max_wait_s)
        with self.metrics.waiting.track_inprogress():
            record = await job.wait(timeout)
        self.metrics.observe_finished(record)
        return record

    async def poll(self, job_id: str, owner: str | None, wait_s: float = 0.0) -> JobRecord:
        """A job's record; with ``wait_s`` (bounded by ``max_wait_s``), once it has finished
        or when that time has passed, whichever comes first."""
        job, record = await self._read(job_id, owner)
        if wait_s > 0 and not record.status.finished:
            await self._listening()
            with self.metrics.waiting.track_inprogress():
                try:
                    record = await job.wait(min(wait_s, self.settings.max_wait_s))
                except ResultTimeout:
                    record = await job.info()
        self.metrics.observe_finished(record)
        return record

    async def cancel(self, job_id: str, owner: str | None) -> JobRecord:
        """Cancel a job (a queued one never reaches a model); its record after."""
        job, record = await self._read(job_id, owner)
        if not record.status.finished:
            await self.client.cancel(job_id)
            record = await job.info()
        return record

    async def _read(self, job_id: str, owner: str | None) -> tuple[AsyncJob, JobRecord]:
        if not is_job_id(job_id):
            raise UnknownJob(job_id)
        job = AsyncJob(self.client, job_id)
        record = await job.info()
        if owner is not None and record.owner != owner:
            raise UnknownJob(job_id)  # no hint that the id exists
        return job, record

    def _idempotency_keys(
        self, key: str | None, owner: str | None, submission: Submission
    ) -> list[str | None]:
        if key is None:
            return [None] * len(submission.inputs)
        # Keys are per caller: two API keys may pick the same one without meeting.
        scoped = f"{owner[:16]}/{key}" if owner else key
        if not submission.many:
            return [scoped]
        return [f"{scoped}#{index}" for index in range(len(submission.inputs))]

    async def _listening(self) -> None:
        """The result listener is subscribed (it reconnects by itself; while Redis is down
        this gives up after a moment instead of hanging the request)."""
        try:
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
                await self.client.listener()
        except TimeoutError:
            raise BrokerUnavailable(
                f"Redis is unreachable: could not subscribe for results within "
                f"{SUBSCRIBE_TIMEOUT_S:g}s"
            ) from None
