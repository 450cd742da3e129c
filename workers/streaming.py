"""Streaming stages: a batch handler that outputs one chunk per item per step, each job's
chunks written to its own stream as they come (see :mod:`queueing.chunks`).

Two handler shapes, both ``@batch``-decorated, sync or async:

- a **generator** (Ray Serve's streaming batch shape): called once per batch with its inputs,
  each ``yield`` is one step, a list aligned with the batch, one chunk per item;
  ``StopIteration`` (the class or an instance) in an item's position ends that item, which
  gets nothing more; returning ends every item still streaming. The batch runs until all its
  items have ended, then the next one starts (static batches). The value of each ``yield``
  is the set of positions of the items stopped since the previous step (cancelled, or taken
  over by another worker; empty most of the time): a generator may skip their work
  (``gone = yield outputs``), one that ignores it computes them until its batch ends::

      @batch(max_batch_size=8)
      def generate(prompts):
          for step in range(longest):
              yield [token(p, step) if step < length(p) else StopIteration for p in prompts]

- a **step handler**, ``continuous=True`` (continuous batching): called once per step with
  the items still running, as :class:`Slot` s (``input``; ``state``, which the handler keeps
  there between steps; ``steps``, how many chunks it has had), it returns one chunk (or
  ``StopIteration``) per slot. An item that ends leaves at once and a waiting item takes its
  place at the next step, within ``max_batch_size`` (count, or cost with ``batch_size_fn``)::

      @batch(max_batch_size=8, continuous=True)
      def step(slots):
          return [next_token(s) if s.steps < length(s.input) else StopIteration for s in slots]

A job's result (what ``result()`` and a poll answer) is the list of its chunks. An exception
in an item's position fails that item; a handler that raises fails every item of the step
(chunks already streamed cannot be taken back, so a batch is not split to isolate the culprit).
A cancelled job stops at its next step: a step handler never gets it again; a generator is
told (the value of its ``yield``), and its batch is closed as soon as none of its items is
streaming. A streaming stage is its pipeline's
last (the pipeline refuses one that hands on).

Every step is one EMIT per partition (:class:`~queueing.chunks.ChunkWriter`): the chunks of all
the items, the ends of those that end and the ack of their entries, fenced on the entries
still being this consumer's. A job whose worker died mid-stream is claimed and run again from
the start: its stream gets a ``restart`` entry before the new attempt's first chunk.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from queueing.chunks import ChunkWriter
from queueing.jobs import StageTiming
from queueing.message import dumps
from queueing.scripts import Emitted
from queueing.settings import Settings
from queueing.streams import DeliveryKey, StageQueue
from workers.batching import BatchedHandler
from workers.loop import StageLoop, _Batch, _describe, _Item, in_model_thread
from workers.stage import Stage

log = logging.getLogger(__name__)

_FINISHED = object()
"""What ``next`` answers for a generator that has returned."""


@dataclass(eq=False)
class Slot:
    """One running item, as a step handler (``continuous=True``) gets it."""

    input: Any
    state: Any = None
    """The handler's own, kept between steps (None at the first)."""
    steps: int = 0
    """How many chunks the item has had."""


@dataclass(eq=False)
class _Running:
    item: _Item
    slot: Slot
    position: int
    """Its place in its generator's batch."""
    started: float
    batch_size: int
    chunks: list[bytes] = field(default_factory=list)
    compute_s: float = 0.0
    first: bool = True
    """Nothing written yet for this attempt (a re-run's first write is a restart)."""


def is_end(output: Any) -> bool:
    """Whether a step's output for one item says that the item has ended."""
    return output is StopIteration or isinstance(output, StopIteration)


class StreamingLoop(StageLoop):
    """Runs a streaming stage (see the module doc): the read loop of :class:`StageLoop`; steps
    instead of batches."""

    def __init__(
        self,
        stage: Stage,
        handler: BatchedHandler[Any],
        queue: StageQueue,
        settings: Settings,
        *,
        burst: bool = False,
    ) -> None:
        super().__init__(stage, handler, queue, settings, burst=burst)
        self.writer = ChunkWriter(queue.redis, settings, stage.name, queue.consumer)
        self.running: list[_Running] = []
        self.waiting: deque[_Item] = deque()
        """Started items that wait for a place in the running batch (held: touched by
        heartbeats)."""
        self._generator: Any = None
        self._generator_size = 0
        self._gone: set[int] = set()
        """Positions in the generator's batch of items stopped since its last step (cancelled,
        or claimed by another worker): sent to it as the value of its ``yield``."""
        self._started = False
        self._suspects: set[DeliveryKey] = set()
        """The suspects taken and not yet ended (see :meth:`StageLoop._recover`)."""
        self._deferred: _Batch | None = None
        """A batch of suspects taken while other items ran: it starts once they have ended."""

    @property
    def continuous(self) -> bool:
        return self.handler.streaming == "step"

    async def _consume(self) -> None:
        closed = False
        while True:
            if self._deferred is not None and not self.running:
                batch, self._deferred = self._deferred, None
                await self._start_batch(batch)
            elif not closed and self._wants_more():
                closed = await self._take_batch(block=not self.running)
            self._refill()
            if self.running:
                await self._step()
            elif closed and not self.waiting and self._deferred is None:
                return

    def _wants_more(self) -> bool:
        """Whether to take a batch from the read loop now: when nothing runs (waiting for
        one), or, continuous, when there is room and nothing waits (without waiting). Never
        while suspects run or wait for the running items to end: a suspect's crash must take
        down no other item (see :meth:`StageLoop._recover`)."""
        if self.waiting or self._suspects or self._deferred is not None:
            return False
        if not self.running:
            return True
        return self.continuous and len(self.running) < self.config.max_items

    async def _take_batch(self, *, block: bool) -> bool:
        """Start the read loop's next batch, its items to wait for a place; True once the
        read loop has no more."""
        if not block and self._inbox.empty():
            return False
        batch = await self._inbox.get()
        if batch is None:
            return True
        if batch.suspect and self.running:
            # Suspects do not join running items: they start once those have ended.
            self._deferred = batch
            return False
        await self._start_batch(batch)
        return False

    async def _start_batch(self, batch: _Batch) -> None:
        """Admit a batch from the read loop: its items wait for a place."""
        outcomes, items = await self.admit(batch.deliveries)
        await self.finish(outcomes)
        self.waiting.extend(items)
        if batch.suspect:
            # The read loop reads nothing more until these have run (see _put_recovered).
            self._suspects.update(item.delivery.key for item in items)
            if not self._suspects:
                self._suspects_ran.set()

    def _refill(self) -> None:
        """Waiting items join the running batch: in a new batch when none runs; continuous,
        into the places of those that ended, within the count or cost bound."""
        if not self.waiting or (self.running and not self.continuous):
            return
        values = [running.slot.input for running in self.running]
        room = self.config.take([*values, *(item.value for item in self.waiting)]) - len(values)
        if room <= 0:
            return
        joining = [self.waiting.popleft() for _ in range(room)]
        now = time.time()
        size = len(self.running) + len(joining)
        if not self.continuous:
            self._generator = self.handler.call_raw([item.value for item in joining])
            self._generator_size = len(joining)
            self._gone, self._started = set(), False
        self.running += [
            _Running(item, Slot(item.value), position, now, size)
            for position, item in enumerate(joining)
        ]

    async def _step(self) -> None:
        """Run one step of the running items and write it (EMIT); drop those that ended."""
        running = list(self.running)
        clock = time.perf_counter()
        try:
            outputs = await self._outputs(running)
        except Exception as exc:
            log.info(
                "stage %s: streaming handler raised %s; failing the %d items of its step",
                self.stage.name,
                type(exc).__name__,
                len(running),
            )
            outputs = [exc] * len(running)
        elapsed = time.perf_counter() - clock
        self.activity.record(len(running), elapsed, 0.0, 0.0)
        steps = [
            self._emitted(r, output, elapsed) for r, output in zip(running, outputs, strict=True)
        ]
        streams = [(r.item.delivery.partition, r.item.delivery.lane) for r in running]
        # (one time for every try: a retry knows the ends it wrote before by it)
        now = time.time()
        answers = await self._persist("emit", lambda: self.writer.emit(streams, steps, now=now))
        suspects = bool(self._suspects)
        for r, step, answer in zip(running, steps, answers, strict=True):
            r.first = False
            if answer == "ok" and not step.end:
                continue
            self.running.remove(r)
            self.held.pop(r.item.delivery.key, None)
            self._suspects.discard(r.item.delivery.key)
            if answer in ("ok", "ended"):  # (ended: a retry's answer for its own end)
                self.processed += 1
                continue
            self._gone.add(r.position)
            if answer == "fenced":
                log.info(
                    "stage %s: entry %s was claimed by another worker; its stream is theirs",
                    self.stage.name,
                    r.item.delivery.entry_id,
                )
        if suspects and not self._suspects:
            self._suspects_ran.set()
        if not self.running:
            await self._close_generator()

    async def _outputs(self, running: list[_Running]) -> list[Any]:
        """One step's output per running item."""
        loop = asyncio.get_running_loop()
        if self.continuous:
            slots = [r.slot for r in running]
            if self.handler.is_async:
                outputs = await self.handler.call_raw(slots)
            else:
                call = self.handler.call_raw
                outputs = await loop.run_in_executor(self._executor, in_model_thread, call, slots)
            return self.handler.check(slots, outputs)
        # The first step starts the generator (sends None); each later one sends the
        # positions of the items stopped since (most generators ignore it: `yield [...]`).
        gone = frozenset(self._gone) if self._started else None
        self._gone, self._started = set(), True
        if self.handler.is_async:
            try:
                step = await self._generator.asend(gone)
            except StopAsyncIteration:
                step = _FINISHED
        else:
            step = await loop.run_in_executor(
                self._executor, in_model_thread, _send, self._generator, gone
            )
        if step is _FINISHED:
            return [StopIteration] * len(running)
        step = self.handler.check(range(self._generator_size), step)
        return [step[r.position] for r in running]

    def _emitted(self, r: _Running, output: Any, elapsed: float) -> Emitted:
        """What EMIT writes for one item's step."""
        r.compute_s += elapsed
        delivery = r.item.delivery
        base = dataclasses.replace(
            self.writer.item(delivery.partition, delivery.entry_id, r.item.message.job_id),
            first=r.first,
        )
        if is_end(output):
            result = b"[" + b",".join(r.chunks) + b"]"
            return dataclasses.replace(base, end="done", value=result, timing=self._timing(r))
        if isinstance(output, BaseException):
            return dataclasses.replace(
                base, end="failed", value=_describe(output), timing=self._timing(r)
            )
        try:
            data = dumps(output)
        except TypeError as exc:
            reason = f"output cannot be encoded: {exc}"
            return dataclasses.replace(base, end="failed", value=reason, timing=self._timing(r))
        seq = len(r.chunks)
        r.chunks.append(data)
        r.slot.steps += 1
        return dataclasses.replace(base, seq=seq, data=data)

    def _timing(self, r: _Running) -> bytes:
        wait = max(0.0, r.started - r.item.message.enqueued_at)
        timing = StageTiming(self.stage.name, wait, r.batch_size, r.compute_s, r.started)
        return dumps(timing.to_dict())

    async def _close_generator(self) -> None:
        """Stop the batch's generator (its items have all ended, or were cancelled)."""
        generator, self._generator = self._generator, None
        if generator is None:
            return
        try:
            if self.handler.is_async:
                await generator.aclose()
            else:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(self._executor, generator.close)
        except Exception as exc:  # (its items have their outcomes already)
            log.warning("stage %s: closing the batch's generator raised %r", self.stage.name, exc)


def _send(generator: Any, value: Any) -> Any:
    """The generator's next step (``_FINISHED`` once it has returned: a StopIteration cannot
    cross into the event loop's future)."""
    try:
        return generator.send(value)
    except StopIteration:
        return _FINISHED
