"""Merging concurrent calls of a process into one Redis round trip (issue #12).

Every running generation appends on its own, so at 200 streams x 50 tokens/s a
process would send 10,000 scripts a second, each paying redis-py's per-command
cost and holding a pooled connection. A :class:`Batcher` keeps one call in flight:
what callers submit while it runs waits and goes in the next call, all of it in
one script run. When the process is idle the first item goes at once (one event
loop turn later), so batching adds no latency; under load the batches grow with
the round trip (like Nagle's algorithm without its timer), and a caller that
waits for its turn is the producer's backpressure: it stops reading its
provider until its events are in the log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Generic, TypeVar

from tokenwire.errors import LogUnavailableError

__all__ = ["Batcher"]

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Submit items one at a time; ``send`` gets them in batches, one call at a time.

    Args:
        send: sends a batch (in submission order) and returns one result per item,
            in the same order. An exception it raises fails every item of the batch
            (a :class:`~tokenwire.errors.LogUnavailableError` is given to each caller
            as an instance of its own with the same message and cause).
        limit: most items per ``send`` call (bounds how long one script blocks Redis).
        spawn: starts the sending task (the log's, so that closing the log stops it).
    """

    def __init__(
        self,
        send: Callable[[list[T]], Awaitable[Sequence[R]]],
        limit: int,
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
    ) -> None:
        self._send = send
        self._limit = limit
        self._spawn = spawn
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """Send ``item`` with whatever else is waiting; return its result.

        Raises:
            LogUnavailableError: the batch's round trip failed.
        """
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._task is None:
            self._task = self._spawn(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._limit]
                del self._pending[: self._limit]
                await self._round_trip(batch)
        finally:
            self._task = None
            for _, future in self._pending:  # only when cancelled (the log closed)
                future.cancel()
            self._pending.clear()

    async def _round_trip(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._send([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(_copy(exc))
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


def _copy(exc: Exception) -> Exception:
    """A :class:`LogUnavailableError` of its own for each caller (raised ``from`` the
    same cause); any other exception (a bug) as it is."""
    if not isinstance(exc, LogUnavailableError):
        return exc
    error = LogUnavailableError(str(exc))
    error.__cause__ = exc.__cause__
    return error
