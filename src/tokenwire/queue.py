"""The generation job queue (scale-out, DESIGN §11), on `saq <https://pypi.org/project/saq/>`_.

A gateway node (``tokenwire serve --no-producers``) creates the turn, the stream
and its ``start`` event as usual, then enqueues one :class:`GenerationJob`; a
``tokenwire worker`` process takes it and runs it with the
:class:`~tokenwire.producer.Producer`. Why saq, and what every failure does, is in
``docs/scale-out.md``.

Delivery is *at most once from the first event on*: saq itself may hand a job out
again (a worker stopped with SIGTERM re-queues its running jobs; a job taken but
never marked active is re-queued by the sweep), so before running, a worker
*claims* the stream with an atomic ``SET NX``. The first claim wins for good; a
second delivery finds the claim and does nothing, because the stream already has
events from the first run (a retry would duplicate text, DESIGN §5). A job whose
worker died is never run again: the producer's lease expires and the stream ends
with ``error{producer_lost}``.

Redis keys (besides saq's own ``saq:<name>:…``): ``tokenwire:<name>:claim:<stream_id>``.
"""

from __future__ import annotations

import contextlib
import uuid

import msgspec
from redis.exceptions import RedisError
from saq import Queue
from saq.queue.redis import RedisQueue

from tokenwire.errors import QueueUnavailableError
from tokenwire.log.redis_core import unavailable
from tokenwire.producer import Generation
from tokenwire.settings import Settings

__all__ = ["JOB_FUNCTION", "GenerationJob", "GenerationQueue"]

JOB_FUNCTION = "tokenwire.generate"
"""The saq function name workers register for generation jobs."""
_CLAIM_MARGIN = 3600.0
"""Seconds a claim outlives the longest possible run (re-deliveries come well before)."""
_JOB_MARGIN = 60.0
"""Seconds added to ``max_stream_seconds`` for saq's own job timeout."""


def _unavailable() -> contextlib.AbstractContextManager[None]:
    """The queue's boundary: redis-py errors become :class:`QueueUnavailableError`."""
    return unavailable(QueueUnavailableError, "job queue")


_encoder = msgspec.json.Encoder()


class GenerationJob(msgspec.Struct, frozen=True, kw_only=True):
    """What a worker needs to run one generation.

    Attributes:
        model: the full model name, ``provider:model``; the worker resolves the
            provider with its own registry and settings (keys, base URLs).
        generation: ids and the provider's request.
    """

    model: str
    generation: Generation


_decoder = msgspec.json.Decoder(GenerationJob)


def encode_job(job: GenerationJob) -> str:
    """The job as JSON text (what saq stores as the function's ``job`` argument)."""
    return _encoder.encode(job).decode()


def decode_job(text: str) -> GenerationJob:
    """Inverse of :func:`encode_job`.

    Raises:
        msgspec.ValidationError: not a job (of this version of tokenwire).
    """
    return _decoder.decode(text)


class GenerationQueue:
    """Generation jobs in Redis, for any number of gateways and workers.

    Args:
        queue: the saq queue (its name scopes every key).
        job_timeout: seconds saq lets a job run before cancelling it (a backstop:
            the producer's own ``max_stream_seconds`` normally ends it first).
        claim_ttl: seconds a claim on a stream is kept.
    """

    def __init__(self, queue: RedisQueue, *, job_timeout: float, claim_ttl: float) -> None:
        self.saq = queue
        self.job_timeout = job_timeout
        self.claim_ttl = claim_ttl
        self._claim_prefix = f"tokenwire:{queue.name}:claim:"

    @classmethod
    def from_settings(cls, settings: Settings) -> GenerationQueue:
        """The queue ``settings`` configure (``queue_url``, ``queue_name``; timing).

        Raises:
            ValueError: no Redis URL for the queue (see
                :meth:`~tokenwire.settings.Settings.resolved_queue_url`).
        """
        queue = Queue.from_url(settings.resolved_queue_url(), name=settings.queue_name)
        if not isinstance(queue, RedisQueue):  # pragma: no cover - the URL check forbids it
            raise ValueError("the job queue must be on Redis")
        job_timeout = settings.max_stream_seconds + _JOB_MARGIN
        return cls(queue, job_timeout=job_timeout, claim_ttl=job_timeout + _CLAIM_MARGIN)

    async def enqueue(self, job: GenerationJob) -> None:
        """Add a job; a second enqueue of the same stream is ignored.

        saq's own retries are off (``retries=1``: one attempt); see the module
        docstring for the re-deliveries that remain and how claims absorb them.

        Raises:
            QueueUnavailableError: Redis failed (the client's error is the cause).
        """
        with _unavailable():
            await self.saq.enqueue(
                JOB_FUNCTION,
                key=job.generation.stream_id,
                timeout=int(self.job_timeout),
                retries=1,
                job=encode_job(job),
            )

    async def hand_back(self, job: GenerationJob) -> None:
        """Enqueue again a job this worker took but will not run (it is shutting down),
        under a new key: saq ignores an enqueue whose key is still known.

        Raises:
            QueueUnavailableError: Redis failed.
        """
        with _unavailable():
            await self.saq.enqueue(
                JOB_FUNCTION,
                key=f"{job.generation.stream_id}:{uuid.uuid4().hex[:8]}",
                timeout=int(self.job_timeout),
                retries=1,
                job=encode_job(job),
            )

    async def claim(self, stream_id: str) -> bool:
        """Take the stream for this worker: ``True`` the first time, ``False`` ever after.

        Raises:
            QueueUnavailableError: Redis failed.
        """
        key = self._claim_prefix + stream_id
        with _unavailable():
            return bool(await self.saq.redis.set(key, b"1", nx=True, ex=int(self.claim_ttl)))

    async def ping(self) -> None:
        """Check that the queue's Redis answers (for ``/readyz``).

        Raises:
            QueueUnavailableError: no answer.
        """
        with _unavailable():
            await self.saq.redis.ping()

    async def close(self) -> None:
        """Close the connections (also when Redis is gone: saq's own close then fails)."""
        try:
            await self.saq.disconnect()
        except (RedisError, OSError):
            await self.saq.redis.connection_pool.disconnect()
