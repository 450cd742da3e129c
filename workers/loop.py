"""The loop of one stage: read, expire, run, hand off + ack, heartbeat, claim.

Reading runs ahead of the model (one batch is prefetched while the current one computes), and
the hand-off of a batch overlaps the next batch's compute. Every item ends in exactly one
:class:`~queueing.streams.Outcome`; a batch whose handler raises is split in halves until the
items that raise are alone, so one bad item fails alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from queueing.connection import REDIS_DOWN, REDIS_FULL, OutageLog
from queueing.errors import DecodeError
from queueing.jobs import StageTiming
from queueing.message import Message, dumps, job_id_of
from queueing.scripts import Kind, Start
from queueing.settings import Settings
from queueing.stagestats import StageRecorder
from queueing.streams import (
    DELIVERY_CAP,
    Delivery,
    DeliveryKey,
    Outcome,
    StageQueue,
    never_started,
    too_many_attempts,
)
from queueing.tasks import cancel_and_wait
from workers.batching import BatchConfig, BatchContractError, BatchedHandler
from workers.device import limit_torch_threads, torch_threads
from workers.forming import BatchFormer
from workers.stage import Route, Stage

log = logging.getLogger(__name__)

RETRY_S = 0.5
T = TypeVar("T")

CLAIM_BATCHES = 2
"""A heartbeat claims up to this many batches' worth of a dead consumer's entries (what a
worker holds is orphaned again if it crashes: it claims no more than it will soon run)."""

OWN_PENDING_LIMIT = 100_000
"""Most entries re-read at start-up from a previous life under the same consumer name."""

RUNNING_AFTER_S = 0.2
"""A batch of new entries goes through NOTE, which does not write its jobs (see
``queueing/lua/start.lua``): they show 'running' once it has run this long (those of a
quicker one go from queued to their end)."""

REFRESH_AFTER_S = 0.005
"""A batch read this long before the model takes it is refreshed first: entries of higher
priority lanes that came meanwhile take their share of it (see BatchFormer.refresh). (A batch
taken sooner is not: one more read per batch would cost a fast model more than it gains.)"""


class _Abandon(Exception):
    """Redis is unreachable and the worker is stopping: leave what it holds pending."""


@dataclass(frozen=True, slots=True)
class _Batch:
    """What the read loop hands the model: new entries, or ``recovered`` ones (a dead
    consumer's, or this one's from a previous life; ``suspect``: one of them may have crashed
    a worker)."""

    deliveries: list[Delivery]
    suspect: bool = False
    recovered: bool = False
    read_at: float | None = None
    """When the read loop formed it from new entries (``time.monotonic()``)."""


@dataclass(slots=True)
class _Item:
    delivery: Delivery
    message: Message
    value: Any
    started: bool = True
    """Whether START marked it running (else NOTE admitted it: see run_batch)."""


class StageLoop:
    """Consumes one stage's stream until stopped (or, in burst mode, until it is empty)."""

    def __init__(
        self,
        stage: Stage,
        handler: BatchedHandler[Any],
        queue: StageQueue,
        settings: Settings,
        *,
        burst: bool = False,
    ) -> None:
        self.stage = stage
        self.handler = handler
        self.queue = queue
        self.settings = settings
        self.burst = burst
        self.config = handler.config
        self.held: dict[DeliveryKey, Delivery] = {}
        """Entries read and not yet finished: touched on every heartbeat (held from the read
        that brings them: BatchFormer's, or a recovery's)."""
        self.former = BatchFormer(self.config, self.held)
        """Forms batches (count or cost bound, fixed or adaptive wait, the lanes' shares);
        holds the entries carried over to the next batch: cut by a cost bound, left out by
        the lanes' shares, read or displaced by a refresh."""
        self._inbox: asyncio.Queue[_Batch | None] = asyncio.Queue(maxsize=1)
        self._executor = ThreadPoolExecutor(
            1,
            thread_name_prefix=f"model-{stage.name}",
            initializer=limit_torch_threads,
            initargs=(torch_threads(settings.torch_threads),),
        )
        self.processed = 0
        self.upstream: list[StageLoop] = []
        """Loops in this process that hand items to this one: in burst mode this one drains
        only after they are done."""
        self.done = asyncio.Event()
        self._stop = asyncio.Event()
        self._recovered: deque[_Batch] = deque()
        """Batches of recovered entries (suspects: one of them may have crashed a worker), run
        before new ones. (Run in turn with new batches, they were re-delivered by every crash
        a new batch caused, until entries never started were dead-lettered: other workers
        keep reading new entries meanwhile.)"""
        self._suspects_ran = asyncio.Event()
        """Set once the batch of suspects in hand has run (the read loop waits for it)."""
        self._beat_log = OutageLog(log, f"stage {stage.name}: heartbeat")
        self._io_log = OutageLog(log, f"stage {stage.name}: redis")
        self.activity = StageRecorder(stage.name)
        self._stats_log = OutageLog(log, f"stage {stage.name}: dashboard figures")
        """This stage's batches since the last heartbeat (for the dashboard)."""

    # -- the loop ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        await self._persist("create groups", self.queue.ensure_groups)
        reader = asyncio.create_task(self._read_loop(stop), name=f"read:{self.stage.name}")
        keeper = asyncio.create_task(self._heartbeat_loop(stop), name=f"beat:{self.stage.name}")
        try:
            await self._consume()
            await reader
            self.done.set()
        except _Abandon:
            log.warning(
                "stage %s: stopping while Redis is unreachable; the %d entries in hand stay "
                "pending and a live worker will claim them",
                self.stage.name,
                len(self.held),
            )
        finally:
            await cancel_and_wait(reader, keeper)
            self._executor.shutdown(wait=False)
            await self.queue.close()

    async def _consume(self) -> None:
        """Run the batches the read loop hands over until it says there are no more."""
        finishing: asyncio.Task[None] | None = None
        while (batch := await self._next()) is not None:
            if batch.suspect and finishing is not None:
                # A crash now must not take the previous batch's hand-off with it.
                await finishing
                finishing = None
            ran = await self.process(await self._refreshed(batch), new=not batch.recovered)
            if batch.suspect:
                # Nor a crash in the next batch this one's: an entry that has used its
                # last attempt would be dead-lettered though it ran.
                await self.finish(*ran)
                self._suspects_ran.set()
                continue
            if finishing is not None:
                await finishing
            finishing = asyncio.create_task(self.finish(*ran))
        if finishing is not None:
            await finishing
        # Entries a refresh carried after the read loop drained the carry: run them too.
        for carried in self.former.drain():
            await self.finish(*await self.process(carried, new=True))

    async def _next(self) -> _Batch | None:
        """The read loop's next batch; or, while it has none ready and waits in a blocking read
        (up to block_ms) that cannot see them, a batch of the entries a refresh displaced: the
        model runs them now rather than after that read."""
        if self._inbox.empty() and self.former.blocked and self.former.carry:
            return _Batch(self.former.take_carried())
        return await self._inbox.get()

    async def _read_loop(self, stop: asyncio.Event) -> None:
        """Fill the inbox: first this consumer's own pending entries (a restart under the
        same name), then new ones, in batches; recovered entries first whenever there are."""
        try:
            # (a crash's batch, restarted at once by a supervisor, is a suspect like any other)
            own = await self._persist(
                "read own pending", lambda: self.queue.reread_own(OWN_PENDING_LIMIT)
            )
            await self._recover(own)
            while not stop.is_set():
                while self._recovered:
                    await self._put_recovered(self._recovered.popleft())
                # Snapshot first: whatever upstream handed on before it finished is readable now.
                upstream_done = all(loop.done.is_set() for loop in self.upstream)
                # (no blocking read while recovered entries wait for their turn)
                read = functools.partial(self.read_batch, block=not self._recovered)
                deliveries = await self._persist("read", read)
                if deliveries:
                    await self._inbox.put(_Batch(deliveries, read_at=time.monotonic()))
                elif self.burst:
                    claimed, _ = await self.queue.claim(self.config.max_items)
                    if claimed:
                        await self._recover(claimed)
                    elif self._recovered:
                        continue
                    elif upstream_done:
                        break
            # Entries a cost bound carried over are pending here: run them before stopping.
            for carried in self.former.drain():
                await self._inbox.put(_Batch(carried))
        except _Abandon:
            pass
        finally:
            await self._inbox.put(None)

    async def _recover(self, deliveries: list[Delivery]) -> None:
        """Queue recovered entries (a dead consumer's, or our own from a previous life) for
        the read loop, batched by how often this stage has started their jobs (a crash counts
        an attempt against every item of its batch, and one of them may be the culprit):

        - never started (read ahead by a worker that died first): a full batch, as new ones;
        - started, with two or more attempts left: a half batch (bisection: the half without
          the culprit ends; the other leaves each of its items a spare attempt);
        - on its last attempt: alone, so that a crash counts against it alone;
        - out of attempts: in a batch (START dead-letters them before the model runs).

        A crash re-orphans what was queued here without counting an attempt, so entries
        recovered again keep their place in this order. They are held (touched by heartbeats)
        from now on."""
        for delivery in deliveries:
            self.held[delivery.key] = delivery
        attempts = await self._persist("read attempts", lambda: self.queue.attempts(deliveries))
        last = self.settings.max_deliveries - 1
        half = max(1, self.config.max_items // 2)
        fresh: list[Delivery] = []
        split: list[Delivery] = []
        alone: list[Delivery] = []
        for delivery, started in zip(deliveries, attempts, strict=True):
            if started == 0 or started > last:
                fresh.append(delivery)
            elif started < last:
                split.append(delivery)
            else:
                alone.append(delivery)
        # Never started first: a crash re-delivers what is still queued here without counting
        # an attempt, and an entry delivered DELIVERY_CAP x max_deliveries times unstarted is
        # dead-lettered.
        # (within the count and cost bounds, as batches read new: see BatchFormer.cut)
        self._recovered.extend(_Batch(chunk, recovered=True) for chunk in self.former.cut(fresh))
        self._recovered.extend(
            _Batch(chunk, suspect=True, recovered=True) for chunk in self.former.cut(split, half)
        )
        self._recovered.extend(
            _Batch([delivery], suspect=True, recovered=True) for delivery in alone
        )

    async def _refreshed(self, batch: _Batch) -> list[Delivery]:
        """A batch of new entries that waited for the model: refreshed with the entries of
        higher lanes that came meanwhile (BatchFormer.refresh). Best effort: if Redis does not
        answer, the batch runs as it was formed."""
        if batch.read_at is None or time.monotonic() - batch.read_at < REFRESH_AFTER_S:
            return batch.deliveries
        try:
            return await self.former.refresh(self.queue, batch.deliveries)
        except (*REDIS_DOWN, *REDIS_FULL) as exc:
            self._io_log.failed(exc)
            return batch.deliveries

    async def _put_recovered(self, batch: _Batch) -> None:
        """Hand over a batch of recovered entries; for suspects, read nothing more until it
        has run: should it crash this worker, it orphans these entries only, not new ones
        read meanwhile."""
        if not batch.suspect:
            await self._inbox.put(batch)
            return
        self._suspects_ran.clear()
        await self._inbox.put(batch)
        await self._suspects_ran.wait()

    async def read_batch(self, *, block: bool = True) -> list[Delivery]:
        """Whatever is waiting, at once, up to max_batch_size (or its cost); when fewer wait,
        more for at most batch_wait_timeout_s (or while the adaptive wait says it pays). With
        ``block``, waits up to block_ms for the first. See :class:`~workers.forming.BatchFormer`."""
        block_ms = 100 if self.burst else self.settings.block_ms
        return await self.former.read(self.queue, block_ms if block else None, self._inbox.qsize)

    def apply_config(self, config: BatchConfig) -> None:
        """Live settings: batch with ``config`` from the next batch read on."""
        self.config = config
        self.former.apply(config)

    # -- one batch ---------------------------------------------------------------------------

    async def process(
        self, deliveries: Sequence[Delivery], *, new: bool = False
    ) -> tuple[list[Outcome], float | None]:
        """Decode, expire, start and run one batch: one outcome per delivery, and when the
        model began on it (None if it ran nothing). ``new``: see :meth:`admit`."""
        outcomes, items = await self.admit(deliveries, new=new)
        if not items:
            return outcomes, None
        ran, started = await self.run_batch(items)
        return outcomes + ran, started

    async def admit(
        self, deliveries: Sequence[Delivery], *, new: bool = False
    ) -> tuple[list[Outcome], list[_Item]]:
        """Decode, expire and start one batch: the outcomes of the deliveries that are not to
        run (undecodable, expired, dead, cancelled...), and the items to run. ``new``: a
        batch of new entries, whose entries delivered for the first time go through NOTE
        instead of START: the same check of their jobs, but one write for the batch instead
        of two per job (see ``queueing/lua/start.lua``)."""
        outcomes: list[Outcome] = []
        candidates: list[_Item] = []
        now = time.time()
        for delivery in deliveries:
            try:
                message = Message.decode(delivery.fields)
                value = message.value()
            except DecodeError as exc:
                job_id = job_id_of(delivery.fields) or ""
                log.warning(
                    "stage %s: undecodable entry %s: %s", self.stage.name, delivery.entry_id, exc
                )
                outcomes.append(Outcome(delivery, job_id, Kind.DEAD, f"undecodable entry: {exc}"))
                continue
            if delivery.deliveries >= DELIVERY_CAP * self.settings.max_deliveries:
                reason = never_started(delivery.deliveries)
                outcomes.append(Outcome(delivery, message.job_id, Kind.DEAD, reason))
                continue
            if message.deadline is not None and message.deadline < now:
                outcomes.append(
                    Outcome(
                        delivery,
                        message.job_id,
                        Kind.EXPIRED,
                        "its deadline passed before a worker ran it",
                    )
                )
                continue
            candidates.append(_Item(delivery, message, value))
        if not candidates:
            return outcomes, []
        if new:
            for item in candidates:
                item.started = item.delivery.deliveries > 1
        items: list[_Item] = []
        for started in (False, True):
            group = [item for item in candidates if item.started is started]
            if group:
                outcomes += await self._start(group, items)
        return outcomes, items

    async def _start(self, candidates: list[_Item], items: list[_Item]) -> list[Outcome]:
        """START the candidates (NOTE them, if new): add those to run to ``items``; the
        outcomes of the others."""
        jobs = [(item.delivery, item.message.job_id) for item in candidates]
        if candidates[0].started:
            statuses = await self._persist("start", lambda: self.queue.start(jobs))
        else:
            statuses = await self._persist("note", lambda: self.queue.note(jobs))
        outcomes = []
        for item, status in zip(candidates, statuses, strict=True):
            if status is Start.RUN:
                items.append(item)
            elif status is Start.DEAD:
                reason = too_many_attempts(self.settings.max_deliveries)
                outcomes.append(Outcome(item.delivery, item.message.job_id, Kind.DEAD, reason))
            else:  # cancelled, finished, or its record is gone: nothing to run
                outcomes.append(Outcome(item.delivery, item.message.job_id, Kind.SKIP))
        return outcomes

    async def run_batch(self, items: list[_Item]) -> tuple[list[Outcome], float]:
        """Run admitted items: their outcomes, and when the model began. Those NOTE admitted
        (START did not mark them) are shown running if the batch runs RUNNING_AFTER_S."""
        started = time.time()
        noted = [item for item in items if not item.started]
        marks: list[asyncio.Task[None]] = []
        timer = None
        if noted:
            timer = asyncio.get_running_loop().call_later(
                RUNNING_AFTER_S,
                lambda: marks.append(asyncio.create_task(self._show_running(noted, started))),
            )
        clock = time.perf_counter()
        self.former.running(len(items))
        try:
            outputs = await self._run_isolating([item.value for item in items])
        finally:
            compute_s = time.perf_counter() - clock
            if timer is not None:
                timer.cancel()
            for mark in marks:  # (begun: it ends on its own)
                await mark
        self.former.observe(len(items), compute_s)
        self.processed += len(items)
        self.activity.record(
            len(items),
            compute_s,
            started - items[0].message.enqueued_at,
            started - items[-1].message.enqueued_at,
        )
        # The timings of a batch differ only in their queue wait: encode the rest once.
        shared = dumps(StageTiming(self.stage.name, 0.0, len(items), compute_s, started).to_dict())
        head, _, tail = shared.partition(b'"queue_wait_s":0.0')
        outcomes = []
        for item, output in zip(items, outputs, strict=True):
            wait = max(0.0, started - item.message.enqueued_at)
            outcome = self.hand_off(item, output)
            outcome.timing = b'%s"queue_wait_s":%r%s' % (head, wait, tail)
            outcomes.append(outcome)
        return outcomes, started

    async def _show_running(self, items: list[_Item], started: float) -> None:
        jobs = [(item.delivery.partition, item.message.job_id) for item in items]
        with self._io_log.guard():  # (only what a poll shows meanwhile: never worth a retry)
            await self.queue.mark_running(jobs, started)

    def hand_off(self, item: _Item, output: Any) -> Outcome:
        """Where one output goes: the route it names, the next stage(s), a fan-out's join, or
        the job's result."""
        delivery, job_id = item.delivery, item.message.job_id
        deadline = item.message.deadline
        if isinstance(output, BaseException):
            return Outcome(delivery, job_id, Kind.FAILED, _describe(output))
        targets: tuple[str, ...] = () if self.stage.routes else self.stage.next
        if isinstance(output, Route):
            try:
                targets = (self._resolve_route(output.to),)
            except BatchContractError as exc:
                return Outcome(delivery, job_id, Kind.FAILED, str(exc))
            output = output.value
        try:
            data = dumps(output)
        except TypeError as exc:
            return Outcome(delivery, job_id, Kind.FAILED, f"output cannot be encoded: {exc}")
        if self.stage.join is not None:
            return Outcome(
                delivery,
                job_id,
                Kind.JOIN,
                data,
                deadline=deadline,
                targets=(self.stage.join,),
                branch=self.stage.short_name,
                fan_in=self.stage.fan_in,
            )
        if not targets:
            return Outcome(delivery, job_id, Kind.DONE, data)
        return Outcome(delivery, job_id, Kind.NEXT, data, deadline=deadline, targets=targets)

    def _resolve_route(self, to: str) -> str:
        pipeline = self.stage.name.split(".", 1)[0]
        full = to if "." in to else f"{pipeline}.{to}"
        if full not in self.stage.routes:
            raise BatchContractError(
                f"stage {self.stage.name} routed to {to!r}, which is not among its routes "
                f"{list(self.stage.routes)}"
            )
        return full

    async def _run_isolating(self, values: list[Any]) -> list[Any]:
        """The handler's outputs; an item whose share of the batch raises gets the exception."""
        try:
            return await self._call(values)
        except BatchContractError as exc:
            return [exc] * len(values)
        except Exception as exc:
            if len(values) == 1:
                return [exc]
            log.info(
                "stage %s: batch of %d raised %s; splitting it to isolate the failing items",
                self.stage.name,
                len(values),
                type(exc).__name__,
            )
            middle = len(values) // 2
            return await self._run_isolating(values[:middle]) + await self._run_isolating(
                values[middle:]
            )

    async def _call(self, values: list[Any]) -> list[Any]:
        if self.handler.is_async:
            return await self.handler.call_batch(values)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, in_model_thread, self.handler.call_batch_sync, values
        )

    async def finish(self, outcomes: list[Outcome], started: float | None = None) -> None:
        """Hand off or end a batch's items (``started``: when the model began on it)."""
        if not outcomes:
            return
        # Safe to repeat: if a lost reply hid a success, the entries are no longer pending
        # on this consumer and the fence makes the retry a no-op.
        done = await self._persist("hand off", lambda: self.queue.finish(outcomes, started))
        for outcome, ok in zip(outcomes, done, strict=True):
            self.held.pop(outcome.delivery.key, None)
            if not ok:
                log.info(
                    "stage %s: entry %s was claimed by another worker; its result is theirs",
                    self.stage.name,
                    outcome.delivery.entry_id,
                )

    async def _persist(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Retry ``call`` while Redis is unreachable (it restarts; nothing is lost meanwhile)
        or out of memory (it frees as records expire). Once the worker is stopping, give up
        instead (_Abandon): what it holds stays pending."""
        while True:
            try:
                result = await call()
            except (*REDIS_DOWN, *REDIS_FULL) as exc:
                if self._stop.is_set():
                    raise _Abandon from exc
                self._io_log.failed(exc)  # once per outage, then rarely (not per retry)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(RETRY_S):
                        await self._stop.wait()
            else:
                self._io_log.succeeded()
                return result

    # -- liveness ----------------------------------------------------------------------------

    async def _heartbeat_loop(self, stop: asyncio.Event) -> None:
        interval = self.settings.heartbeat_interval_s
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await stop.wait()
            if stop.is_set():
                return
            with self._beat_log.guard():
                await self.beat()

    async def beat(self) -> None:
        """Keep this consumer's entries its own, and take over those of dead consumers."""
        await self.queue.touch(list(self.held.values()))
        # Claimed whatever the load (a standing backlog must not delay recovery), but not
        # while entries claimed earlier still wait for their turn.
        if not self._recovered:
            claimed, gone = await self.queue.claim(CLAIM_BATCHES * self.config.max_items)
            if gone:
                log.warning(
                    "stage %s: dropped %d pending entries whose payload was deleted",
                    self.stage.name,
                    gone,
                )
            if claimed:
                log.info(
                    "stage %s: claimed %d entries of a dead consumer", self.stage.name, len(claimed)
                )
                await self._recover(claimed)
        # Last, and on its own: the dashboard's figures must never hold up the claims above
        # (a full Redis refuses them, or their key's master is down in a cluster).
        with self._stats_log.guard():
            await self.activity.publish(self.queue.redis, self.queue.keys)


def in_model_thread(fn: Callable[..., T], *args: Any) -> T:
    """Call model code (in the model thread), under torch.inference_mode when torch is used."""
    torch = sys.modules.get("torch")
    if torch is None:
        return fn(*args)
    with torch.inference_mode():
        return fn(*args)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
