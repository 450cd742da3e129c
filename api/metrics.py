"""Prometheus metrics, every name prefixed ``batchline_``.

Two sources:

- what this gateway process sees: HTTP requests and their latency (by route template, so ids
  do not explode the label space), jobs submitted, and for each job it sees finish (a sync
  call, a poll) its end-to-end time and per-stage batch size and queue wait, counted once;
- what the queue holds, read from Redis at scrape time (:func:`queueing.overview.overview`):
  backlog and live workers per stage, and the workers' counters (done, failed, expired,
  redelivered, dead-lettered...). These are the same whichever gateway is scraped.

Each app has its own registry. With several gateway processes (``--workers N``), scrape each
one for its HTTP figures; the queue figures are global.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from queueing.jobs import Snapshot
from queueing.overview import COUNTERS, Overview

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_SEEN = 65_536
"""Finished jobs remembered, so that polling one twice does not count it twice."""


class _QueueCollector(Collector):
    """The queue's state as of the last scrape's overview."""

    def __init__(self) -> None:
        self.view: Overview | None = None
        self.broker_up = False

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("batchline_broker_up", "1 if Redis answered the last scrape.")
        up.add_metric([], 1.0 if self.broker_up else 0.0)
        yield up
        view = self.view
        if view is None or not self.broker_up:
            return
        backlog = GaugeMetricFamily(
            "batchline_stage_backlog", "Entries queued or in flight per stage.", labels=["stage"]
        )
        workers = GaugeMetricFamily(
            "batchline_stage_workers", "Live workers serving each stage.", labels=["stage"]
        )
        events = CounterMetricFamily(
            "batchline_stage_events",
            "What workers did with entries, by stage and event (" + ", ".join(COUNTERS) + ").",
            labels=["stage", "event"],
        )
        named = {
            "failed": CounterMetricFamily(
                "batchline_stage_failures", "Items whose stage failed.", labels=["stage"]
            ),
            "redelivered": CounterMetricFamily(
                "batchline_stage_redeliveries",
                "Entries claimed from a stalled worker and delivered again.",
                labels=["stage"],
            ),
            "dead": CounterMetricFamily(
                "batchline_stage_dead_letters",
                "Entries moved to the dead-letter stream.",
                labels=["stage"],
            ),
        }
        for stage in view.stages.values():
            backlog.add_metric([stage.name], stage.backlog)
            workers.add_metric([stage.name], len(stage.workers))
            for event, value in stage.counters.items():
                events.add_metric([stage.name, event], value)
                if event in named:
                    named[event].add_metric([stage.name], value)
        live = GaugeMetricFamily("batchline_workers", "Live worker processes.")
        live.add_metric([], len(view.workers))
        pipelines = GaugeMetricFamily("batchline_pipelines", "Registered pipelines.")
        pipelines.add_metric([], len(view.pipelines))
        yield from (backlog, workers, events, *named.values(), live, pipelines)


class Metrics:
    """This gateway's metrics registry and instruments."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "batchline_http_requests",
            "HTTP requests by method, route and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "batchline_http_request_duration_seconds",
            "HTTP request latency by method and route (long polls included).",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.submitted = Counter(
            "batchline_jobs_submitted", "Jobs accepted by this gateway.", ["pipeline"], registry=r
        )
        self.finished = Histogram(
            "batchline_job_duration_seconds",
            "Created-to-finished time of the jobs this gateway saw finish, by status.",
            ["pipeline", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "batchline_batch_size",
            "Size of the batch that ran each finished job seen by this gateway, per stage.",
            ["stage"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "batchline_stage_queue_wait_seconds",
            "Time from arrival in a stage's stream to the start of its batch, per stage.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.waiting = Gauge(
            "batchline_http_waiting", "Requests waiting for a result now.", registry=r
        )
        # Instruments by label set, each looked up once (``labels()`` costs a few µs a call).
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._finished_children: dict[tuple[str, str], Any] = {}
        self._stage_children: dict[str, tuple[Any, Any]] = {}
        self.queue = _QueueCollector()
        r.register(self.queue)
        self._seen: OrderedDict[str, None] = OrderedDict()

    def observe_finished(self, job: Snapshot) -> None:
        """Count a finished job once, however many times it is read."""
        if not job.status.finished or job.job_id in self._seen:
            return
        self._seen[job.job_id] = None
        if len(self._seen) > _SEEN:
            self._seen.popitem(last=False)
        if job.finished_at and job.created_at:
            key = (job.pipeline, job.status.value)
            finished = self._finished_children.get(key)
            if finished is None:
                finished = self._finished_children[key] = self.finished.labels(*key)
            finished.observe(max(0.0, float(job.finished_at) - float(job.created_at)))
        for timing in job.timing_list():
            stage = self._stage_children.get(timing.stage)
            if stage is None:
                stage = self._stage_children[timing.stage] = (
                    self.batch_size.labels(timing.stage),
                    self.queue_wait.labels(timing.stage),
                )
            stage[0].observe(timing.batch_size)
            stage[1].observe(timing.queue_wait_s)

    def count_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """One HTTP request answered."""
        key = (method, route, status)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(method, route),
            )
        children[0].inc()
        children[1].observe(seconds)

    def render(self, view: Overview | None) -> bytes:
        """The exposition text, with the queue's state from ``view`` (None: Redis is down)."""
        self.queue.view = view
        self.queue.broker_up = view is not None
        return generate_latest(self.registry)


class RequestMetrics:
    """Pure ASGI middleware counting requests and timing them, by route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.count_request(
                scope["method"], route, status, time.perf_counter() - started
            )
