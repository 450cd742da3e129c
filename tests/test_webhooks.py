"""Webhooks: a local receiver (a real HTTP server on 127.0.0.1) that fails the first attempts,
real ``batchline notifier`` and ``rq worker batchline-webhooks`` processes, a notifier SIGKILLed
while jobs end: every end is delivered, signed, with its attempts in the job document."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis
from rq import Queue

from queueing.client import Client
from queueing.jobs import Snapshot
from queueing.keys import Keys
from queueing.notifier import Notifier
from queueing.settings import Settings
from queueing.webhooks import (
    HEADER,
    QUEUE,
    check_url,
    enqueue_delivery,
    refused,
    sign,
    verify,
    vet,
)
from tests.bulk_pipelines import t_gate
from tests.conftest import ROOT, worker_env
from tests.support import Workers, register, wait_exit, wait_until

SECRET = "test-secret"
KEYS = Keys()


class Receiver:
    """An HTTP server on 127.0.0.1: answers 500 to the first ``fail_first`` POSTs, 503 always
    on ``/down``, else 200; keeps every request."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.requests: list[tuple[str, dict[str, str], bytes, int]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    if self.path == "/down":
                        code = 503
                    elif receiver.fail_first > 0:
                        receiver.fail_first -= 1
                        code = 500
                    else:
                        code = 200
                    receiver.requests.append((self.path, dict(self.headers), body, code))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def delivered(self) -> dict[str, dict[str, Any]]:
        """Job id -> its document, for the deliveries answered 200."""
        with self.lock:
            return {
                orjson.loads(body)["id"]: orjson.loads(body)
                for _, _, body, code in self.requests
                if code == 200
            }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook_settings(settings: Settings) -> Settings:
    return settings.replace(
        pipelines=("tests.bulk_pipelines",),
        webhook_secret=SECRET,
        webhook_allow=("127.0.0.1",),
        webhook_retries=3,
        webhook_backoff_s=0.0,
        webhook_sweep_s=0.3,
    )


def _env(settings: Settings) -> dict[str, str]:
    return worker_env(
        settings,
        BATCHLINE_WEBHOOK_SECRET=SECRET,
        BATCHLINE_WEBHOOK_ALLOW="127.0.0.1",
        BATCHLINE_WEBHOOK_RETRIES=str(settings.webhook_retries),
        BATCHLINE_WEBHOOK_BACKOFF_S="0",
        BATCHLINE_WEBHOOK_SWEEP_S=str(settings.webhook_sweep_s),
    )


class Processes:
    """Notifier and rq worker processes, each in its own process group, killed at the end."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started: list[subprocess.Popen[bytes]] = []

    def _start(self, command: list[str]) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            command, env=_env(self.settings), cwd=ROOT, start_new_session=True
        )
        self.started.append(process)
        return process

    def notifier(self) -> subprocess.Popen[bytes]:
        return self._start(
            [sys.executable, "-m", "batchline", "--log-level", "WARNING", "notifier"]
        )

    def rq_burst(self) -> subprocess.Popen[bytes]:
        url = self.settings.redis_url or ""
        command = [sys.executable, "-m", "rq.cli", "worker", QUEUE, "--url", url, "--burst"]
        return self._start([*command, "--logging_level", "WARNING"])

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def close(self) -> None:
        for process in self.started:
            if process.poll() is None:
                self.kill(process)


@pytest.fixture
def processes(hook_settings: Settings) -> Iterator[Processes]:
    pool = Processes(hook_settings)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(fail_first=2)
    try:
        yield server
    finally:
        server.close()


def pending(r: redis.Redis) -> int:
    return int(r.scard(KEYS.webhooks_pending(0)))


def document(r: redis.Redis, job_id: str) -> dict[str, Any]:
    raw = r.hgetall(KEYS.job(job_id))
    return dict(orjson.loads(Snapshot.from_hash(job_id, raw).document("/")))


def test_signatures_verify_and_refuse_tampering_and_old_ones() -> None:
    body = b'{"id": "0-abc"}'
    header = sign(body, SECRET)
    assert verify(body, header, SECRET)
    assert not verify(body + b" ", header, SECRET)
    assert not verify(body, header, "another secret")
    assert not verify(body, None, SECRET)
    old = sign(body, SECRET, timestamp=int(time.time()) - 3600)
    assert not verify(body, old, SECRET)
    assert verify(body, old, SECRET, tolerance_s=7200)


def test_urls_that_resolve_to_private_addresses_are_refused_unless_allowed() -> None:
    assert refused("http://127.0.0.1:9/x") is not None
    assert refused("http://10.1.2.3/x") is not None
    assert refused("http://169.254.169.254/latest") is not None
    assert refused("http://[::1]:9/") is not None
    assert refused("http://127.0.0.1:9/x", ["127.0.0.1"]) is None
    assert refused("http://10.1.2.3/x", ["10.0.0.0/8"]) is None
    assert refused("http://8.8.8.8/x") is None
    with pytest.raises(ValueError, match="http"):
        check_url("ftp://example.com/x")
    with pytest.raises(ValueError, match="http"):
        check_url("/relative")


def test_every_end_is_delivered_signed_with_retries_and_recorded(
    hook_settings: Settings,
    workers: Workers,
    processes: Processes,
    receiver: Receiver,
    redis_client: redis.Redis,
) -> None:
    register(hook_settings, t_gate)
    hook = receiver.url + "/hook"
    with Client(hook_settings) as client:
        cancelled = client.submit("t_gate", {"x": 3}, webhook=hook)  # no worker yet
        cancelled.cancel()
        expired = client.submit("t_gate", {"x": 8}, webhook=hook, timeout_s=0.001)
        processes.notifier()
        done = client.submit("t_gate", {"x": 1}, webhook=hook)
        failed = client.submit("t_gate", {"x": 2, "fail": True}, webhook=hook)
        down = client.submit("t_gate", {"x": 4}, webhook=receiver.url + "/down")
        refused_job = client.submit("t_gate", {"x": 5}, webhook="http://10.255.255.1/x")
        plain = client.submit("t_gate", {"x": 6})
        with pytest.raises(ValueError, match="http"):
            client.submit("t_gate", {"x": 7}, webhook="file:///etc/passwd")
        workers.start("t_gate", settings=hook_settings)
        for job in (done, failed, expired, down, refused_job, plain):
            job.wait(timeout=30)
    assert not redis_client.hexists(KEYS.job(plain.id), "webhook")
    wait_until(lambda: pending(redis_client) == 0, 30, "the notifier handed every end to rq")
    assert wait_exit(processes.rq_burst(), 60, "rq worker") == 0

    delivered = receiver.delivered()
    assert {job_id: doc["status"] for job_id, doc in delivered.items()} == {
        done.id: "done",
        failed.id: "failed",
        cancelled.id: "cancelled",
        expired.id: "expired",
    }
    assert delivered[done.id]["result"] == {"x": 1, "y": 2}
    for path, headers, body, _ in receiver.requests:
        assert verify(body, headers[HEADER], SECRET), path
        assert not verify(body, headers[HEADER], "wrong")
    hooked = [done.id, failed.id, cancelled.id, expired.id]
    docs = {job_id: document(redis_client, job_id)["webhook"] for job_id in hooked}
    assert sum(doc["attempts"] for doc in docs.values()) == 4 + 2  # the receiver failed 2
    assert all(doc["last_status"] == "200" and doc["final"] for doc in docs.values())
    gave_up = document(redis_client, down.id)["webhook"]
    assert gave_up == {
        "url": receiver.url + "/down",
        "attempts": 4,  # the first, then 3 retries
        "last_status": "503",
        "last_error": None,
        "final": True,
    }
    blocked = document(redis_client, refused_job.id)["webhook"]
    assert blocked["last_status"] == "refused"
    assert "non-public" in blocked["last_error"]
    assert not any(path == "/x" for path, *_ in receiver.requests)


def test_a_killed_notifier_loses_no_end(
    hook_settings: Settings,
    workers: Workers,
    processes: Processes,
    redis_client: redis.Redis,
) -> None:
    receiver = Receiver()
    try:
        register(hook_settings, t_gate)
        workers.start("t_gate", settings=hook_settings)
        hook = receiver.url + "/hook"
        notifier = processes.notifier()
        with Client(hook_settings) as client:
            first = client.submit_many("t_gate", [{"x": i} for i in range(8)], webhook=hook)
            processes.kill(notifier)  # mid-way: some of these ends were heard, some not
            second = client.submit_many("t_gate", [{"x": i} for i in range(8, 16)], webhook=hook)
            for job in first + second:
                job.wait(timeout=30)
        assert pending(redis_client) > 0  # ended while nobody listened: kept
        processes.notifier()
        wait_until(lambda: pending(redis_client) == 0, 30, "the restarted notifier swept")
        assert wait_exit(processes.rq_burst(), 60, "rq worker") == 0
        assert set(receiver.delivered()) == {job.id for job in first + second}
    finally:
        receiver.close()


def test_a_crash_between_enqueue_and_forget_enqueues_no_second_delivery(
    hook_settings: Settings, workers: Workers, redis_client: redis.Redis
) -> None:
    register(hook_settings, t_gate)
    workers.start("t_gate", settings=hook_settings)
    with Client(hook_settings) as client:
        job = client.submit("t_gate", {"x": 1}, webhook="http://127.0.0.1:9/hook")
        job.wait(timeout=30)
    # The notifier enqueued the delivery and died before it removed the job from the set.
    ended_at = redis_client.hget(KEYS.job(job.id), "finished_at").decode()
    hook = "http://127.0.0.1:9/hook"
    assert enqueue_delivery(redis_client, job.id, hook, hook_settings, ended_at)
    assert pending(redis_client) == 1
    Notifier(hook_settings).run(once=True)
    assert pending(redis_client) == 0
    assert Queue(QUEUE, connection=redis_client).count == 1


def test_a_submit_without_a_webhook_sends_what_it_sent_before(
    hook_settings: Settings, redis_client: redis.Redis
) -> None:
    """The commands SUBMIT runs per job, counted by the server: XADD + HSET without a webhook,
    and an SADD more with one."""
    register(hook_settings, t_gate)

    def calls() -> Counter[str]:
        stats = redis_client.info("commandstats")
        return Counter({name: int(stat["calls"]) for name, stat in stats.items()})

    with Client(hook_settings) as client:
        client.submit("t_gate", {"x": 0})  # the script is loaded
        before = calls()
        client.submit_many("t_gate", [{"x": i} for i in range(10)])
        plain = calls() - before
        before = calls()
        client.submit_many("t_gate", [{"x": i} for i in range(10)], webhook="https://a.example/")
        hooked = calls() - before
    assert plain["cmdstat_xadd"] == plain["cmdstat_hset"] == 10
    assert plain["cmdstat_sadd"] == 0
    assert hooked["cmdstat_sadd"] == 10
    assert hooked["cmdstat_xadd"] == hooked["cmdstat_hset"] == 10


@pytest.mark.parametrize(
    "url",
    [
        "http://[64:ff9b::a9fe:a9fe]/hook",  # NAT64 of 169.254.169.254
        "http://[2002:a9fe:a9fe::1]/hook",  # 6to4 of 169.254.169.254
        "http://[::ffff:127.0.0.1]/hook",  # IPv4-mapped loopback
    ],
)
def test_addresses_that_carry_a_private_ipv4_address_are_refused(url: str) -> None:
    assert refused(url) is not None


def test_a_delivery_connects_to_the_address_that_was_checked() -> None:
    """(DNS rebinding: the name is resolved once, for the check; the request goes there.)"""
    why, address = vet("http://localhost:9/hook", ["localhost"])
    assert why is None
    assert address in ("127.0.0.1", "::1")
