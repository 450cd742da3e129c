"""The FastAPI gateway: submit, poll, wait, cancel, pipelines, health, metrics.

It stands on :mod:`queueing` alone and learns pipelines from the registry in Redis, so it never
imports model code. Run it with ``batchline web`` (or ``uvicorn api.app:app``).
"""

from api.app import create_app
from api.auth import ApiKeys, digest, new_key
from api.gateway import Gateway
from api.metrics import Metrics

__all__ = ["ApiKeys", "Gateway", "Metrics", "create_app", "digest", "new_key"]
