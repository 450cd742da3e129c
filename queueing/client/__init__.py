"""The Python enqueue client: ``Client`` (blocking) and ``AsyncClient`` (asyncio), twins over
one I/O-free core (:mod:`queueing.client.core`); the blocking one is generated from the asyncio
one (``scripts/unasync``).

They talk to Redis directly (no gateway). ``submit`` runs one script that creates the job
records and appends the entries to the first stage's stream atomically; a finished job wakes
its waiters through pub/sub with the whole job as it ended, so nobody polls and nobody
re-reads the record (but a waiter that hears nothing re-reads it: no wait hangs on a lost
notice).

    >>> client = Client()                       # REDIS_URL from the environment
    >>> job = client.submit("echo", {"x": 1})
    >>> job.result(timeout=5)
    {'x': 1}

A numpy array (or a torch tensor) is sent as a raw tensor rather than as JSON lists, and a
tensor the pipeline returns comes back as a numpy array (see :mod:`queueing.message`).
"""

from queueing.client.aio import AsyncClient, AsyncJob
from queueing.client.core import MAX_SUBMIT_MANY, SubmitPlan
from queueing.client.sync import Client, Job

__all__ = ["MAX_SUBMIT_MANY", "AsyncClient", "AsyncJob", "Client", "Job", "SubmitPlan"]
