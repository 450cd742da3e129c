"""The gateway's HTTP protocol: uvicorn's httptools protocol with bounds on what a request may
send before the app sees any of it, and on how long its body may take.

uvicorn bounds neither with httptools: one connection could hold hundreds of MB of headers,
and a ``Content-Length`` larger than the body sent held its request open for ever. Here:

- the request line and headers together at most :data:`MAX_HEADER_BYTES`, at most
  :data:`MAX_HEADERS` headers: else 431 and the connection is closed;
- the body in full within :data:`BODY_TIMEOUT_S` of the headers: else 408 and the connection is
  closed (the app sees a disconnect).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 100
BODY_TIMEOUT_S = 30.0


class _Refused(Exception):
    """Raised from a parser callback: the request is over a bound (httptools reports it as a
    parse error, which :meth:`BoundedHttpToolsProtocol.send_400_response` answers)."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """See the module doc."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_bytes = 0
        self._refusal: tuple[int, str] | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._awaiting_body = False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value))
        if len(self.headers) >= MAX_HEADERS:
            self._refuse(431, f"more than {MAX_HEADERS} header fields")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._awaiting_body = True

    def on_message_complete(self) -> None:
        self._awaiting_body = False
        self._cancel_body_timer()
        super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Armed only for a body still incomplete after what arrived (most requests come whole
        # in one read, and pay nothing for the bound).
        if self._awaiting_body and self._body_timer is None and not self.transport.is_closing():
            self._body_timer = self.loop.call_later(BODY_TIMEOUT_S, self._body_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_body_timer()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        if self._refusal is None:
            super().send_400_response(msg)
            return
        status, reason = self._refusal
        self._send_and_close(status, reason)

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_HEADER_BYTES:
            self._refuse(431, f"request line and headers over {MAX_HEADER_BYTES} bytes")

    def _refuse(self, status: int, reason: str) -> None:
        self._refusal = (status, reason)
        raise _Refused(reason)

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.cycle is not None and not self.cycle.response_started:
            self._send_and_close(408, f"the request body did not arrive within {BODY_TIMEOUT_S:g}s")
        else:
            self.transport.close()

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _send_and_close(self, status: int, reason: str) -> None:
        phrase = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        body = b'{"error":"%s","message":"%s"}\n' % (
            b"request_timeout" if status == 408 else b"headers_too_large",
            reason.encode(),
        )
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, phrase, len(body), body)
        )
        self.transport.close()
