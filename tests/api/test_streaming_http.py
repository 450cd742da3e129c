"""Streamed outputs over HTTP (Server-Sent Events), through a real gateway and real workers:
ids per chunk, resumption with Last-Event-ID, a disconnect that cancels nothing, cancel
mid-stream, a pipeline that does not stream; open streams that never starve the gateway's
other traffic, their bound (429), and a Last-Event-ID that is no event id (422)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis

from api.auth import digest
from queueing.connection import ASYNC_POOL_SIZE
from queueing.keys import Keys
from queueing.settings import Settings
from tests.api.conftest import LiveGateway
from tests.conftest import start_worker


@dataclass
class Event:
    kind: str
    data: Any
    id: str = ""


def parse(lines: Iterator[str]) -> Iterator[Event]:
    """SSE events, as a client reads them."""
    fields: dict[str, str] = {}
    for line in lines:
        if not line:
            if fields:
                yield Event(fields["event"], json.loads(fields["data"]), fields.get("id", ""))
            fields = {}
            continue
        name, _, value = line.partition(": ")
        fields[name] = value


@pytest.fixture
def stream_settings(api_settings: Settings) -> Settings:
    return api_settings.replace(
        pipelines=(*api_settings.pipelines, "tests.workers.streaming_pipelines")
    )


@pytest.fixture
def http(
    stream_settings: Settings,
    register: Callable[[Settings], None],
    start_gateway: Callable[[Settings], LiveGateway],
) -> Iterator[httpx.Client]:
    register(stream_settings)
    with start_gateway(stream_settings).client() as client:
        yield client


@pytest.fixture
def worker(stream_settings: Settings) -> Iterator[Callable[[str], None]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(stage: str) -> None:
        started.append(start_worker(stream_settings, stage, BATCHLINE_DEVICE="cpu"))

    yield start
    for process in started:
        process.terminate()
    for process in started:
        process.wait(10)


def chunks(n: int, x: int, start: int = 0) -> list[dict[str, int]]:
    return [{"x": x, "i": i} for i in range(start, n)]


def stream(http: httpx.Client, pipeline: str, item: Any) -> tuple[httpx.Headers, list[Event]]:
    with http.stream("POST", f"/v1/pipelines/{pipeline}/stream", json={"input": item}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        return r.headers, list(parse(r.iter_lines()))


def follow(http: httpx.Client, job_id: str, last: str | None = None) -> list[Event]:
    headers = {"Last-Event-ID": last} if last else {}
    with http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as r:
        assert r.status_code == 200, r.read()
        return list(parse(r.iter_lines()))


def test_post_stream_answers_one_event_per_chunk_with_ids_then_the_end(
    http: httpx.Client, worker: Callable[[str], None]
) -> None:
    worker("t_gen.model")
    headers, events = stream(http, "t_gen", {"x": 3, "n": 4, "sleep": 0.01})
    job, *rest = events
    assert job.kind == "job"
    assert headers["location"] == job.data["url"] == f"/v1/jobs/{job.data['id']}"
    assert job.data["events"] == job.data["url"] + "/events"
    assert [e.kind for e in rest] == ["chunk"] * 4 + ["end"]
    assert [e.data["value"] for e in rest[:4]] == chunks(4, 3)
    assert [e.data["seq"] for e in rest[:4]] == [0, 1, 2, 3]
    assert rest[-1].data == {"status": "done"}
    ids = [e.id for e in rest]
    assert all(ids)
    assert len(set(ids)) == len(ids)

    # GET .../events replays the stream; Last-Event-ID resumes after that event.
    assert [(e.kind, e.id) for e in follow(http, job.data["id"])] == [(e.kind, e.id) for e in rest]
    resumed = follow(http, job.data["id"], last=rest[1].id)
    assert [e.data.get("value") for e in resumed] == [*chunks(4, 3, 2), None]
    assert resumed[-1].kind == "end"
    assert http.get(job.data["url"]).json()["result"] == chunks(4, 3)


def test_a_client_that_disconnects_cancels_nothing_and_resumes_where_it_left_off(
    http: httpx.Client, worker: Callable[[str], None]
) -> None:
    worker("t_gen.model")
    read: list[Event] = []
    body = {"input": {"x": 1, "n": 15, "sleep": 0.05}}
    with http.stream("POST", "/v1/pipelines/t_gen/stream", json=body) as response:
        for event in parse(response.iter_lines()):
            read.append(event)
            if len(read) == 4:  # the job event and three chunks
                break
    job_id = read[0].data["id"]
    rest = follow(http, job_id, last=read[-1].id)
    values = [e.data["value"] for e in read[1:] + rest[:-1]]
    assert values == chunks(15, 1)
    assert rest[-1].data == {"status": "done"}


def test_delete_mid_stream_ends_the_stream_as_cancelled(
    http: httpx.Client, worker: Callable[[str], None]
) -> None:
    worker("t_cont.model")
    events: list[Event] = []
    body = {"input": {"x": 1, "n": 500, "sleep": 0.02}}
    with http.stream("POST", "/v1/pipelines/t_cont/stream", json=body) as response:
        for event in parse(response.iter_lines()):
            events.append(event)
            if len(events) == 3:
                deleted = http.delete(events[0].data["url"])
                assert deleted.json()["status"] == "cancelled"
    assert events[-1].kind == "end"
    assert events[-1].data["status"] == "cancelled"
    assert len(events) < 100


def test_a_pipeline_that_does_not_stream_sends_its_result_as_one_chunk(
    http: httpx.Client, worker: Callable[[str], None]
) -> None:
    worker("echo")
    _, events = stream(http, "echo", {"hello": "world"})
    assert [e.kind for e in events] == ["job", "chunk", "end"]
    assert events[1].data["value"] == {"hello": "world"}


def test_events_of_an_unknown_job_or_a_bad_last_event_id_are_refused(http: httpx.Client) -> None:
    assert http.get("/v1/jobs/0-" + "0" * 32 + "/events").status_code == 404
    bad = http.get("/v1/jobs/0-" + "0" * 32 + "/events", headers={"Last-Event-ID": "x"})
    assert bad.status_code == 422
    assert http.post("/v1/pipelines/nope/stream", json={"input": 1}).status_code == 404


def test_a_last_event_id_redis_would_refuse_is_422_before_the_stream_starts(
    http: httpx.Client,
) -> None:
    """Parts over 2**64-1 fit the header's pattern (20 digits) but are no stream id."""
    job = http.post("/v1/pipelines/t_gen/jobs", json={"input": {"x": 1, "n": 1}}).json()
    for last in ("99999999999999999999-0", "0-18446744073709551616", "18446744073709551616"):
        answer = http.get(job["url"] + "/events", headers={"Last-Event-ID": last})
        assert answer.status_code == 422, answer.text
        body = answer.json()
        assert body["error"] == "invalid_input"
        assert "Last-Event-ID" in body["message"]
        assert body["errors"][0]["where"] == "header.last-event-id"
    http.delete(job["url"])  # (ended: a valid cursor's reader stops at once)
    for last in ("18446744073709551615-18446744073709551615", "18446744073709551615"):
        assert [e.kind for e in follow(http, job["id"], last=last)] == ["end"]


def wait_for_blocked_reads(r: redis.Redis, count: int) -> None:
    """Until Redis has ``count`` connections whose last command was XREAD (the followers'
    reads, each blocking up to a second at a time)."""
    limit = time.monotonic() + 60
    while sum(1 for c in r.client_list() if c.get("cmd") == "xread") < count:
        assert time.monotonic() < limit, "the followers did not start reading"
        time.sleep(0.05)


def test_open_streams_never_starve_submits_polls_or_health_checks(
    stream_settings: Settings,
    register: Callable[[Settings], None],
    start_gateway: Callable[[Settings], LiveGateway],
    redis_client: redis.Redis,
) -> None:
    """More open streams than the main pool has connections: the gateway still serves."""
    followers = ASYNC_POOL_SIZE + 8
    settings = stream_settings.replace(max_streams=followers + 2)
    register(settings)
    gateway = start_gateway(settings)
    limits = httpx.Limits(max_connections=followers + 8)
    with (
        httpx.Client(base_url=gateway.url, timeout=60, limits=limits) as http,
        contextlib.ExitStack() as streams,
    ):
        job = http.post("/v1/pipelines/t_gen/jobs", json={"input": {"x": 1, "n": 1}}).json()
        for _ in range(followers):  # (no worker: each stays open, waiting for a chunk)
            response = streams.enter_context(http.stream("GET", job["url"] + "/events"))
            assert response.status_code == 200
        wait_for_blocked_reads(redis_client, followers)
        submitted = http.post("/v1/pipelines/t_gen/jobs", json={"input": {"x": 2, "n": 1}})
        assert submitted.status_code == 202, submitted.text
        polled = http.get(submitted.json()["url"])
        assert polled.status_code == 200, polled.text
        assert polled.json()["status"] == "queued"
        assert http.get("/readyz").status_code == 200
        # One more stream is still taken (the bound is above what is open).
        with http.stream(
            "POST", "/v1/pipelines/t_gen/stream", json={"input": {"x": 3, "n": 1}}
        ) as more:
            assert more.status_code == 200


def test_past_max_streams_a_stream_is_429_and_nothing_is_submitted(
    stream_settings: Settings,
    register: Callable[[Settings], None],
    start_gateway: Callable[[Settings], LiveGateway],
    redis_client: redis.Redis,
) -> None:
    settings = stream_settings.replace(max_streams=2)
    register(settings)
    gateway = start_gateway(settings)
    stream_key = Keys(settings.prefix).stream(0, "t_gen.model", "normal")
    with gateway.client() as http, contextlib.ExitStack() as streams:
        job = http.post("/v1/pipelines/t_gen/jobs", json={"input": {"x": 1, "n": 1}}).json()
        for _ in range(2):
            response = streams.enter_context(http.stream("GET", job["url"] + "/events"))
            assert response.status_code == 200
        queued = redis_client.xlen(stream_key)
        refused = http.post("/v1/pipelines/t_gen/stream", json={"input": {"x": 2, "n": 1}})
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"] == "too_many_streams"
        assert int(refused.headers["retry-after"]) >= 1
        assert redis_client.xlen(stream_key) == queued  # nothing was submitted
        again = http.get(job["url"] + "/events")
        assert again.status_code == 429
        assert again.headers["content-type"].startswith("application/json")


def test_a_stream_stays_open_at_most_max_wait_s_then_says_timeout(
    stream_settings: Settings,
    register: Callable[[Settings], None],
    start_gateway: Callable[[Settings], LiveGateway],
) -> None:
    """No worker runs the job: the response ends with a timeout event; the job goes on."""
    settings = stream_settings.replace(max_wait_s=1.0)
    register(settings)
    with start_gateway(settings).client() as http:
        _, events = stream(http, "t_gen", {"x": 1, "n": 2})
        assert [e.kind for e in events] == ["job", "timeout"]
        assert events[1].data == {"id": events[0].data["id"]}
        assert http.get(events[0].data["url"]).json()["status"] == "queued"


def test_with_api_keys_a_jobs_events_are_its_owners_alone(
    stream_settings: Settings,
    register: Callable[[Settings], None],
    start_gateway: Callable[[Settings], LiveGateway],
) -> None:
    settings = stream_settings.replace(api_keys=(digest("alice-key"), digest("bob-key")))
    register(settings)
    gateway = start_gateway(settings)
    with gateway.client(**{"X-API-Key": "alice-key"}) as alice:
        response = alice.post("/v1/pipelines/t_gen/jobs", json={"input": {"x": 1, "n": 1}})
        url = response.json()["url"] + "/events"
        with alice.stream("GET", url) as own:  # (no worker: left before its end)
            assert own.status_code == 200
    with gateway.client(**{"X-API-Key": "bob-key"}) as bob:
        assert bob.get(url).status_code == 404
    with gateway.client() as anonymous:
        assert anonymous.get(url).status_code == 401
