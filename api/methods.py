"""HTTP methods: HEAD served wherever GET is, and what a 405's ``Allow`` lists.

FastAPI's routes answer only the methods they declare, so a ``GET`` route alone answers
``HEAD`` with a 405; and a path served by several routes (``GET`` and ``POST``
``/v1/pipelines/{name}``) got the ``Allow`` of the first one only.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    """Pure ASGI middleware answering ``HEAD`` as ``GET`` without its body (the same status
    and headers, ``Content-Length`` included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        # A copy: the server reads the method from its own scope, and must see HEAD to send
        # no body after the GET's Content-Length.
        inner = {**scope, "method": "GET"}
        try:
            await self.app(inner, receive, headers_only)
        finally:
            if "route" in inner:
                scope["route"] = inner["route"]  # (for the request metrics' route label)


_METHODS = ("DELETE", "GET", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route takes on the request's path (HEAD wherever GET is), sorted.

    Each method is tried on the app's routes as the router itself would (``matches``, which
    holds for FastAPI's included routers too): no reliance on how the routes are stored."""
    routes = request.app.router.routes
    allowed = {
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    }
    if "GET" in allowed:
        allowed.add("HEAD")
    return sorted(allowed)
