"""Everything that touches Redis: settings, keys, the message codec, job records, the stream
protocol, the registry, waking waiters, the embedded server and the enqueue client."""

from queueing.chunks import StreamEvent
from queueing.client import AsyncClient, AsyncJob, Client, Job
from queueing.errors import (
    BatchlineError,
    BrokerFull,
    BrokerUnavailable,
    ConfigError,
    DecodeError,
    IdempotencyConflict,
    InvalidEventId,
    JobCancelled,
    JobError,
    JobExpired,
    JobFailed,
    NotDurable,
    QueueFull,
    ResultTimeout,
    TooManyStreams,
    UnknownJob,
    UnknownPipeline,
)
from queueing.jobs import JobRecord, JobStatus, StageTiming
from queueing.keys import Keys
from queueing.message import Message
from queueing.registry import PipelineSpec, StageSpec
from queueing.server import EmbeddedServer
from queueing.settings import Settings

__all__ = [
    "AsyncClient",
    "AsyncJob",
    "BatchlineError",
    "BrokerFull",
    "BrokerUnavailable",
    "Client",
    "ConfigError",
    "DecodeError",
    "EmbeddedServer",
    "IdempotencyConflict",
    "InvalidEventId",
    "Job",
    "JobCancelled",
    "JobError",
    "JobExpired",
    "JobFailed",
    "JobRecord",
    "JobStatus",
    "Keys",
    "Message",
    "NotDurable",
    "PipelineSpec",
    "QueueFull",
    "ResultTimeout",
    "Settings",
    "StageSpec",
    "StageTiming",
    "StreamEvent",
    "TooManyStreams",
    "UnknownJob",
    "UnknownPipeline",
]
