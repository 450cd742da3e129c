"""The three example compositions end to end, one real worker process per stage: the seed's
conditional composition (``composed``), a fan-out ensemble of two torch models with a join
(``ensemble``), and a three-stage chain (``chain``). Expected results are computed here, in
this process, from the same seeded networks."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
import redis

from pipelines.examples import chain, composed, ensemble
from pipelines.examples.chain import LABELS
from pipelines.examples.mlp import FEATURES, build_mlp
from queueing.client import Client
from queueing.jobs import JobStatus
from queueing.settings import Settings
from tests.composition.helpers import assert_drained, register, wait_finished
from tests.support import Workers

# Torch workers take a few seconds to start on a small machine.
WAIT_S = 60


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _vectors(n: int, seed: int) -> list[list[float]]:
    rng = random.Random(seed)
    return [[round(rng.uniform(-2, 2), 3) for _ in range(FEATURES)] for _ in range(n)]


def test_composed_routes_high_scores_through_model_two(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    stages = ["composed.model_one", "composed.model_two"]
    register(settings, composed)
    for name in stages:
        workers.start(name)
    inputs = [[1.0, 2.0, 3.0], [-1.0, -2.0], [0.0], [0.5, -0.4], [-0.1, 0.05], [4.0]]
    jobs = client.submit_many("composed", [{"data": data} for data in inputs])
    records = wait_finished(jobs, WAIT_S)

    assert [r.status for r in records] == [JobStatus.DONE] * len(inputs), [r.error for r in records]
    routed = 0
    for data, record in zip(inputs, records, strict=True):
        mean = sum(data) / len(data)
        if _sigmoid(mean) > 0.5:
            routed += 1
            # As the seed: the score that decided the route (model one's), in both branches.
            assert record.result == {"model_used": 2, "score": pytest.approx(_sigmoid(mean))}, data
            assert [t.stage for t in record.timings] == stages, data
        else:
            assert record.result == {"model_used": 1, "score": pytest.approx(_sigmoid(mean))}, data
            assert [t.stage for t in record.timings] == stages[:1], data
    assert 0 < routed < len(inputs), "the inputs must exercise both routes"
    assert_drained(redis_client, stages)


def test_ensemble_averages_both_models_logits(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    import torch

    stages = ["ensemble.split", "ensemble.model_a", "ensemble.model_b", "ensemble.average"]
    register(settings, ensemble)
    for name in stages:
        workers.start(name)
    inputs = _vectors(6, seed=11)
    jobs = client.submit_many("ensemble", inputs)

    with torch.no_grad():
        batch = torch.tensor(inputs, dtype=torch.float32)
        expected = ((build_mlp(1)(batch) + build_mlp(2)(batch)) / 2).tolist()
    records = wait_finished(jobs, WAIT_S)

    assert [r.status for r in records] == [JobStatus.DONE] * len(inputs), [r.error for r in records]
    for record, logits in zip(records, expected, strict=True):
        result: dict[str, Any] = record.result
        assert result["logits"] == pytest.approx(logits, rel=1e-4, abs=1e-5)
        assert result["label"] == max(range(len(logits)), key=logits.__getitem__)
        # the split, both branches and the join each ran the job once
        assert sorted(t.stage for t in record.timings) == sorted(stages)
        assert record.timings[0].stage == "ensemble.split"
        assert record.timings[-1].stage == "ensemble.average"
    assert_drained(redis_client, stages)


def _standardise(values: list[float]) -> list[float]:
    padded = (list(values) + [0.0] * FEATURES)[:FEATURES]
    mean = sum(padded) / FEATURES
    spread = (sum((v - mean) ** 2 for v in padded) / FEATURES) ** 0.5 or 1.0
    return [(v - mean) / spread for v in padded]


def test_chain_runs_three_stages_in_order(
    settings: Settings, client: Client, workers: Workers, redis_client: redis.Redis
) -> None:
    import torch

    stages = ["chain.preprocess", "chain.model", "chain.postprocess"]
    register(settings, chain)
    for name in stages:
        workers.start(name)
    inputs = [[3.0, 1.0, 4.0], [1.0] * FEATURES, *_vectors(4, seed=5)]
    jobs = client.submit_many("chain", inputs)

    with torch.no_grad():
        probs = build_mlp()(torch.tensor([_standardise(v) for v in inputs])).softmax(-1)
    records = wait_finished(jobs, WAIT_S)

    assert [r.status for r in records] == [JobStatus.DONE] * len(inputs), [r.error for r in records]
    for record, row in zip(records, probs.tolist(), strict=True):
        label = max(range(len(row)), key=row.__getitem__)
        assert record.result == {"label": LABELS[label], "confidence": pytest.approx(row[label])}
        assert [t.stage for t in record.timings] == stages
    assert_drained(redis_client, stages)
