"""The process's live tail of the Redis stream log: one ``XREAD BLOCK`` loop serving
every waiting reader (see "Live tail" in :mod:`tokenwire.log.redis`)."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import redis.exceptions

from tokenwire.events import Event, decode_event
from tokenwire.log.redis_core import (
    BACKOFF_MAX,
    BACKOFF_MIN,
    RedisCore,
    as_str,
    entry_field,
    stop_task,
)

__all__ = ["RedisTail"]

logger = logging.getLogger("tokenwire.log.redis")

_BLOCK_MS = 1000
"""Longest ``XREAD BLOCK`` of the tail, in milliseconds."""
_TAIL_COUNT = 1024
"""Most entries the tail takes per stream per ``XREAD`` (more come on the next call)."""


class RedisTail:
    """The process's live tail: one ``XREAD BLOCK`` loop serving every waiting reader.

    ``_after[s]`` is where the tail reads stream ``s`` from; it never exceeds the
    position of a reader waiting on ``s`` (a reader asking from an earlier position
    is answered at once: it should fetch). A waiter's future gets the events after
    its position the tail saw, or ``[]`` meaning "something changed, fetch".
    """

    def __init__(self, core: RedisCore) -> None:
        self._core = core
        self._after: dict[str, int] = {}
        self._waiters: dict[str, list[tuple[int, asyncio.Future[list[Event]]]]] = {}
        self._reading: frozenset[str] = frozenset()
        self._wake_id = "0-0"
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._poking = False

    async def wait(self, stream_id: str, after: int, timeout: float) -> list[Event]:
        """Events after ``after`` from the tail, ``[]`` when to fetch (or timed out)."""
        future = self._future(stream_id, after)
        try:
            async with asyncio.timeout(None if timeout == math.inf else timeout):
                return await future
        except TimeoutError:
            return []
        finally:
            self._forget(stream_id, future)

    def _future(self, stream_id: str, after: int) -> asyncio.Future[list[Event]]:
        """A future resolved when stream ``stream_id`` gets events with ``seq > after``."""
        future: asyncio.Future[list[Event]] = asyncio.get_running_loop().create_future()
        known = self._after.get(stream_id)
        if known is not None and after < known:
            future.set_result([])
            return future
        self._waiters.setdefault(stream_id, []).append((after, future))
        if known is None:
            self._after[stream_id] = after
            self._changed.set()
            if stream_id not in self._reading:
                self._poke()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="tokenwire-redis-tail")
        return future

    def _forget(self, stream_id: str, future: asyncio.Future[list[Event]]) -> None:
        waiters = self._waiters.get(stream_id)
        if waiters is None:
            return
        waiters[:] = [w for w in waiters if w[1] is not future]
        if not waiters:
            del self._waiters[stream_id]
            del self._after[stream_id]

    def _poke(self) -> None:
        """Interrupt a blocked ``XREAD`` so it includes a new stream."""
        if self._poking or not self._reading:
            return
        self._poking = True
        self._core.spawn(self._send_poke())

    async def _send_poke(self) -> None:
        try:
            key = self._core.keys.wake(self._core.process_id)
            async with self._core.client.pipeline(transaction=False) as pipe:
                pipe.xadd(key, {"w": "1"}, maxlen=1, approximate=False)
                pipe.pexpire(key, 3_600_000)
                await pipe.execute()
        except redis.exceptions.RedisError:
            pass  # the tail's block times out after _BLOCK_MS anyway
        finally:
            self._poking = False

    async def _run(self) -> None:
        backoff = BACKOFF_MIN
        while not self._core.closed:
            if not self._after:
                self._changed.clear()
                await self._changed.wait()
                continue
            try:
                await self._read_once()
                backoff = BACKOFF_MIN
            except Exception as exc:  # Redis down, or a corrupt entry: never die
                logger.warning("stream log tail: %r; retrying in %.2f s", exc, backoff)
                self._reading = frozenset()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def _read_once(self) -> None:
        keys = self._core.keys
        wake = keys.wake(self._core.process_id)
        positions = dict(self._after)
        self._reading = frozenset(positions)
        request: dict[Any, Any] = {keys.events(s): f"{n}-0" for s, n in positions.items()}
        request[wake] = self._wake_id
        by_key = {keys.events(s): s for s in positions}
        try:
            reply: Any = await self._core.client.xread(request, count=_TAIL_COUNT, block=_BLOCK_MS)
        finally:
            self._reading = frozenset()
        items = reply.items() if isinstance(reply, dict) else (reply or [])
        for key, entries in items:
            if not entries:
                continue
            name = as_str(key)
            if name == wake:
                self._wake_id = as_str(entries[-1][0])
                continue
            stream_id = by_key.get(name)
            if stream_id is not None:
                events = [decode_event(entry_field(fields)) for _, fields in entries]
                self._deliver(stream_id, positions[stream_id], events)

    def _deliver(self, stream_id: str, start: int, events: list[Event]) -> None:
        """Resolve the waiters of ``stream_id``; ``events`` are ``seq`` ``start + 1 …``."""
        waiters = self._waiters.get(stream_id)
        if waiters is None:
            return
        kept = []
        for after, future in waiters:
            if future.done():
                continue
            if after < start:
                future.set_result([])
                continue
            mine = events[after - start :]
            if mine:
                future.set_result(mine)
            else:
                kept.append((after, future))
        if kept:
            self._waiters[stream_id] = kept
            self._after[stream_id] = max(self._after[stream_id], events[-1].seq)
        else:
            del self._waiters[stream_id]
            del self._after[stream_id]

    def waiting(self) -> int:
        """Streams with a waiting reader (the ``tailed_streams`` statistic)."""
        return len(self._after)

    async def close(self) -> None:
        if self._task is not None:
            await stop_task(self._task)
        for waiters in self._waiters.values():
            for _, future in waiters:
                future.cancel()
        self._waiters.clear()
        self._after.clear()
