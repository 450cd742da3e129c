"""The notifier: turns the ends of jobs that have a webhook into rq deliveries.

It listens on its own wake-up channel in every partition (SUBMIT lists it among the reply
channels of a job with a webhook), and sweeps the partitions' pending sets at start-up and every
``webhook_sweep_s``: a notice it missed (it was down, restarting, or reconnecting) costs a
delay, never a delivery. See :mod:`queueing.webhooks` for the whole path and why it delivers at
least once. Run one (``batchline notifier``); a second one is harmless (a delivery whose rq job
exists is not enqueued again) but adds nothing.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Any, cast

from queueing.bulk import rq_connection
from queueing.connection import REDIS_DOWN
from queueing.jobs import JobStatus, Snapshot
from queueing.keys import Keys, is_job_id
from queueing.settings import Settings
from queueing.waiters import hand_on_push
from queueing.webhooks import NOTIFIER, enqueue_delivery

log = logging.getLogger(__name__)

SWEEP_BATCH = 500


class Notifier:
    """Listen, sweep, enqueue deliveries. ``run()`` until SIGTERM/SIGINT (or one sweep with
    ``once``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = Keys(settings.prefix)
        self.redis = rq_connection(settings)
        self.channels = [self.keys.notify(p, NOTIFIER) for p in range(settings.partitions)]
        self.stopping = False
        self.enqueued = 0

    def stop(self, *_: Any) -> None:
        self.stopping = True

    def run(self, *, once: bool = False) -> None:
        if once:
            self.sweep()
            return
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        while not self.stopping:
            try:
                self._listen()
            except REDIS_DOWN as exc:
                log.warning("notifier: Redis unreachable (%s); retrying in 1 s", exc)
                time.sleep(1.0)
        log.info("notifier: stopped (%d deliveries enqueued)", self.enqueued)

    def _listen(self) -> None:
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True, push_handler_func=hand_on_push)
        try:
            pubsub.ssubscribe(*self.channels)
            # Subscribed first, then swept: an end is either heard from now on, or pending.
            self.sweep()
            log.info("notifier: listening on %d partition(s)", len(self.channels))
            next_sweep = time.monotonic() + self.settings.webhook_sweep_s
            while not self.stopping:
                message = pubsub.get_sharded_message(timeout=0.5)
                if message is not None and message.get("type") == "smessage":
                    self.on_notice(message["data"])
                if time.monotonic() >= next_sweep:
                    self.sweep()
                    next_sweep = time.monotonic() + self.settings.webhook_sweep_s
        finally:
            pubsub.close()

    def on_notice(self, data: bytes) -> None:
        try:
            notices = Snapshot.decode_all(data)
        except ValueError:
            log.warning("notifier: a malformed notice (%d bytes) was skipped", len(data))
            return
        for notice in notices:
            if notice.status.finished:
                self.handle(notice.job_id)

    def handle(self, job_id: str, url: bytes | None = None, ended_at: bytes | None = None) -> None:
        """Enqueue the delivery of an ended job, then forget it (in this order: a crash in
        between leaves it pending, and the next sweep finds its delivery enqueued)."""
        partition = int(job_id.split("-", 1)[0])
        pending = self.keys.webhooks_pending(partition)
        key = self.keys.job(job_id)
        if url is None:
            url, ended_at = cast(
                list[bytes | None], self.redis.hmget(key, "webhook", "finished_at")
            )
            if url and not ended_at:
                return  # live again (requeued from its dead letters): its next end is pending
        if url and enqueue_delivery(
            self.redis, job_id, url.decode(), self.settings, (ended_at or b"").decode()
        ):
            self.enqueued += 1
            log.info("notifier: delivery of job %s enqueued", job_id)
        self.redis.srem(pending, job_id)
        if url and (self.redis.hget(key, "finished_at") or b"") != (ended_at or b""):
            # Requeued meanwhile (live again, or ended anew): its next end stays pending.
            self.redis.sadd(pending, job_id)

    def sweep(self) -> int:
        """Hand over every pending job that has ended (or whose record is gone); how many."""
        handled = 0
        for partition in range(self.settings.partitions):
            pending = self.keys.webhooks_pending(partition)
            batch: list[str] = []
            for raw in self.redis.sscan_iter(pending, count=SWEEP_BATCH):
                batch.append(raw.decode())
                if len(batch) >= SWEEP_BATCH:
                    handled += self._sweep_batch(pending, batch)
                    batch = []
            if batch:
                handled += self._sweep_batch(pending, batch)
        return handled

    def _sweep_batch(self, pending: str, job_ids: list[str]) -> int:
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            if is_job_id(job_id):
                pipe.hmget(self.keys.job(job_id), "status", "webhook", "finished_at")
        states = iter(pipe.execute())
        handled = 0
        for job_id in job_ids:
            if not is_job_id(job_id):
                self.redis.srem(pending, job_id)
                continue
            status, url, ended_at = next(states)
            if status is None:  # its record expired before it was delivered
                log.warning("notifier: job %s has no record left; its webhook is dropped", job_id)
                self.redis.srem(pending, job_id)
            elif JobStatus(status.decode()).finished:
                self.handle(job_id, url or b"", ended_at)
                handled += 1
        return handled
