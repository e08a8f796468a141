"""One reader of the Redis stream log: fetch with ``XRANGE``, then follow through the
process's tail, with idle heartbeats, lease checks and an outage grace (see
:mod:`tokenwire.log.redis`)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable

from tokenwire.errors import LogUnavailableError
from tokenwire.events import Event, StreamStatus, decode_event, is_terminal
from tokenwire.log.redis_core import (
    BACKOFF_MAX,
    BACKOFF_MIN,
    RedisCore,
    as_str,
    entry_field,
)

__all__ = ["Follow", "fetch"]

_UNLEASED_RECHECK = 2.0
"""Seconds between a reader's looks at the lease of a stream that has none."""


async def fetch(
    core: RedisCore, stream_id: str, after: int, count: int | None
) -> tuple[list[Event], str | None, float]:
    """Events with ``seq > after`` (at most ``count``), the status (``None``: no
    such stream) and the monotonic time at which to look at the lease next, in
    one ``MULTI`` transaction (``-inf``: the lease has expired).

    Raises:
        LogUnavailableError: Redis cannot be reached.
    """
    keys = core.keys
    async with core.client.pipeline(transaction=True) as pipe:
        pipe.xrange(keys.events(stream_id), f"({after}-0", "+", count=count)
        pipe.hmget(keys.meta(stream_id), ["status", "leased"])
        pipe.pttl(keys.lease(stream_id))
        entries, (status, leased), pttl = await core.call(pipe.execute())
    events = [decode_event(entry_field(fields)) for _, fields in entries]
    now = time.monotonic()
    if leased is None:
        lease_at = now + _UNLEASED_RECHECK
    elif pttl == -2:
        lease_at = -math.inf  # expired: the reader ends it with producer_lost
    else:
        lease_at = now + (pttl / 1000 if pttl >= 0 else _UNLEASED_RECHECK)
    return events, None if status is None else as_str(status), lease_at


class Follow:
    """One reader's position and timers, stepped by :meth:`chunks`.

    Args:
        core: the log's shared client and keys.
        wait: the tail's wait: ``(stream_id, after, timeout)`` → events, ``[]`` to fetch.
        end_lost: appends ``producer_lost`` if the lease is still expired.
        outage_grace: seconds of failing Redis calls before raising.
        stream_id, after, batch, idle: as :meth:`~tokenwire.log.base.StreamLog.read`.
    """

    def __init__(
        self,
        core: RedisCore,
        wait: Callable[[str, int, float], Awaitable[list[Event]]],
        end_lost: Callable[[str], Awaitable[bool]],
        outage_grace: float,
        *,
        stream_id: str,
        after: int,
        batch: int,
        idle: float | None,
    ) -> None:
        self._core, self._wait, self._end_lost = core, wait, end_lost
        self._outage_grace = outage_grace
        self.stream_id, self.after, self.batch, self.idle = stream_id, after, batch, idle
        self.quiet_until = math.inf if idle is None else time.monotonic() + idle
        self.lease_at = math.inf
        self.pending: list[Event] = []
        self.must_fetch = True
        self.down_since: float | None = None
        self.backoff = BACKOFF_MIN

    async def chunks(self) -> AsyncGenerator[list[Event], None]:
        """Batches of events until the terminal one; ``[]`` after ``idle`` quiet seconds.

        Raises:
            StreamNotFoundError, StreamExpiredError: the stream is gone.
            LogUnavailableError: Redis failed for longer than ``outage_grace``.
        """
        while True:
            chunk: list[Event] = []
            if self.pending:
                chunk, self.pending = self.pending[: self.batch], self.pending[self.batch :]
            elif self.must_fetch:
                fetched = await self._fetch()
                if fetched is None:  # Redis is down: heartbeats, then retry
                    if self._quiet_due():
                        yield []
                    await self._back_off()
                    continue
                chunk, status = fetched
                if not chunk and status != StreamStatus.RUNNING:
                    return
            if chunk:
                self.after = chunk[-1].seq
                yield chunk
                if is_terminal(chunk[-1]):
                    return
                if self.idle is not None:
                    self.quiet_until = time.monotonic() + self.idle
                continue
            if self._quiet_due():
                yield []
                continue
            await self._idle_step()

    async def _fetch(self) -> tuple[list[Event], str] | None:
        """Fetch a batch; ``None`` while Redis fails within the outage grace."""
        try:
            chunk, status, self.lease_at = await fetch(
                self._core, self.stream_id, self.after, self.batch
            )
        except LogUnavailableError:
            now = time.monotonic()
            self.down_since = now if self.down_since is None else self.down_since
            if now - self.down_since > self._outage_grace:
                raise
            return None
        self.down_since, self.backoff = None, BACKOFF_MIN
        if status is None:
            raise await self._core.missing(self.stream_id)
        self.must_fetch = len(chunk) == self.batch
        return chunk, status

    def _quiet_due(self) -> bool:
        """Whether an idle heartbeat is due now (then the next one is ``idle`` away)."""
        now = time.monotonic()
        if now < self.quiet_until:
            return False
        self.quiet_until = now + (self.idle or 0.0)
        return True

    async def _back_off(self) -> None:
        """Sleep before retrying a failed fetch (doubling, never past a heartbeat)."""
        await asyncio.sleep(min(self.backoff, max(0.0, self.quiet_until - time.monotonic())))
        self.backoff = min(self.backoff * 2, BACKOFF_MAX)

    async def _idle_step(self) -> None:
        """Nothing to yield: look at the lease when due, else wait on the tail."""
        now = time.monotonic()
        if now >= self.lease_at:  # expired (-inf) or due for another look
            if self.lease_at == -math.inf:
                await self._end_lost(self.stream_id)
            self.lease_at, self.must_fetch = math.inf, True
            return
        timeout = min(self.quiet_until, self.lease_at) - now
        self.pending = await self._wait(self.stream_id, self.after, timeout)
        self.must_fetch = not self.pending
