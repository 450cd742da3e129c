"""The request body limit, counted on the bytes actually received.

A pure ASGI middleware: ``Content-Length`` is only used to refuse early a body that announces
itself too large; what counts is what arrives, so a chunked body, or one whose header lies,
is stopped as soon as it passes the limit (the handler reading it gets :class:`BodyTooLarge`,
answered 413), and never held in memory beyond it.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import BodyTooLarge, problem


class BodyLimit:
    """Refuse request bodies over ``limit()`` bytes (read per request, so the limit can come
    from settings resolved at start-up)."""

    def __init__(
        self,
        app: ASGIApp,
        limit: Callable[[], int],
        exempt: Callable[[Scope], bool] | None = None,
    ) -> None:
        self.app = app
        self.limit = limit
        self.exempt = exempt
        """Requests whose route limits its body itself (a bulk upload)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.exempt is not None and self.exempt(scope)):
            await self.app(scope, receive, send)
            return
        limit = self.limit()
        if too_large(scope, limit):
            error = BodyTooLarge(limit)
            response = problem(error.status, error.code, error.message, **error.details)
            await response(scope, receive, send)
            return
        await self.app(scope, limited(receive, limit), send)


def limited(receive: Receive, limit: int) -> Receive:
    """``receive``, raising BodyTooLarge once the body passes ``limit`` bytes."""
    received = 0

    async def counted() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit)
        return message

    return counted


def too_large(scope: Scope, limit: int) -> bool:
    """Whether the request announces a body over ``limit`` bytes (Content-Length)."""
    declared = _content_length(scope)
    return declared is not None and declared > limit


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
