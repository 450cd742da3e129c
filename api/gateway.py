"""What the routes call: one :class:`~queueing.client.AsyncClient` per process, plus the rules
the HTTP API adds on top of it (job ownership, schema checks, bounded waits).

Submits of concurrent requests share one script call (:mod:`api.batcher`). Waiting never polls
Redis: a long poll or a synchronous call waits on the client's pub/sub listener, whose notice
carries the whole job as it ended (:meth:`~queueing.client.AsyncJob.ended`), so nothing is read
back; the job is re-read only if no notice comes within a bounded time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from api.auth import ApiKeys
from api.batcher import SubmitBatcher
from api.metrics import Metrics
from api.submission import SchemaChecker, Submission
from queueing.chunks import Follower, StreamEvent
from queueing.client import AsyncClient, AsyncJob
from queueing.cluster import layout
from queueing.connection import broker_errors
from queueing.errors import BrokerUnavailable, ResultTimeout, UnknownJob
from queueing.jobs import JobStatus, Snapshot
from queueing.keys import is_job_id
from queueing.overview import Overview, overview
from queueing.registry import PipelineSpec
from queueing.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

REGISTRY_TTL_S = 2.0
"""How long the gateway trusts its copy of the registry before reading it again (a pipeline
re-published with a new schema is seen within this time)."""
GATEWAY_RETRY_S = 1.0
"""Longest the gateway's Redis calls retry while Redis is unreachable, before a 503."""
SUBSCRIBE_TIMEOUT_S = 2.0
"""How long a request waits for the result listener to (re)subscribe before answering 503."""


class Gateway:
    """The gateway's state for one process; created in the app's lifespan."""

    def __init__(self, settings: Settings, client: AsyncClient, metrics: Metrics) -> None:
        self.settings = settings
        self.client = client
        self.metrics = metrics
        self.keys = ApiKeys(settings.api_keys)
        self.admins = ApiKeys(settings.admin_keys).digests
        """Digests that may use the admin routes (empty: every key may)."""
        self.schemas = SchemaChecker()
        self.batcher = SubmitBatcher(client)
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

    def nodes(self) -> dict[str, list[int]]:
        """In a Redis Cluster, each master and the partitions it holds (empty otherwise)."""
        return layout(self.client.redis, self.settings.partitions)

    # -- jobs --------------------------------------------------------------------------------

    async def submit(
        self,
        pipeline: str,
        submission: Submission,
        *,
        idempotency_key: str | None,
        owner: str | None,
        result_ttl_s: float | None = None,
    ) -> list[tuple[str, JobStatus]]:
        """Check and enqueue the submission's inputs; each job's id with its status now."""
        spec = await self.spec(pipeline)
        self.schemas.check(spec, submission)
        await self._listening()
        ids = await self.batcher.submit(
            spec,
            submission.inputs,
            timeout_s=submission.timeout_s,
            idempotency_keys=self._idempotency_keys(idempotency_key, owner, submission),
            owner=owner,
            result_ttl_s=submission.result_ttl_s or result_ttl_s,
            webhook=submission.webhook,
            priority=submission.priority,
        )
        self.metrics.submitted.labels(pipeline).inc(len(ids))
        if idempotency_key is None:
            return [(job_id, JobStatus.QUEUED) for job_id, _ in ids]
        # A replayed key names jobs that may have moved on: say where they are.
        statuses = await asyncio.gather(
            *(AsyncJob(self.client, job_id).status() for job_id, _ in ids)
        )
        return [(job_id, status) for (job_id, _), status in zip(ids, statuses, strict=True)]

    async def run(
        self,
        pipeline: str,
        submission: Submission,
        *,
        idempotency_key: str | None,
        owner: str | None,
    ) -> Snapshot:
        """Submit one input and wait for its end (ResultTimeout past the timeout: the job goes
        on, the caller can poll it)."""
        # Its result goes back in the answer: the record is kept only for a retry.
        [(job_id, _)] = await self.submit(
            pipeline,
            submission,
            idempotency_key=idempotency_key,
            owner=owner,
            result_ttl_s=self.settings.sync_result_ttl_s,
        )
        # A job this request created wakes this gateway; one named by a replayed key is
        # WATCHed first.
        job = AsyncJob(self.client, job_id, watched=idempotency_key is None)
        timeout = min(submission.timeout_s or self.settings.max_wait_s, self.settings.max_wait_s)
        with self.metrics.waiting.track_inprogress():
            ended = await job.ended(timeout)
        self.metrics.observe_finished(ended)
        return ended

    async def poll(self, job_id: str, owner: str | None, wait_s: float = 0.0) -> Snapshot:
        """A job as it is now; with ``wait_s`` (bounded by ``max_wait_s``), once it has ended
        or when that time has passed, whichever comes first."""
        job, snapshot = await self._read(job_id, owner)
        if wait_s > 0 and not snapshot.status.finished:
            await self._listening()
            with self.metrics.waiting.track_inprogress():
                try:
                    snapshot = await job.ended(min(wait_s, self.settings.max_wait_s))
                except ResultTimeout:
                    snapshot = await job.snapshot()
        self.metrics.observe_finished(snapshot)
        return snapshot

    async def cancel(self, job_id: str, owner: str | None) -> Snapshot:
        """Cancel a job (a queued one never reaches a model); the job after."""
        job, snapshot = await self._read(job_id, owner)
        if not snapshot.status.finished:
            await self.client.cancel(job_id)
            snapshot = await job.snapshot()
        return snapshot

    async def stream(
        self,
        pipeline: str,
        submission: Submission,
        *,
        idempotency_key: str | None,
        owner: str | None,
    ) -> tuple[str, JobStatus, AsyncIterator[StreamEvent]]:
        """Submit one input and follow its streamed outputs, its ``end`` last: the job's id,
        its status now and its events. TooManyStreams past BATCHLINE_MAX_STREAMS, before
        anything is submitted."""
        [(job_id, status)], follower = await self._following(
            lambda: self.submit(pipeline, submission, idempotency_key=idempotency_key, owner=owner)
        )
        return job_id, status, self.client.events(job_id, ends=True, follower=follower)

    async def events(
        self, job_id: str, owner: str | None, after: str = "0"
    ) -> AsyncIterator[StreamEvent]:
        """A job's streamed outputs after ``after``, its ``end`` last (see
        :meth:`AsyncClient.events`); now, before any answer starts: TooManyStreams past
        BATCHLINE_MAX_STREAMS, UnknownJob for an unknown job (or another's)."""
        _, follower = await self._following(lambda: self._read(job_id, owner))
        return self.client.events(job_id, after=after, ends=True, follower=follower)

    async def _following(self, ready: Callable[[], Awaitable[T]]) -> tuple[T, Follower]:
        """``await ready()`` holding a place among the client's followers (TooManyStreams
        first, past the bound); the place is given back if it fails."""
        follower = self.client.follower()
        try:
            return await ready(), follower
        except BaseException:
            follower.release()
            raise

    async def _read(self, job_id: str, owner: str | None) -> tuple[AsyncJob, Snapshot]:
        if not is_job_id(job_id):
            raise UnknownJob(job_id)
        job = AsyncJob(self.client, job_id)
        snapshot = await job.snapshot()
        if owner is not None and snapshot.owner != owner:
            raise UnknownJob(job_id)  # no hint that the id exists
        return job, snapshot

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
        if self.client.listening:
            return
        try:
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
                await self.client.listener()
        except TimeoutError:
            raise BrokerUnavailable(
                f"Redis is unreachable: could not subscribe for results within "
                f"{SUBSCRIBE_TIMEOUT_S:g}s"
            ) from None
