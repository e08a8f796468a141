"""``tokenwire worker``: runs queued generations (scale-out, DESIGN §11).

A worker takes :class:`~tokenwire.queue.GenerationJob`\\ s from the Redis queue
and runs each with a :class:`~tokenwire.producer.Producer`, with the same settings
as ``tokenwire serve`` (stream log, store, providers, timing). Any number of
workers on any machines share one queue; each runs up to ``concurrency``
generations at once.

Cancellation needs nothing from the queue: the producer watches the stream's
cancel flag in the log (:meth:`~tokenwire.log.base.StreamLog.watch_cancel`), which
any node sets. A worker that dies stops renewing its leases, and readers end its
streams with ``error{producer_lost}`` (found by the lease sweep of any process, read or
not); its jobs are never run again (see :mod:`tokenwire.queue`).

SIGINT/SIGTERM stop the worker gracefully, as ``tokenwire serve`` does: it takes
no new job (saq starts no new dequeue; a job a pending dequeue still receives is
handed back to the queue under a new key, for another worker), lets its running
generations finish for ``shutdown_grace`` seconds, ends the rest with
``cancelled{reason: "shutdown"}`` (appended, so every reader on any node gets it,
and stored), then stops saq and closes. A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from typing import Any

import msgspec
from prometheus_client import Gauge, start_http_server
from saq import Worker
from saq.types import Context, PartialTimersDict

from tokenwire.engine import Tokenwire
from tokenwire.errors import StreamExpiredError, StreamNotFoundError, UnknownModelError
from tokenwire.events import Error
from tokenwire.observability import metrics
from tokenwire.producer import Generation
from tokenwire.queue import JOB_FUNCTION, GenerationQueue, decode_job
from tokenwire.settings import Settings

__all__ = ["GenerationWorker", "serve_metrics", "worker_id"]

logger = logging.getLogger("tokenwire.worker")

_TIMERS: PartialTimersDict = {"schedule": 1, "worker_info": 10, "sweep": 30, "abort": 1}
"""saq's upkeep periods in seconds, its defaults but for ``sweep`` (looking for jobs
whose worker vanished: 30 instead of 60)."""


class _SaqWorker(Worker[Context]):
    """saq's worker, with the signals left to :class:`GenerationWorker` and no new
    dequeue once ``draining`` is set."""

    SIGNALS: list[signal.Signals] = []
    draining = False

    def _process(self, previous_task: asyncio.Task[Any] | None = None) -> None:
        if self.draining:  # saq would start the next dequeue loop here
            if previous_task is not None:
                self.tasks.discard(previous_task)
            return
        super()._process(previous_task)


_STOP_TIMEOUT = 10.0
"""Seconds :meth:`GenerationWorker.run` waits for saq's worker to stop."""


def serve_metrics(worker: GenerationWorker, host: str, port: int) -> None:
    """Serve the process's Prometheus metrics (:data:`tokenwire.observability.metrics.REGISTRY`
    and ``tokenwire_generations_active``) on ``http://host:port/metrics``, from a
    daemon thread (``prometheus_client.start_http_server``).

    Raises:
        OSError: the port cannot be bound.
    """
    active = Gauge(
        "tokenwire_generations_active",
        "Generations running in this worker process.",
        registry=metrics.REGISTRY,
    )
    active.set_function(worker.tw.producer.running)
    start_http_server(port, addr=host, registry=metrics.REGISTRY)


def worker_id() -> str:
    """This process's worker id, ``<host>-<pid>`` (saq records it on each job it runs)."""
    return f"{socket.gethostname()}-{os.getpid()}"


class GenerationWorker:
    """Takes generation jobs from the queue and runs them until stopped.

    Args:
        settings: the same settings as the gateways (``log_url``, ``store_url``,
            ``queue_url``/``queue_name``, timing); ``producers`` is ignored.
        concurrency: generations run at once; ``None`` = ``settings.worker_concurrency``.
        tokenwire: an instance whose log, store and providers to use instead of
            one built from ``settings`` (it is opened and closed here).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        concurrency: int | None = None,
        tokenwire: Tokenwire | None = None,
    ) -> None:
        self.settings = settings
        self.concurrency = concurrency or settings.worker_concurrency
        self.tw = tokenwire or Tokenwire(settings.model_copy(update={"producers": "local"}))
        self.queue = GenerationQueue.from_settings(settings)
        self.id = worker_id()
        self._saq: _SaqWorker | None = None
        self._draining = False

    async def run(self) -> None:
        """Work until SIGINT/SIGTERM (or cancellation); then close everything."""
        await self.tw.open()
        worker = self._saq = _SaqWorker(
            self.queue.saq,
            functions=[(JOB_FUNCTION, self._generate)],
            id=self.id,
            concurrency=self.concurrency,
            timers=_TIMERS,
        )
        logger.info("worker %s: %d generations at once", self.id, self.concurrency)
        loop = asyncio.get_running_loop()
        signalled = asyncio.Event()
        handled = (signal.SIGINT, signal.SIGTERM)
        for signum in handled:
            loop.add_signal_handler(signum, signalled.set)
        working = asyncio.create_task(worker.start())
        waiters: list[asyncio.Task[Any]] = []
        try:
            waiters.append(asyncio.create_task(signalled.wait()))
            await asyncio.wait({working, waiters[-1]}, return_when=asyncio.FIRST_COMPLETED)
            if signalled.is_set():
                signalled.clear()  # a second signal: stop at once
                waiters.append(asyncio.create_task(self.drain()))
                waiters.append(asyncio.create_task(signalled.wait()))
                await asyncio.wait(waiters[1:], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waiters:
                task.cancel()
            for signum in handled:
                loop.remove_signal_handler(signum)
            await worker.stop()  # cancels the remaining saq tasks (idle dequeues)
            await asyncio.wait({working}, timeout=_STOP_TIMEOUT)
            working.cancel()  # not started yet when run() was cancelled at once
            with contextlib.suppress(asyncio.CancelledError):
                await working
            await self.queue.close()
            await self.tw.aclose()

    async def drain(self) -> None:
        """Take no new job; let the running generations finish for ``shutdown_grace``
        seconds, then end the rest with ``cancelled{reason: "shutdown"}``."""
        self._draining = True
        if self._saq is not None:
            self._saq.draining = True
        await self.tw.drain()

    async def _generate(self, ctx: Any, *, job: str) -> str:
        """The saq job function: run one generation; return how it ended."""
        try:
            item = decode_job(job)
        except msgspec.ValidationError:
            logger.error("dropping a job this version cannot read")
            return "invalid"
        generation = item.generation
        if self._draining:  # a dequeue that was already waiting: for another worker
            await self.queue.hand_back(item)
            return "handed back"
        try:
            info = await self.tw.log.info(generation.stream_id)
        except (StreamNotFoundError, StreamExpiredError):
            return "gone"
        if info.status != "running":  # cancelled/lost while queued: nothing to do
            return "ended"
        if not await self.queue.claim(generation.stream_id):
            return "claimed"  # a second delivery: the first run owns the stream
        try:
            provider, _ = self.tw.registry.resolve(item.model)
        except UnknownModelError:
            await self._fail(generation, "the model is not available on the workers")
            return "failed"
        terminal = await self.tw.producer.run(generation, provider)
        return str(terminal.__struct_config__.tag)

    async def _fail(self, generation: Generation, message: str) -> None:
        """End a stream the worker cannot run with ``error{internal_error}``."""
        error = Error(code="internal_error", message=message)
        await self.tw.log.append(generation.stream_id, [error])
        await self.tw.store.update_message(
            generation.message_id,
            status="failed",
            error={"code": error.code, "message": message, "retryable": False},
        )
