"""What a request may send before the app sees it (issue 10.12): header bytes and count are
bounded (431, connection closed), and a body that does not arrive in time is a 408 rather
than a request held open for ever. Raw sockets: an HTTP client would not send such requests."""

from __future__ import annotations

import contextlib
import socket
import time
from urllib.parse import urlsplit

import pytest

import api.protocol
from tests.api.conftest import LiveGateway


def exchange(gateway: LiveGateway, request: bytes, timeout: float = 10) -> bytes:
    """Send ``request`` on a fresh connection; everything answered until the server closes."""
    address = urlsplit(gateway.url)
    with socket.create_connection((address.hostname, address.port), timeout=timeout) as conn:
        # (it may close before all of an oversized request is sent)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.sendall(request)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := conn.recv(65536):
                answer += chunk
    return answer


def test_too_many_header_fields_is_431(gateway: LiveGateway) -> None:
    fields = b"".join(b"x-%d: 1\r\n" % i for i in range(api.protocol.MAX_HEADERS + 1))
    answer = exchange(gateway, b"GET /healthz HTTP/1.1\r\nhost: t\r\n" + fields + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"headers_too_large" in answer


def test_headers_over_the_byte_bound_are_431_and_not_held(gateway: LiveGateway) -> None:
    huge = b"x-big: " + b"a" * (api.protocol.MAX_HEADER_BYTES + 1) + b"\r\n"
    answer = exchange(gateway, b"GET /healthz HTTP/1.1\r\nhost: t\r\n" + huge + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]


def test_headers_within_the_bounds_are_served(gateway: LiveGateway) -> None:
    fields = b"".join(b"x-%d: %s\r\n" % (i, b"v" * 100) for i in range(50))
    answer = exchange(
        gateway, b"GET /healthz HTTP/1.1\r\nhost: t\r\nconnection: close\r\n" + fields + b"\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


def test_a_body_shorter_than_its_content_length_is_408_in_time(
    gateway: LiveGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api.protocol, "BODY_TIMEOUT_S", 0.5)
    started = time.monotonic()
    answer = exchange(
        gateway,
        b"POST /v1/pipelines/echo/jobs HTTP/1.1\r\nhost: t\r\n"
        b"content-type: application/json\r\ncontent-length: 100\r\n\r\n"
        b'{"input":',
    )
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert time.monotonic() - started < 5
