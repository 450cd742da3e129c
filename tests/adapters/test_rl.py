"""The RL policy adapter: the ``cartpole`` example, a Gymnasium episode played step by step
through the real queue and a real worker process."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.examples.cartpole import play_episode
from queueing.client import Client
from queueing.errors import JobFailed
from queueing.settings import Settings
from tests.support import Workers, register

WAIT_S = 60


def test_cartpole_policy_balances_the_pole_through_batchline(
    settings: Settings, client: Client, workers: Workers
) -> None:
    from pipelines.examples import cartpole

    register(settings, cartpole)
    workers.start("cartpole")
    assert client.submit("cartpole", cartpole.example).result(timeout=WAIT_S) in (0, 1)
    assert play_episode(client, seed=123) == 500.0  # CartPole-v1's maximum
    # a batch of observations, one of them malformed: it alone fails
    jobs = client.submit_many(
        "cartpole", [np.zeros(4, np.float32), np.zeros(3, np.float32), [0.0, 0.1, 0.0, -0.1]]
    )
    assert jobs[0].result(timeout=WAIT_S) in (0, 1)
    with pytest.raises(JobFailed, match="shape"):
        jobs[1].result(timeout=WAIT_S)
    assert jobs[2].result(timeout=WAIT_S) in (0, 1)
