"""Server-Sent Events: a job's streamed outputs (see :mod:`queueing.chunks`) as
``text/event-stream``.

One SSE event per chunk stream entry, its ``id:`` the entry's id (what a client sends back as
``Last-Event-ID`` to resume after it), its ``event:`` the entry's kind:

- ``job`` (first, on ``POST /v1/pipelines/{name}/stream`` only): ``{"id", "url", "events"}``;
- ``chunk``: ``{"seq", "attempt", "value"}``;
- ``restart``: ``{"attempt"}``: a worker died mid-stream; drop the chunks so far;
- ``end``: ``{"status"}`` (and ``"error"`` unless done): the job has ended, the stream closes;
- ``timeout``: ``{"id"}``: the response stayed open BATCHLINE_MAX_WAIT_S; the job goes on,
  resume with ``GET /v1/jobs/{id}/events`` and ``Last-Event-ID``;
- ``error``: ``{"error"}``: reading the stream failed after the response had started (the
  job's record expired, Redis stayed unreachable past BATCHLINE_RETRY_S...); the stream
  closes without an ``end``.

What can be refused is refused before the response starts, as JSON: the routes check
``Last-Event-ID`` (422) and take a place among the gateway's followers (429 past
BATCHLINE_MAX_STREAMS) before they submit or read anything.

A client that disconnects cancels nothing: the job runs on, and its chunks wait for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from starlette.responses import StreamingResponse

from api.documents import error_responses
from queueing.chunks import StreamEvent
from queueing.errors import BatchlineError
from queueing.message import dumps

MEDIA_TYPE = "text/event-stream"


class EventStream(StreamingResponse):
    """A ``text/event-stream`` response (what the routes declare in the OpenAPI document)."""

    media_type = MEDIA_TYPE


HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
"""(no proxy may buffer or cache the stream)"""


def responses(*errors: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI responses of an event-stream route: 200 ``text/event-stream``, and its
    errors as JSON (before the stream starts; the route's own media type is the stream's)."""
    out: dict[int | str, dict[str, Any]] = {
        200: {
            "description": "Server-Sent Events, one per chunk (see the route's description).",
            "content": {MEDIA_TYPE: {"schema": {"type": "string"}}},
        }
    }
    for status, doc in error_responses(*errors).items():
        schema = doc["model"].model_json_schema()
        out[status] = {
            "description": doc["description"],
            "content": {"application/json": {"schema": schema}},
        }
    return out


def frame(kind: str, data: Any, event_id: str = "") -> bytes:
    """One SSE event."""
    head = b"id: %s\n" % event_id.encode() if event_id else b""
    return head + b"event: %s\ndata: %s\n\n" % (kind.encode(), dumps(data))


def event_frame(event: StreamEvent) -> bytes:
    return frame(event.kind, event.document(), event.id)


async def sse(
    events: AsyncIterator[StreamEvent], job_id: str, limit_s: float, first: bytes = b""
) -> AsyncIterator[bytes]:
    """The frames of a job's events, for at most ``limit_s`` (then a ``timeout`` event)."""
    if first:
        yield first
    deadline = time.monotonic() + limit_s
    try:
        while True:
            remaining = deadline - time.monotonic()
            try:
                # (a timeout cancels the read in flight, not the response being sent)
                event = await asyncio.wait_for(anext(events), max(remaining, 0.001))
            except StopAsyncIteration:
                return
            except TimeoutError:
                yield frame("timeout", {"id": job_id})
                return
            except BatchlineError as exc:  # (the record expired, Redis stayed down...)
                yield frame("error", {"error": str(exc)})
                return
            yield event_frame(event)
    finally:
        if isinstance(events, AsyncGenerator):
            await events.aclose()
