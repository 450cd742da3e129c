# Generated from queueing/client/aio.py by scripts/unasync: do not edit.
"""The blocking client: :class:`Client` and its job handle :class:`Job`.

Generated from :mod:`queueing.client.aio` (the asyncio twin) by ``scripts/unasync``: edit that
module, then run the script; ``scripts/check`` fails if this one has drifted.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import redis
import redis.cluster
import redis.exceptions

from queueing.chunks import (
    CHUNK,
    END,
    STREAM_BLOCK_MS,
    STREAM_READ_COUNT,
    Follower,
    Followers,
    StreamEvent,
    check_event_id,
    events_of,
)
from queueing.client.core import NOT_REPLICATED, SUBMIT_CHUNK, Core, SubmitPlan
from queueing.client.retry import Attempt, Backoff, outage_log
from queueing.cluster import SyncRedis, demoted, node_connection
from queueing.connection import REDIS_DOWN, broker_errors, connect
from queueing.errors import BatchlineError, JobError, ResultTimeout, UnknownJob
from queueing.jobs import JobRecord, JobStatus, Snapshot, job_error
from queueing.lanes import check_lane
from queueing.message import decode_result
from queueing.registry import PipelineSpec, lookup, parse_registry
from queueing.scripts import CANCEL, ORPHAN, SUBMIT, WATCH, SubmitCall
from queueing.settings import Settings
from queueing.waiters import RECHECK_S, Listener, Waiter


class Job:
    """A submitted job."""

    def __init__(self, client: Client, job_id: str, *, watched: bool = False) -> None:
        self.client = client
        self.id = job_id
        self._watched = watched
        """Whether the job's end wakes this client (it submitted it, or WATCHed it)."""

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    def info(self) -> JobRecord:
        """The job's record; UnknownJob if it does not exist (or expired)."""
        return (self.snapshot()).record()

    def snapshot(self) -> Snapshot:
        """The job's record as stored (undecoded); UnknownJob if there is none."""
        key = self.client.core.keys.job(self.id)
        for attempt in self.client._attempts():
            with attempt:
                raw = self.client.redis.hgetall(key)
        return self.client.core.snapshot(self.id, raw)

    def status(self) -> JobStatus:
        return (self.info()).status

    def cancel(self) -> JobStatus:
        return self.client.cancel(self.id)

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the job's result: JobFailed / JobExpired / JobCancelled if it has none,
        ResultTimeout if ``timeout`` seconds pass first (the job goes on). A tensor result is
        a numpy array."""
        return decode_result((self.ended(timeout)).outcome())

    def wait(self, timeout: float | None = None) -> JobRecord:
        """Wait until the job has ended and return its record (ResultTimeout if not)."""
        return (self.ended(timeout)).record()

    def ended(self, timeout: float | None = None) -> Snapshot:
        """Wait until the job has ended; the job as it ended (ResultTimeout if not)."""
        listener = self.client.listener()
        waiter = listener.register(self.id)
        try:
            limit = None if timeout is None else time.monotonic() + timeout
            if not self._watched and (self._watch()).finished:
                return self.snapshot()  # it ended before it was watched
            while (notice := waiter.notice) is None:
                remaining = None if limit is None else limit - time.monotonic()
                waiter.wait(RECHECK_S if remaining is None else min(remaining, RECHECK_S))
                if waiter.notice is None:
                    # Woken without a notice (the listener reconnected), or a while has
                    # passed: the record says whether the notice was lost.
                    found = self.client.recheck([self.id])
                    if found:
                        return found[0]
                    if limit is not None and time.monotonic() >= limit:
                        raise ResultTimeout(self.id, timeout or 0.0)
            return notice
        finally:
            listener.unregister(waiter)

    def events(self, *, after: str = "0") -> Iterator[StreamEvent]:
        """Follow the job's streamed outputs (see :meth:`Client.events`)."""
        return self.client.events(self.id, after=after)

    def _watch(self) -> JobStatus:
        """Have the job's end wake this client; its status now."""
        keys, args = self.client.core.watch_call(self.id)
        for attempt in self.client._attempts():  # (WATCH is idempotent)
            with attempt:
                reply = self.client._watch(keys=keys, args=args)
        if reply is None:
            raise UnknownJob(self.id)
        self._watched = True
        return JobStatus(reply.decode())


class Client:
    """Enqueue jobs and read their results, straight from Redis.

    ``Client()`` reads ``REDIS_URL`` and ``BATCHLINE_*`` from the environment; pass a
    :class:`Settings` or ``url=`` to choose. Use it as a context manager, or call ``close()``.

    Every call rides out a restart of Redis: it is retried, with a growing pause, for up to
    ``Settings.retry_s`` (``BATCHLINE_RETRY_S``) before it raises BrokerUnavailable; a submit
    sent again after a lost reply does not queue its jobs twice (see
    :mod:`queueing.client.retry`).
    """

    def __init__(self, settings: Settings | None = None, *, url: str | None = None) -> None:
        settings = settings or Settings.from_env()
        if url is not None:
            settings = settings.replace(redis_url=url)
        self.core = Core(settings)
        self.redis = connect(settings)
        self._submit = self.redis.register_script(SUBMIT)
        self._cancel = self.redis.register_script(CANCEL)
        self._watch = self.redis.register_script(WATCH)
        self._orphan = self.redis.register_script(ORPHAN)
        self._listener: Listener | None = None
        self._outage = outage_log()
        self._followers = Followers(settings.max_streams)
        self._follow_redis: SyncRedis | None = None
        """The pool of the followers' blocking reads (opened on the first): apart from the
        main one, so that open followers never starve submits, polls and health checks."""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._follow_redis is not None:
            self._follow_redis.close()
            self._follow_redis = None
        self.redis.close()

    def _attempts(self) -> Iterator[Attempt]:
        """The attempts of one call to Redis (see :mod:`queueing.client.retry`): another after
        each that met an outage, until ``retry_s`` have passed (then BrokerUnavailable)."""
        backoff = Backoff(self.core.settings.retry_s)
        attempt = Attempt(1)
        while True:
            yield attempt
            if attempt.error is None:
                self._outage.succeeded()
                return
            delay = backoff.pause(attempt.error)  # raises BrokerUnavailable once time is up
            self._outage.failed(attempt.error)
            time.sleep(delay)
            attempt = Attempt(attempt.number + 1)

    def listener(self) -> Listener:
        """This client's wake-up listener, subscribed."""
        if self._listener is not None and self._listener.ready:
            return self._listener
        if self._listener is None:
            self._listener = Listener(self.redis, self.core.channels)
        with broker_errors():
            self._listener.start()
        return self._listener

    @property
    def listening(self) -> bool:
        """Whether the wake-up listener has subscribed."""
        return self._listener is not None and self._listener.ready

    def follower(self) -> Follower:
        """A place for one reader of a chunk stream (pass it to :meth:`events`, which gives it
        back when it stops): TooManyStreams if ``Settings.max_streams`` readers follow streams
        already. Take it before doing anything a refusal should not leave done."""
        return self._followers.take()

    @property
    def following(self) -> int:
        """How many readers of chunk streams hold a place now."""
        return len(self._followers)

    def _follow_client(self) -> SyncRedis:
        if self._follow_redis is None:
            # One connection per follower at most (each has one read in flight): as large as
            # their bound, so a follower never waits for one.
            self._follow_redis = connect(
                self.core.settings, max_connections=self.core.settings.max_streams
            )
        return self._follow_redis

    def pipelines(self, *, refresh: bool = True) -> dict[str, PipelineSpec]:
        """The registered pipelines by name."""
        if refresh or not self.core.specs:
            for attempt in self._attempts():
                with attempt:
                    raw = self.redis.hgetall(self.core.keys.registry)
            self.core.specs = parse_registry(raw)
        return self.core.specs

    def pipeline(self, name: str) -> PipelineSpec:
        """A registered pipeline (UnknownPipeline if there is none of that name)."""
        if name not in self.core.specs:
            self.pipelines()
        return lookup(self.core.specs, name)

    def submit(
        self,
        pipeline: str,
        input: Any,
        *,
        timeout_s: float | None = None,
        deadline: float | None = None,
        idempotency_key: str | None = None,
        owner: str | None = None,
        result_ttl_s: float | None = None,
        webhook: str | None = None,
        priority: str | None = None,
    ) -> Job:
        """Enqueue one input. ``timeout_s`` (from now) or ``deadline`` (unix seconds) bound
        when a worker may still start it; ``idempotency_key`` makes retries return the same
        job (the same key with another input raises IdempotencyConflict); ``result_ttl_s``
        is how long the job is kept once it has ended (default: BATCHLINE_RESULT_TTL_S);
        ``webhook``: an http(s) URL the job's document is POSTed to, signed, when it ends
        (see :mod:`queueing.webhooks`: it needs ``batchline notifier`` and an rq worker);
        ``priority``: ``"high"``, ``"normal"`` (default) or ``"low"``, the lane the job
        waits in at every stage (see :mod:`queueing.lanes`; ValueError for another)."""
        jobs = self.submit_many(
            pipeline,
            [input],
            timeout_s=timeout_s,
            deadline=deadline,
            idempotency_keys=[idempotency_key],
            owner=owner,
            result_ttl_s=result_ttl_s,
            webhook=webhook,
            priority=priority,
        )
        return jobs[0]

    def submit_many(
        self,
        pipeline: str,
        inputs: Iterable[Any],
        *,
        timeout_s: float | None = None,
        deadline: float | None = None,
        idempotency_keys: Sequence[str | None] | None = None,
        owner: str | None = None,
        result_ttl_s: float | None = None,
        webhook: str | None = None,
        priority: str | None = None,
    ) -> list[Job]:
        """Enqueue several inputs in one round trip, each its own job; all or none (QueueFull)
        within a partition (inputs without an idempotency key share one). ``priority``: their
        lane, as for :meth:`submit`."""
        self.listener()  # subscribed before anything can finish
        plan = SubmitPlan(self.core)
        plan.add(
            self.pipeline(pipeline),
            list(inputs),
            timeout_s=timeout_s,
            deadline=deadline,
            idempotency_keys=idempotency_keys,
            owner=owner,
            result_ttl_s=result_ttl_s,
            webhook=webhook,
            priority=priority,
        )
        (ids,) = self.send(plan)
        if isinstance(ids, Exception):
            raise ids
        return [Job(self, job_id, watched=created) for job_id, created in ids]

    def send(self, plan: SubmitPlan) -> list[list[tuple[str, bool]] | Exception]:
        """Run a plan's SUBMIT calls in one round trip; per request, its jobs (id, created)
        or the error it met. The listener must be subscribed first.

        Sent again after an outage, the calls say so: a job an earlier attempt queued (its
        reply was lost) is answered as existing, not queued twice."""
        if isinstance(self.redis, redis.cluster.RedisCluster):
            # A cluster pipeline runs no scripts: one call per partition, each atomic on its
            # master; an error (a master unreachable, or full) fails that call's requests only.
            replies: list[Any] = []
            unreplicated: dict[int, str] = {}
            for index, call in enumerate(plan.calls):
                try:
                    reply, replicated = self._send_to_master(call)
                except BatchlineError as exc:
                    reply, replicated = exc, True
                replies.append(reply)
                if not replicated:
                    unreplicated[index] = NOT_REPLICATED
            return plan.results(replies, unreplicated)
        not_synced: dict[int, str] = {}
        for attempt in self._attempts():
            with attempt:
                if len(plan.calls) == 1:  # the usual case: no pipeline, no SCRIPT EXISTS first
                    keys, args = plan.calls[0].pack(retry=attempt.retry)
                    replies = [self._submit(keys=keys, args=args)]
                else:
                    pipe = self.redis.pipeline(transaction=False)
                    for call in plan.calls:
                        keys, args = call.pack(retry=attempt.retry)
                        self._submit(keys=keys, args=args, client=pipe)
                    replies = pipe.execute(raise_on_error=False)
                    for reply in replies:  # (a server loading its data answers each call so)
                        if isinstance(reply, REDIS_DOWN):
                            raise reply
                not_synced = self._wait_for_aof(len(plan.calls))
        return plan.results(replies, not_synced)

    def _send_to_master(self, call: SubmitCall) -> tuple[Any, bool]:
        """One SUBMIT call in a cluster, retried through a failover of its master: its reply,
        and whether a replica has it (always, for a submit that is not durable)."""
        for attempt in self._attempts():
            with attempt:
                if self.core.waitaof:
                    reply, replicated = self._submit_replicated(call, attempt.retry)
                else:
                    keys, args = call.pack(retry=attempt.retry)
                    reply, replicated = self._submit(keys=keys, args=args), True
        return reply, replicated

    def _wait_for_aof(self, calls: int) -> dict[int, str]:
        """A durable submit on a standalone server: WAITAOF; the calls not known to be on
        disk (a cluster's waits for a replica in :meth:`_submit_replicated` instead)."""
        if self.core.waitaof and not isinstance(self.redis, redis.cluster.RedisCluster):
            try:
                reply = self.redis.execute_command("WAITAOF", 1, 0, 5000)
            except redis.exceptions.ResponseError as exc:
                self.core.waitaof_failed(exc)
            else:
                return self.core.not_synced(reply, calls)
        return {}

    def _submit_replicated(self, call: SubmitCall, retry: bool) -> tuple[Any, bool]:
        """A durable submit in a cluster: the SUBMIT call, then WAIT on the same connection
        to the partition's master, so that it returns once a replica has the jobs (the replica
        a failover promotes). A slot that moved meanwhile refreshes the client's view of the
        cluster and retries (the retry flag makes that safe)."""
        assert isinstance(self.redis, redis.cluster.RedisCluster)
        keys, args = call.pack(retry=retry)
        master = node_connection(self.redis, keys[0])
        try:
            reply = self._submit(keys=keys, args=args, client=master)
            replicas = master.execute_command("WAIT", 1, 5000)
        except redis.exceptions.AskError as exc:  # (MOVED too)
            self.redis.nodes_manager.initialize()
            raise redis.exceptions.TryAgainError(f"the partition moved: {exc}") from exc
        except redis.exceptions.ResponseError as exc:
            if not demoted(exc):
                raise
            # A master killed and restarted serves as one until it learns that its replica
            # was promoted: what it took meanwhile is dropped when it syncs from the new
            # master, so the submit is not confirmed; it is sent again there (safely: retry).
            self.redis.nodes_manager.initialize()
            raise redis.exceptions.TryAgainError(f"the master was demoted: {exc}") from exc
        except REDIS_DOWN:
            # The master may be gone (a failover): a keyed read through the cluster client
            # (which follows a failover by itself) refreshes its view of the slots, so the
            # retry connects to the promoted replica.
            with contextlib.suppress(*REDIS_DOWN, redis.exceptions.RedisClusterException):
                self.redis.exists(keys[0])
            raise
        finally:
            master.close()
        return reply, int(replicas) >= 1

    def stream(
        self,
        pipeline: str,
        input: Any,
        *,
        timeout_s: float | None = None,
        idempotency_key: str | None = None,
        result_ttl_s: float | None = None,
        priority: str | None = None,
    ) -> Iterator[StreamEvent]:
        """Submit one input and follow its streamed outputs: ``chunk`` events (``.value``), a
        ``restart`` if a worker died mid-stream and another runs the job again (drop the
        chunks read so far), until the job is done; a job that ends without a result raises
        its JobError. Each event has the job's id and its own id, to resume from with
        :meth:`events` (see :mod:`queueing.chunks`). TooManyStreams, before anything is
        submitted, if this client follows ``Settings.max_streams`` streams already."""
        follower = self.follower()
        try:
            job = self.submit(
                pipeline,
                input,
                timeout_s=timeout_s,
                idempotency_key=idempotency_key,
                result_ttl_s=result_ttl_s,
                priority=priority,
            )
        except BaseException:
            follower.release()
            raise
        for event in self.events(job.id, follower=follower):  # noqa: RUF100, UP028 (sync twin)
            yield event

    def events(
        self,
        job_id: str,
        *,
        after: str = "0",
        ends: bool = False,
        follower: Follower | None = None,
    ) -> Iterator[StreamEvent]:
        """A job's streamed outputs after the event id ``after`` ("0": from the start), in
        order: ``chunk`` and ``restart`` events; the iteration stops when the job is done, and
        raises its JobError (JobFailed, JobCancelled, JobExpired) if it ended without a result;
        UnknownJob if there is no such job (or it expired). The job of a pipeline that does not
        stream yields its result as one chunk (with no id to resume from). ``ends``: yield the
        ``end`` event last instead (whatever the job's status; its id is "" if the job ended
        without writing one), and raise nothing for the job's outcome.

        ``after`` must be ``<ms>`` or ``<ms>-<seq>``, each part at most 2**64-1 (InvalidEventId
        if not). A reader holds a place among this client's followers (``follower``, from
        :meth:`follower`; else one is taken: TooManyStreams past ``Settings.max_streams``) until
        it stops; its blocking reads use the client's pool for followers, not the main one.

        Reads block at most STREAM_BLOCK_MS at a time; in between, the job's status is read,
        so a reader never hangs on a job that ended without an ``end`` entry (cancelled while
        queued, dead-lettered)."""
        if follower is None:
            follower = self.follower()
        try:
            job = Job(self, self.core.check_job_id(job_id))
            cursor = check_event_id(after)
            key = self.core.keys.chunks(job.id)
            reader = self._follow_client()
            ended = None
            while True:
                for attempt in self._attempts():
                    with attempt:
                        reply = reader.xread(
                            {key: cursor},
                            count=STREAM_READ_COUNT,
                            block=None if ended is not None else STREAM_BLOCK_MS,
                        )
                events = events_of(job.id, reply)
                for event in events:
                    cursor = event.id
                    if event.kind == END:
                        if ends:
                            yield event
                        elif event.status != JobStatus.DONE:
                            status = JobStatus(event.status or JobStatus.FAILED)
                            raise job_error(job.id, status, event.error, None)
                        return
                    yield event
                if events:
                    continue
                if ended is not None:
                    # Ended with no end entry: never streamed (or it ended before a worker ran it).
                    done = ended.status is JobStatus.DONE
                    if cursor == "0" and done:
                        yield StreamEvent(job.id, "", CHUNK, decode_result(ended.outcome()), 0)
                    if ends:
                        error = None if done else ended.value.decode(errors="replace")
                        yield StreamEvent(job.id, "", END, status=str(ended.status), error=error)
                    elif not done:
                        raise ended.error()
                    return
                snapshot = job.snapshot()
                if snapshot.status.finished:
                    ended = snapshot  # read once more, without blocking: what it wrote last
        finally:
            follower.release()

    def job(self, job_id: str) -> Job:
        """A handle on an existing job (UnknownJob if there is none)."""
        job = Job(self, self.core.check_job_id(job_id))
        job.info()
        return job

    def cancel(self, job_id: str) -> JobStatus:
        """Cancel a job: a queued one never reaches a model. Returns the status after."""
        keys, args = self.core.cancel_call(job_id)
        for attempt in self._attempts():  # (CANCEL is idempotent)
            with attempt:
                reply = self._cancel(keys=keys, args=args)
        return self.core.cancel_reply(job_id, reply)

    def recheck(self, job_ids: Sequence[str]) -> list[Snapshot]:
        """Read the records of jobs waited on without a notice; those that have ended. A job
        live for longer than the visibility timeout is checked for a deleted stream entry
        (which fails it: see ``queueing/lua/orphan.lua``)."""
        for attempt in self._attempts():
            with attempt:
                pipe = self.redis.pipeline(transaction=False)
                for job_id in job_ids:
                    pipe.hgetall(self.core.keys.job(job_id))
                raws = pipe.execute()
        ended = []
        for job_id, raw in zip(job_ids, raws, strict=True):
            snapshot = self.core.snapshot(job_id, raw)
            if snapshot.status.finished:
                ended.append(snapshot)
                continue
            call = self.core.orphan_call(snapshot)
            if call is not None:
                for attempt in self._attempts():  # (ORPHAN is idempotent)
                    with attempt:
                        failed = self._orphan(keys=call[0], args=call[1])
                if failed:
                    ended.append(Job(self, job_id).snapshot())
        return ended

    def map(
        self,
        pipeline: str,
        inputs: Iterable[Any],
        *,
        max_in_flight: int = 1000,
        timeout_s: float | None = None,
        return_errors: bool = False,
        cancel_on_close: bool = False,
        priority: str | None = None,
    ) -> Iterator[Any]:
        """Submit every input, keeping at most ``max_in_flight`` unfinished, and yield the
        results in input order. A job that failed raises its JobError when its turn comes
        (``return_errors``: the JobError is yielded in its place, and the map goes on).
        ``cancel_on_close``: when the caller stops early (closes the iterator), the jobs still
        in flight are cancelled rather than left to run. ``priority``: the jobs' lane, as for
        :meth:`submit`.

        A restart of Redis shorter than ``retry_s`` only costs time: each input is still one
        job and yields one result, in order. A longer outage raises BrokerUnavailable; the
        jobs in flight then go on without a caller."""
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        check_lane(priority)
        listener = self.listener()
        source = iter(inputs)
        in_flight: list[Waiter] = []
        head = 0
        refill_at = max(1, min(SUBMIT_CHUNK, max_in_flight) // 2)
        exhausted = False
        try:
            while True:
                room = max_in_flight - (len(in_flight) - head)
                if not exhausted and room >= refill_at:
                    chunk = list(itertools.islice(source, min(room, SUBMIT_CHUNK)))
                    exhausted = not chunk
                    if chunk:
                        jobs = self.submit_many(
                            pipeline, chunk, timeout_s=timeout_s, priority=priority
                        )
                        in_flight += [listener.register(job.id) for job in jobs]
                        continue
                if head == len(in_flight):
                    break
                waiter = in_flight[head]
                if waiter.notice is None:
                    waiter.wait(RECHECK_S)
                if waiter.notice is None:
                    # No notice within RECHECK_S (or the listener reconnected): re-read the
                    # records of every job in flight that has none.
                    silent = {w.job_id: w for w in in_flight[head:] if w.notice is None}
                    for snapshot in self.recheck(list(silent)):
                        silent[snapshot.job_id].wake(snapshot)
                    continue
                head += 1
                listener.unregister(waiter)
                if head > SUBMIT_CHUNK:
                    del in_flight[:head]
                    head = 0
                try:
                    value = decode_result(waiter.notice.outcome())
                except JobError as exc:
                    if not return_errors:
                        raise
                    value = exc
                yield value
        finally:
            unfinished = [w.job_id for w in in_flight[head:] if w.notice is None]
            for waiter in in_flight[head:]:
                listener.unregister(waiter)
            if cancel_on_close:
                for job_id in unfinished:
                    self.cancel(job_id)
