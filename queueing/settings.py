"""The one settings object, read from the environment or given explicitly.

``REDIS_URL`` names the server (``BATCHLINE_REDIS_URL`` wins over it); everything else is
``BATCHLINE_<FIELD>`` in upper case, e.g. ``BATCHLINE_VISIBILITY_TIMEOUT_S=60``. A bad value
raises :class:`~queueing.errors.ConfigError` naming the variable.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from queueing.errors import ConfigError

ENV_PREFIX = "BATCHLINE_"


@dataclass(frozen=True)
class Settings:
    """Everything batchline can be told. Build one with :meth:`from_env` and pass it down."""

    redis_url: str | None = None
    """The Redis server; ``None`` means "start the embedded one" where that makes sense."""
    prefix: str = "bl"
    """First part of every key, so that several deployments can share one server."""
    partitions: int = 1
    """How many hash-tagged partitions each stage's stream is split into."""
    result_ttl_s: float = 3600.0
    """How long a finished job's record (and result) is kept."""
    sync_result_ttl_s: float = 60.0
    """How long the gateway keeps the record of a job it ran synchronously (its result was in
    the answer already): long enough for a retry with the same Idempotency-Key."""
    visibility_timeout_s: float = 30.0
    """A consumer silent for this long loses its in-flight entries to a live worker."""
    max_deliveries: int = 3
    """An entry delivered this many times without finishing goes to the dead-letter stream."""
    max_backlog: int = 100_000
    """Default limit of a pipeline's first-stage backlog; submits past it raise QueueFull."""
    durable_submit: bool = False
    """Make submit wait for the AOF fsync (WAITAOF) so an accepted job survives a crash."""
    block_ms: int = 1000
    """How long one blocking read waits when a stage is idle."""
    pipelines: tuple[str, ...] = ()
    """Modules to import for pipeline definitions (comma-separated in the environment).
    Empty here means "not set": the ``batchline`` command fills in its default."""
    device: str = "auto"
    """Where models run: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:1``..."""
    torch_threads: int = 0
    """torch's intra-op threads in a worker; 0: half the cores (at least one), since the
    worker shares the machine with its own I/O, Redis and often other workers."""
    data_dir: str = ".batchline"
    """Where the embedded server keeps its socket and AOF."""
    redis_server: str | None = None
    """Explicit path of a redis-server / valkey-server binary for the embedded server."""
    worker_name: str | None = None
    """Stable consumer name (a restarted worker re-reads its own pending entries)."""
    api_keys: tuple[str, ...] = ()
    admin_keys: tuple[str, ...] = ()
    """Digests (among ``api_keys``) that may use the admin routes (/v1/admin: dead letters,
    live settings, the dashboard's data); empty: every API key may."""
    """SHA-256 hex digests of accepted API keys; empty means no auth."""
    public_ops: bool = False
    """With API keys on: whether /metrics and /readyz's list of pipelines are open without a
    key (they need one by default; /readyz's status and /healthz always answer)."""
    max_body_bytes: int = 1_048_576
    """Largest request body the gateway accepts."""
    bulk_max_bytes: int = 1 << 30
    """Largest file ``POST /v1/pipelines/{name}/bulk`` takes (its own limit, not the body's)."""
    bulk_dir: str = ".batchline/bulk"
    """Where the gateway keeps uploaded bulk files and their results: storage that the
    ``rq worker batchline-bulk`` processes see at the same path (a shared volume)."""
    webhook_secret: str = field(default="", repr=False)
    """The key that signs webhook deliveries (HMAC-SHA256; see :mod:`queueing.webhooks`)."""
    webhook_allow: tuple[str, ...] = ()
    """Hosts, addresses or networks (CIDR) a webhook may reach although not public (by default
    a URL that resolves to a private, loopback or link-local address is refused)."""
    webhook_retries: int = 5
    """Deliveries retried this many times after a 5xx, a timeout or a connection error..."""
    webhook_backoff_s: float = 1.0
    """... this long before the first retry, doubling after each."""
    webhook_timeout_s: float = 10.0
    """How long one delivery waits for the receiver's answer."""
    webhook_sweep_s: float = 5.0
    """How often the notifier re-reads the pending webhooks (ends whose notice it missed)."""
    max_wait_s: float = 60.0
    """Longest a gateway call may wait for a result (long-poll and synchronous calls)."""
    max_streams: int = 256
    """Most chunk streams one client follows at once (``events()``/``stream()``, the gateway's
    Server-Sent Events); past it they raise TooManyStreams (429). Each follower holds one
    connection of the client's own pool for blocking reads, never one of its main pool."""
    retry_s: float = 10.0
    """How long a client call (submit, cancel, a read, a wait's re-check) retries while Redis
    is unreachable (a restart) before it raises BrokerUnavailable; 0: it does not retry."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``REDIS_URL`` and ``BATCHLINE_*``; keyword overrides win (e.g. CLI flags)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        if env.get("REDIS_URL"):
            values["redis_url"] = env["REDIS_URL"]
        for f in dataclasses.fields(cls):
            name = ENV_PREFIX + f.name.upper()
            if name in env and env[name] != "":
                values[f.name] = _parse(name, env[name], f.type)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values).validated()

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes).validated()

    def validated(self) -> Settings:
        checks = [
            ("partitions", self.partitions >= 1),
            ("result_ttl_s", 1 <= self.result_ttl_s < 1e9),
            ("sync_result_ttl_s", 1 <= self.sync_result_ttl_s < 1e9),
            ("visibility_timeout_s", 0 < self.visibility_timeout_s < 1e6),
            ("max_deliveries", self.max_deliveries >= 1),
            ("max_backlog", self.max_backlog >= 1),
            ("block_ms", 1 <= self.block_ms <= 60_000),
            ("max_body_bytes", self.max_body_bytes >= 1),
            ("bulk_max_bytes", self.bulk_max_bytes >= 1),
            ("webhook_retries", 0 <= self.webhook_retries <= 25),
            ("webhook_backoff_s", 0 <= self.webhook_backoff_s <= 3600),
            ("webhook_timeout_s", 0 < self.webhook_timeout_s <= 300),
            ("webhook_sweep_s", 0 < self.webhook_sweep_s <= 3600),
            ("max_wait_s", 0 < self.max_wait_s < 1e6),
            ("max_streams", 1 <= self.max_streams <= 100_000),
            ("retry_s", 0 <= self.retry_s < 1e6),
            ("torch_threads", self.torch_threads >= 0),
            ("prefix", bool(self.prefix) and not any(c in self.prefix for c in "{}: ")),
        ]
        for name, ok in checks:
            if not ok:
                raise ConfigError(
                    f"{ENV_PREFIX}{name.upper()}={getattr(self, name)!r} is out of range"
                )
        return self

    @property
    def heartbeat_interval_s(self) -> float:
        """Heartbeats run three times per visibility timeout, so one lost beat costs nothing."""
        return self.visibility_timeout_s / 3


def _parse(name: str, raw: str, kind: Any) -> Any:
    kind = str(kind)
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
        if kind.startswith("bool"):
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected one of 1/0, true/false, yes/no, on/off")
        if kind.startswith("tuple"):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a valid {kind.split(' ')[0]}: {exc}") from exc
    return raw
