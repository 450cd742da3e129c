"""A master SIGKILLed under load, with a replica per master: the replica is promoted, the
client, a gateway, the workers and their waits follow it, and with durable submits (WAIT for a replica)
no accepted job is lost.

While the promoted master has no replica (its old master is down), a durable submit to its
partitions raises NotDurable: the job is queued there, but nothing would survive a second
failure. Once the old master is back (as the new one's replica), they are durable again."""

from __future__ import annotations

import threading
import time

import redis.exceptions

from queueing.client import Client
from queueing.cluster import demoted
from queueing.errors import BatchlineError, NotDurable
from queueing.keys import Keys, partition_of
from queueing.server import EmbeddedCluster
from queueing.settings import Settings
from tests.api.conftest import LiveGateway
from tests.cluster.conftest import PARTITIONS, wait_served
from tests.conftest import start_worker


def test_a_master_killed_under_load_loses_no_durably_accepted_job(
    replicated: EmbeddedCluster,
) -> None:
    settings = Settings(
        redis_url=replicated.url,
        partitions=PARTITIONS,
        visibility_timeout_s=2.0,
        block_ms=200,
        durable_submit=True,
        retry_s=30.0,
        pipelines=("pipelines.examples.echo",),
    )
    workers = [start_worker(settings, "echo", BATCHLINE_DEVICE="cpu") for _ in range(2)]
    accepted: list[tuple[str, int]] = []
    accepted_at: list[float] = []
    refused: list[str] = []
    unreplicated: list[tuple[str, int]] = []
    stop = threading.Event()
    answers: list[int] = []

    def http_load(gateway: LiveGateway) -> None:
        """Synchronous calls through the gateway: 200 with the right result, or a 503 while
        the partition's master is away (the caller is told to retry) or has no replica yet
        (``not_durable``: queued, with its id), nothing else."""
        with gateway.client() as http:
            n = 0
            while not stop.is_set():
                answer = http.post("/v1/pipelines/echo", json={"input": n})
                answers.append(answer.status_code)
                if answer.status_code == 200:
                    assert answer.json()["result"] == n
                elif answer.json()["error"] == "not_durable":  # (queued: it must end)
                    unreplicated.append((answer.json()["ids"][0], n))
                n += 1

    def load(client: Client) -> None:
        n = 0
        while not stop.is_set():
            try:
                job = client.submit("echo", n)
            except NotDurable as exc:  # (queued, without a replica: it must still end)
                unreplicated.append((exc.job_ids[0], n))
            except BatchlineError as exc:  # (refused: the caller knows it was not accepted)
                refused.append(type(exc).__name__)
            else:
                accepted.append((job.id, n))
                accepted_at.append(time.monotonic())
            n += 1

    gateway: LiveGateway | None = None
    try:
        wait_served(settings, ["echo"], *workers)
        gateway = LiveGateway(settings).start()
        caller = threading.Thread(target=http_load, args=(gateway,))
        caller.start()
        with Client(settings) as client:
            submitter = threading.Thread(target=load, args=(client,))
            submitter.start()
            time.sleep(1.5)
            victim = replicated.master_of(Keys().stats(0))
            before = len(accepted)
            killed_at = time.monotonic()
            replicated.kill(victim)
            limit = killed_at + 30
            while not replicated.healthy():
                assert time.monotonic() < limit, "no replica was promoted"
                time.sleep(0.05)
            promoted_s = time.monotonic() - killed_at
            # The old master comes back as the promoted one's replica: durable submits to its
            # partitions are accepted again.
            replicated.restart(victim)
            while not any(
                partition_of(job_id) == 0 and at > killed_at
                for (job_id, _), at in zip(accepted, accepted_at, strict=False)
            ):
                assert time.monotonic() < limit, "partition 0 never took a durable submit again"
                time.sleep(0.05)
            recovered_s = min(
                at - killed_at
                for (job_id, _), at in zip(accepted, accepted_at, strict=False)
                if partition_of(job_id) == 0 and at > killed_at
            )
            time.sleep(1.0)
            served_before = len(answers)
            while answers[served_before:].count(200) < 2 * PARTITIONS:
                assert time.monotonic() < limit + 30, "the gateway did not serve again"
                time.sleep(0.05)
            stop.set()
            submitter.join(60)
            caller.join(60)
            assert set(answers) <= {200, 503}, sorted(set(answers))
            after = len(accepted) - before
            lost = []
            for job_id, n in accepted + unreplicated:
                try:
                    assert client.job(job_id).result(timeout=60) == n
                except BatchlineError as exc:
                    lost.append((job_id, type(exc).__name__))
            print(
                f"\nfailover: accepted {len(accepted)} ({after} after the kill), queued without "
                f"a replica {len(unreplicated)}, refused {len(refused)} {sorted(set(refused))}, "
                f"lost {len(lost)}; replica promoted in {promoted_s:.2f} s; the killed "
                f"partition took durable submits again after {recovered_s:.2f} s; gateway: "
                f"{answers.count(200)} answered 200, {answers.count(503)} 503"
            )
            assert lost == []
    finally:
        stop.set()
        if gateway is not None:
            gateway.stop()
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(30)


def test_a_demoted_master_is_recognised_by_what_it_answers() -> None:
    """What a master that learnt it was replaced answers a durable submit: the submit is sent
    again to the promoted one (what the old one took is dropped when it syncs from it)."""
    assert demoted(redis.exceptions.ResponseError("WAIT cannot be used with replica instances."))
    assert demoted(redis.exceptions.ReadOnlyError("You can't write against a read only replica."))
    assert not demoted(redis.exceptions.ResponseError("NOSCRIPT No matching script."))
