"""Webhooks: a job submitted with ``webhook="https://..."`` has its document POSTed there when it
ends (done, failed, expired or cancelled), signed, by an rq job with retries.

How an end becomes a delivery, without losing one:

1. SUBMIT stores the URL in the job's hash, adds the job to its partition's pending set
   (:meth:`~queueing.keys.Keys.webhooks_pending`) and lists the notifier's channel among the
   job's reply channels, in the same script.
2. The job ends as any other: its notice is published to every reply channel.
3. The notifier (``batchline notifier``, :mod:`queueing.notifier`) wakes on that notice, and
   also sweeps the pending sets (at start-up and every ``webhook_sweep_s``), so an end it did
   not hear (it was down, or reconnecting) is found all the same. For each ended job it
   enqueues :func:`deliver` on the rq queue :data:`QUEUE` (rq job id ``webhook-<job id>-<its
   finished_at>``, skipped if that exists), THEN removes the job from the pending set. A crash between the
   two leaves the job pending: the next sweep finds the rq job there and only removes it.
   Delivery is at least once: a receiver must accept a repeat (the job id says which).
4. :func:`deliver` POSTs the job document, signed (below); a 5xx, a timeout or a connection
   error raises, and rq retries it (``Retry``, exponential backoff: ``webhook_backoff_s`` x 1,
   2, 4...) up to ``webhook_retries`` times; a 4xx, or a URL that resolves to a private,
   loopback or link-local address (unless allowed), is given up at once. Every attempt is
   recorded in the job's hash (``webhook_attempts``, ``webhook_status``, ``webhook_error``),
   which the job document shows under ``webhook``.

Signature. ``Batchline-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` with
the secret ``BATCHLINE_WEBHOOK_SECRET``. A receiver checks it with :func:`verify`.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import socket
import ssl
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from queueing.errors import ConfigError

QUEUE = "batchline-webhooks"
"""The rq queue of deliveries (``rq worker batchline-webhooks --with-scheduler``)."""
NOTIFIER = "webhooks"
"""The listener name of the notifier's channels (:meth:`queueing.keys.Keys.notify`)."""
HEADER = "Batchline-Signature"
TOLERANCE_S = 300.0


def check_url(url: str) -> str:
    """``url`` if it is an absolute http(s) URL with a host; ValueError otherwise. (Where it
    resolves is checked when it is delivered to: DNS may change in between.)"""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"webhook must be an http:// or https:// URL, got {url[:200]!r}")
    if len(url) > 2048:
        raise ValueError("webhook URL is over 2048 characters")
    return url


def sign(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """The ``Batchline-Signature`` header's value for ``body``."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), b"%d." % t + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(
    body: bytes,
    header: str | None,
    secret: str,
    *,
    tolerance_s: float = TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """Whether ``header`` (the request's ``Batchline-Signature``) signs ``body`` (the raw
    request body, as received) with ``secret``, at a time within ``tolerance_s`` of now (an
    old signature is refused, so a captured request cannot be replayed later)."""
    if not header or not secret:
        return False
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        fields.setdefault(name, []).append(value)
    try:
        t = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        return False
    expected = hmac.new(secret.encode(), b"%d." % t + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, given) for given in fields.get("v1", []))


def refused(url: str, allow: Iterable[str] = ()) -> str | None:
    """Why ``url`` may not be called (it resolves to a private, loopback, link-local, reserved
    or multicast address), or None. ``allow``: hosts, addresses or networks (CIDR) let through
    all the same (``BATCHLINE_WEBHOOK_ALLOW``)."""
    return vet(url, allow)[0]


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Any:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, NAT64), else the address itself:
    ``64:ff9b::a9fe:a9fe`` is 169.254.169.254 behind a NAT64 gateway, yet "global"."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def vet(url: str, allow: Iterable[str] = ()) -> tuple[str | None, str | None]:
    """(why ``url`` may not be called, None) or (None, the address to connect to). A delivery
    connects to that very address, so a name that resolves to a public address for the check
    and to a private one for the request (DNS rebinding) reaches nothing else."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    allowed = [a.strip() for a in allow if a.strip()]
    host_allowed = host in allowed
    networks = []
    for item in allowed:
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            continue  # a host name
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError) as exc:
        return f"cannot resolve {host!r}: {exc}", None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if host_allowed or any(address in network for network in networks):
            continue
        inner = _embedded_ipv4(address)
        if not (address.is_global and inner.is_global) or address.is_multicast:
            return (
                f"{host} resolves to {address}, a non-public address "
                "(allow it with BATCHLINE_WEBHOOK_ALLOW)"
            ), None
    return None, str(infos[0][4][0])


def backoff(retries: int, base_s: float) -> list[int]:
    """rq's retry intervals: ``base_s`` x 1, 2, 4... (whole seconds; 0 retries at once)."""
    return [int(base_s * 2**i) for i in range(retries)]


def delivery_id(job_id: str, ended_at: str = "") -> str:
    """The rq job id of the delivery of one end of a job (a job requeued from its dead letters
    ends again: that end is delivered too)."""
    stamp = "".join(c for c in ended_at if c.isdigit())
    return f"webhook-{job_id}-{stamp}" if stamp else f"webhook-{job_id}"


def enqueue_delivery(
    connection: Any, job_id: str, url: str, settings: Any, ended_at: str = ""
) -> bool:
    """Enqueue the delivery of one job's end (False if it was enqueued before)."""
    from rq import Queue, Retry
    from rq.job import Job

    rq_id = delivery_id(job_id, ended_at)
    if Job.exists(rq_id, connection=connection):
        return False
    retries = settings.webhook_retries
    Queue(QUEUE, connection=connection).enqueue(
        deliver,
        job_id,
        url,
        job_id=rq_id,
        description=f"batchline webhook: job {job_id} -> {_where(url)}",
        retry=Retry(max=retries, interval=backoff(retries, settings.webhook_backoff_s))
        if retries
        else None,
        result_ttl=86400,
        failure_ttl=7 * 86400,
        job_timeout=max(30, int(settings.webhook_timeout_s * 3)),
    )
    return True


class RetryableDelivery(Exception):
    """A 5xx, a timeout or a connection error: rq tries again (while retries are left)."""


def deliver(job_id: str, url: str) -> str:
    """The rq job: POST job ``job_id``'s document to ``url``, signed; record the attempt."""
    from rq import get_current_job

    from queueing.jobs import Snapshot
    from queueing.keys import Keys
    from queueing.settings import Settings

    job = get_current_job()
    assert job is not None, "deliver runs as an rq job"
    connection = job.connection
    settings = Settings.from_env()
    key = Keys(settings.prefix).job(job_id)
    raw = connection.hgetall(key)
    if not raw:
        return "gone: the job's record has expired"

    def record(status: str, error: str = "", final: bool = False) -> None:
        pipe = connection.pipeline(transaction=True)
        pipe.hincrby(key, "webhook_attempts", 1)
        mapping: dict[Any, Any] = {
            "webhook_status": status,
            "webhook_error": error,
            "webhook_at": repr(time.time()),
        }
        if final:
            mapping["webhook_final"] = "1"
        pipe.hset(key, mapping=mapping)
        pipe.execute()

    last = not job.retries_left
    why, address = vet(url, settings.webhook_allow)
    if why is not None or address is None:
        why = why or "no address"
        record("refused", why, final=True)
        return f"refused: {why}"
    if not settings.webhook_secret:
        raise ConfigError("BATCHLINE_WEBHOOK_SECRET is not set: deliveries are signed with it")
    body = Snapshot.from_hash(job_id, raw).document(f"/v1/jobs/{job_id}")
    headers = {
        "Content-Type": "application/json",
        HEADER: sign(body, settings.webhook_secret),
        "User-Agent": "batchline-webhooks",
    }
    try:
        code, text = _post(url, address, body, headers, settings.webhook_timeout_s)
    except (OSError, http.client.HTTPException) as exc:
        record("error", f"{type(exc).__name__}: {exc}"[:500], final=last)
        raise RetryableDelivery(f"{_where(url)}: {type(exc).__name__}") from exc
    status = str(code)
    if code >= 500:
        record(status, text, final=last)
        raise RetryableDelivery(f"{_where(url)} answered {status}")
    record(status, "" if 200 <= code < 300 else text, final=True)
    return status


def _where(url: str) -> str:
    """A URL as logs may show it: scheme, host and port (no credentials, path or query, where
    a receiver's token may be)."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}"


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to ``address`` (the vetted one) for ``host``'s requests."""

    def __init__(self, host: str, port: int | None, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """An HTTPS connection to ``address``, verifying ``host``'s certificate (SNI: ``host``)."""

    def __init__(self, host: str, port: int | None, address: str, timeout: float) -> None:
        self.context = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self.context)
        self.address = address

    def connect(self) -> None:
        raw = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self.context.wrap_socket(raw, server_hostname=self.host)


def _post(
    url: str, address: str, body: bytes, headers: dict[str, str], timeout: float
) -> tuple[int, str]:
    """POST ``body`` to ``address`` (for ``url``'s host); the status and the first 200
    characters of the answer. (http.client: each delivery runs in a fresh rq work horse, where
    importing an HTTP library would cost more than the request.)"""
    parts = urlsplit(url)
    kind = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
    connection = kind(parts.hostname or "", parts.port, address, timeout)
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection.request("POST", path, body=body, headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.read(200).decode(errors="replace")
    finally:
        connection.close()
