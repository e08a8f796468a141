"""Following a stream by callback: the log hands each batch to a sink (DESIGN §3, §4).

:meth:`~tokenwire.log.base.StreamLog.read` is pulled by a task: every append wakes
the reader's task, which then writes. :meth:`~tokenwire.log.base.StreamLog.follow`
pushes instead: the memory log calls the sink from one callback per follower at
the event loop's next turn, with everything the turn appended, so a live SSE
response needs no task of its own and writes once per turn, however many events
came (docs/performance.md, "Pushed to the SSE response"). A log without such a
path follows by reading (:class:`ReadingFollower`).

A sink takes one batch (``[]`` after ``idle`` seconds of silence, for a heartbeat)
and returns ``None`` when it is done with it, or an awaitable when its write is
still in flight (a slow client). No batch is handed over until that awaitable is
done, and a follower keeps only its position meanwhile: backpressure costs no
queue, as for readers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Protocol

from tokenwire.events import Event

__all__ = ["Follower", "ReadingFollower", "Sink"]

Sink = Callable[[list[Event]], Awaitable[object] | None]
"""Takes one batch; returns ``None``, or an awaitable while its write is in flight."""


class Follower(Protocol):
    """A stream being followed (what :meth:`StreamLog.follow` returns).

    Attributes:
        done: resolves once the terminal event was handed over and the sink's
            write of it finished; fails with the sink's error, or with
            :class:`~tokenwire.errors.StreamNotFoundError`,
            :class:`~tokenwire.errors.StreamExpiredError` or
            :class:`~tokenwire.errors.LogUnavailableError` when the log lost the
            stream midway.
    """

    done: asyncio.Future[None]

    def close(self) -> None:
        """Stop following (the client left); nothing more is handed over."""


class ReadingFollower:
    """A follower that reads in a task of its own (for a log without a push path).

    Args:
        reader: the log's :meth:`~tokenwire.log.base.StreamLog.read` of the stream.
        sink: where each batch goes.
    """

    def __init__(self, reader: AsyncGenerator[list[Event], None], sink: Sink) -> None:
        self.done: asyncio.Future[None] = asyncio.ensure_future(self._run(reader, sink))

    @staticmethod
    async def _run(reader: AsyncGenerator[list[Event], None], sink: Sink) -> None:
        try:
            async for chunk in reader:
                pending = sink(chunk)
                if pending is not None:
                    await pending
        finally:
            await reader.aclose()

    def close(self) -> None:
        self.done.cancel()
