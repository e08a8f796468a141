"""The process's live tail of the Redis stream log: one ``XREAD BLOCK`` loop on the
log's changes serving every waiting reader (see "Live tail" in :mod:`tokenwire.log.redis`)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import redis.exceptions

from tokenwire.events import Event, decode_event
from tokenwire.log.redis_core import (
    BACKOFF_MAX,
    BACKOFF_MIN,
    OwnConnection,
    RedisCore,
    as_str,
    stop_task,
)

__all__ = ["RedisTail"]

logger = logging.getLogger("tokenwire.log.redis")

_BLOCK_MS = 1000
"""Longest ``XREAD BLOCK`` of the tail, in milliseconds."""
_TAIL_COUNT = 1024
"""Most entries the tail takes per stream (and of the changes) per ``XREAD`` (more
come on the next call)."""
_LINGER = 5.0
"""Seconds a stream stays followed after its last waiter left."""


class RedisTail:
    """The process's live tail: one ``XREAD BLOCK`` loop serving every waiting reader.

    The tail reads the changes stream (``Keys.changes``: one entry per append script
    run, stream id → last ``seq``), not every followed stream: a round costs as much
    as what changed, not as many streams as are followed. A stream is read itself
    only from a waiter's position: once when first followed (what was appended
    before the tail looked), and after a change that a waiter has not seen.

    ``_known[s]`` is the last ``seq`` of followed stream ``s`` the tail knows of;
    every later append shows in a change the tail has not read yet. A reader asking
    from an earlier position is answered at once (``[]``: fetch). A stream nobody
    waits on stays followed for ``_LINGER`` seconds (a reader between two waits).
    """

    def __init__(self, core: RedisCore) -> None:
        self._core = core
        self._connection = OwnConnection(core.client.connection_pool)
        """The tail's connection, blocked in ``XREAD`` most of the time."""
        self._known: dict[str, int] = {}
        self._waiters: dict[str, list[tuple[int, asyncio.Future[list[Event]]]]] = {}
        self._idle: dict[str, float] = {}
        """Followed streams without a waiter → since when (monotonic s), oldest first."""
        self._to_read: set[str] = set()
        """Followed streams the next round reads: from their waiters' lowest position,
        or without a waiter from ``_known``."""
        self._cursor: str | None = None
        """Entry id of the last change read (``None``: not looked yet)."""
        self._wake_id = "0-0"
        self._blocked = False
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._poking = False

    async def wait(self, stream_id: str, after: int, timeout: float) -> list[Event]:
        """Events after ``after`` from the tail, ``[]`` when to fetch (or timed out)."""
        future = self._future(stream_id, after)
        # A timer that resolves the future, not ``asyncio.timeout``: this runs once per
        # delivered batch, and the context manager costs several times more.
        timer = None
        if timeout != math.inf and not future.done():
            timer = asyncio.get_running_loop().call_later(timeout, _expire, future)
        try:
            return await future
        finally:
            if timer is not None:
                timer.cancel()
            self._forget(stream_id, future)

    def _future(self, stream_id: str, after: int) -> asyncio.Future[list[Event]]:
        """A future resolved when stream ``stream_id`` gets events with ``seq > after``."""
        future: asyncio.Future[list[Event]] = asyncio.get_running_loop().create_future()
        known = self._known.get(stream_id)
        if known is not None and after < known:
            future.set_result([])
            return future
        self._waiters.setdefault(stream_id, []).append((after, future))
        self._idle.pop(stream_id, None)
        if known is None:
            self._known[stream_id] = after
            self._to_read.add(stream_id)
            self._changed.set()
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
            self._unwaited(stream_id)

    def _unwaited(self, stream_id: str) -> None:
        del self._waiters[stream_id]
        self._idle[stream_id] = time.monotonic()

    def _poke(self) -> None:
        """Interrupt a blocked ``XREAD`` so that it reads a newly followed stream."""
        if self._poking or not self._blocked:
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
            self._drop_lingering()
            if not self._known:
                self._changed.clear()
                await self._changed.wait()
                continue
            try:
                await self._read_once()
                backoff = BACKOFF_MIN
            except Exception as exc:  # Redis down, or a corrupt entry: never die
                logger.warning("stream log tail: %r; retrying in %.2f s", exc, backoff)
                self._to_read.update(self._known)  # changes may have been missed
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _drop_lingering(self) -> None:
        """Stop following the streams nobody has waited on for ``_LINGER`` seconds."""
        idle = self._idle
        limit = time.monotonic() - _LINGER
        while idle:
            stream_id, since = next(iter(idle.items()))
            if since > limit:
                return
            del idle[stream_id]
            del self._known[stream_id]

    async def _read_once(self) -> None:
        keys, client = self._core.keys, self._core.client
        changes, wake = keys.changes(), keys.wake(self._core.process_id)
        if self._cursor is None:
            last: Any = await client.xrevrange(changes, count=1)
            self._cursor = as_str(last[0][0]) if last else "0-0"
        known, waiters = self._known, self._waiters
        positions = {
            s: min(after for after, _ in waiters[s]) if s in waiters else known[s]
            for s in self._to_read
            if s in known
        }
        self._to_read = set()
        by_key = {keys.events(s): s for s in positions}
        names = [*by_key, changes, wake]
        ids = [*(f"{positions[s]}-0" for s in by_key.values()), self._cursor, self._wake_id]
        self._blocked = True
        try:
            reply: Any = await self._connection.execute(
                "XREAD", "COUNT", _TAIL_COUNT, "BLOCK", _BLOCK_MS, "STREAMS", *names, *ids
            )
        finally:
            self._blocked = False
        noted: list[Any] = []
        # The streams read first: what they deliver makes their changes old news.
        # The raw reply: [[key, [[id, [field, value, ...]], ...]], ...] (RESP2), a map
        # of key -> entries (RESP3), or nil when the block timed out.
        for key, entries in reply.items() if isinstance(reply, dict) else (reply or []):
            name = as_str(key)
            if not entries:
                continue
            if name == changes:
                self._cursor = as_str(entries[-1][0])
                noted = entries
            elif name == wake:
                self._wake_id = as_str(entries[-1][0])
            elif (stream_id := by_key.get(name)) is not None:
                events = [decode_event(fields[1]) for _, fields in entries]  # field e
                self._deliver(stream_id, positions[stream_id], events)
                if len(entries) >= _TAIL_COUNT:  # more may follow, changed before
                    self._to_read.add(stream_id)
        self._note_changes(noted)
        if len(noted) >= _TAIL_COUNT:  # behind: maybe past the trimming (CHANGES_MAXLEN)
            self._to_read.update(known)

    def _note_changes(self, entries: list[Any]) -> None:
        """Raise ``_known`` from the changes read; a stream whose waiter has not seen
        its last ``seq`` is read in the next round."""
        known, waiters = self._known, self._waiters
        for _, fields in entries:
            for name, value in zip(fields[::2], fields[1::2], strict=True):
                stream_id = as_str(name)
                seq = int(value)
                if known.get(stream_id, seq) < seq:
                    known[stream_id] = seq
                    if stream_id in waiters:
                        self._to_read.add(stream_id)

    def _deliver(self, stream_id: str, start: int, events: list[Event]) -> None:
        """Resolve the waiters of ``stream_id``; ``events`` are ``seq`` ``start + 1 …``."""
        known = self._known
        if stream_id in known:
            known[stream_id] = max(known[stream_id], events[-1].seq)
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
        else:
            self._unwaited(stream_id)

    def waiting(self) -> int:
        """Streams with a waiting reader (the ``tailed_streams`` statistic)."""
        return len(self._waiters)

    async def close(self) -> None:
        if self._task is not None:
            await stop_task(self._task)
        await self._connection.release()
        for waiters in self._waiters.values():
            for _, future in waiters:
                future.cancel()
        self._waiters.clear()
        self._known.clear()
        self._idle.clear()


def _expire(future: asyncio.Future[list[Event]]) -> None:
    """A waiter's time is up: it gets ``[]`` (fetch or heartbeat)."""
    if not future.done():
        future.set_result([])
