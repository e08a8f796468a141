"""Redis stream log: any process appends to and serves any stream (DESIGN §4, §11).

Key layout (prefix ``tw:`` by default, see :class:`~tokenwire.log.redis_scripts.Keys`)::

    tw:s:<id>:events     Redis Stream, entry id "<seq>-0", field e = event JSON
    tw:s:<id>:meta       hash: status, last_seq, created_at, finished_at, meta (JSON),
                         conv, leased, cancel (reason), readers_left_at
    tw:s:<id>:lease      the producer's lease, PX expiry renewed by heartbeat()
    tw:s:<id>:readers    hash: process id -> live readers in that process
    tw:s:<id>:gone       tombstone, outlives the stream by `tombstone` s (410, not 404)
    tw:conv:<id>:active  the conversation's running stream id
    tw:leases            sorted set: running leased stream id -> lease end (Unix ms)
    tw:changes           Redis Stream, one entry per append script run:
                         stream id -> its last seq (MAXLEN ~ 2,000)
    tw:proc:<pid>        a process's liveness key (PX expiry) while it counts readers
    tw:proc:<pid>:wake   a process's wake-up stream for its own tail
    tw:cancel            pub/sub channel of cancel requests

Scripts (:mod:`~tokenwire.log.redis_scripts`): create, append, heartbeat, cancel,
reader join/leave/count each run as one atomic Lua script (``EVALSHA``). Append
numbers events ``last_seq + 1 …``, writes them with ``XADD`` and the explicit id
``<seq>-0`` (https://redis.io/docs/latest/commands/xadd/: an explicit id must be
greater than the stream's last one), so an entry id *is* the event's ``seq`` and
"events after N" is ``XRANGE key (N-0 +``. A terminal event sets the status,
deletes the lease, clears the conversation pointer, sets the retention expiries
and the tombstone; anything after it is refused, so ``producer_lost``, appended by
a reader through the same script once the lease key is gone, can never be a second
terminal.

Batching: the appends and lease heartbeats of all a process's streams go through
:class:`~tokenwire.log.redis_batch.Batcher`: one script run in flight, and what is
submitted meanwhile goes together in the next (one ``EVALSHA`` for many streams,
each numbered atomically as above). Idle, an append goes at once; under load the
batches grow with the round trip, and a producer waiting on its append is held back
(backpressure) instead of failing.

Live tail: one task per :class:`RedisStreamLog` (per process) runs ``XREAD BLOCK``
on ``tw:changes``, where every append script run lists the streams it appended to
with their last ``seq`` (https://redis.io/docs/latest/commands/xread/: with
``BLOCK`` the call returns as soon as one of the keys gets an entry with a greater
id, else ``nil`` after the timeout). A stream itself is named in that call only
when a waiting local reader has not seen its last change (or when it is first
followed: what was appended before), from the lowest position a reader waits
after; what arrives is decoded once and handed to the waiting readers' futures,
and a reader that was further behind fetches its batch with ``XRANGE … COUNT
batch``. So a process holds one blocking connection however many readers it
serves, a round costs what changed rather than one key per followed stream, and
following a stream costs no round trip per reader per event. A stream nobody
waits on stays followed for ``redis_tail._LINGER`` seconds (a reader between two
waits). A reader waiting on a stream the tail does not follow yet ``XADD``\\ s to
the process's wake-up stream, which the tail always reads too, so the blocked call
returns at once; the block lasts at most ``redis_tail._BLOCK_MS`` anyway.

Lease sweep: every heartbeat also records the lease's end in ``tw:leases`` (by
Redis's clock), the terminal event removes it. :meth:`RedisStreamLog.sweep_expired_leases`
takes the ids whose end has passed and runs the append script for each with "only
if the lease expired": so a dead producer's stream ends with ``producer_lost`` even
when nobody reads it, and exactly once however many processes sweep.

Cancel: ``request_cancel`` sets the flag and ``PUBLISH``\\ es on ``tw:cancel``
in one script; one pub/sub subscriber per process dispatches to local
``watch_cancel`` callbacks (https://redis.io/docs/latest/develop/interact/pubsub/:
delivery is at most once, only to connected subscribers). A watcher therefore
also reads the flag once the subscription is up, and all watched flags are read
again after every resubscription, so a request made before or during an outage
still arrives.

Failure behaviour: every redis-py exception is translated at one boundary
(:func:`~tokenwire.log.redis_core.unavailable`) into
:class:`~tokenwire.errors.LogUnavailableError`. The tail, the subscriber and the
process heartbeat catch errors, back off (up to ``redis_core.BACKOFF_MAX`` s) and
reconnect, so they survive a Redis restart. A reader whose Redis calls fail keeps
yielding its idle heartbeats and retries for ``outage_grace`` seconds before
raising. Nothing is persisted here: with a Redis that has no persistence, a restart
loses every stream (reads then answer 404). :meth:`RedisStreamLog.from_url` uses a
``BlockingConnectionPool`` (at most ``max_connections``) and no ``socket_timeout``:
with one, redis-py writes through :func:`asyncio.wait_for`, which on Python 3.11 can
swallow a task's cancellation (fixed in 3.12); every loop here also stops by itself
once the log is closed.

Deviations from :class:`~tokenwire.log.memory.MemoryStreamLog`:

- ``watch_cancel`` cannot raise :class:`~tokenwire.errors.StreamNotFoundError`
  (it is synchronous; checking needs a round trip), and a callback registered
  after the request runs shortly after (one round trip), not before it returns.
- A reader re-reads the lease of a stream that has none every
  ``redis_read._UNLEASED_RECHECK`` seconds, so it also notices a lease that appears and
  expires later (the memory log only looks after an append).
- A killed process's readers stop counting ``process_ttl`` seconds after it died;
  ``last_left_at`` is then the time this was noticed.
- :meth:`RedisStreamLog.statistics` counts this process only (``readers``,
  ``tailed_streams``, ``cancel_watchers``): global counts would need a scan.
- Not for Redis Cluster: scripts touch keys they build from the prefix.

Modules: this one is the facade (:class:`RedisStreamLog`); the parts it composes are
:mod:`~tokenwire.log.redis_core` (client, keys, scripts, append, the kept
connection of the append batch and the tail, error boundary),
:mod:`~tokenwire.log.redis_batch` (one round trip for many streams' calls),
:mod:`~tokenwire.log.redis_scripts` (the Lua scripts and key layout),
:mod:`~tokenwire.log.redis_tail` (the multiplexed ``XREAD`` tail),
:mod:`~tokenwire.log.redis_read` (one reader's fetch-and-follow loop),
:mod:`~tokenwire.log.redis_readers` (reader counts and the liveness key),
:mod:`~tokenwire.log.redis_cancel` (cancel requests and their subscriber) and
:mod:`~tokenwire.log.redis_lease` (heartbeat, ``producer_lost`` and the sweep).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, Callable, Coroutine, Mapping
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from tokenwire.errors import LogUnavailableError, StreamExpiredError, StreamNotFoundError
from tokenwire.events import Event, StreamStatus
from tokenwire.log.base import StreamInfo
from tokenwire.log.follow import Follower, ReadingFollower, Sink
from tokenwire.log.redis_cancel import CancelWatch
from tokenwire.log.redis_core import STOP_TIMEOUT, RedisCore, as_str, stop_task
from tokenwire.log.redis_lease import Leases
from tokenwire.log.redis_read import Follow, fetch
from tokenwire.log.redis_readers import ReaderCounts
from tokenwire.log.redis_tail import RedisTail

__all__ = ["RedisStreamLog"]

_PING_TIMEOUT = 2.0
"""Seconds :meth:`RedisStreamLog.ping` waits."""


class RedisStreamLog:
    """A :class:`~tokenwire.log.base.StreamLog` in Redis, shared by every process.

    Args:
        client: a ``redis.asyncio.Redis`` client; its connection pool bounds the
            connections used (the tail holds one while blocked, the cancel
            subscriber one). Responses may be bytes or decoded strings.
        prefix: prepended to every key and channel.
        retention: seconds a finished stream stays readable after its terminal event.
        clock: wall clock in Unix seconds for ``created_at``, ``finished_at`` and
            ``last_left_at``; leases and idle timers use Redis expiries and
            :func:`time.monotonic`.
        tombstone: seconds after expiry during which reads answer
            :class:`~tokenwire.errors.StreamExpiredError` rather than
            :class:`~tokenwire.errors.StreamNotFoundError`.
        process_ttl: seconds a killed process's readers keep counting.
        outage_grace: seconds a reader keeps retrying through a Redis outage before
            raising :class:`~tokenwire.errors.LogUnavailableError`.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "tw:",
        retention: float = 3600.0,
        clock: Callable[[], float] = time.time,
        tombstone: float = 86400.0,
        process_ttl: float = 10.0,
        outage_grace: float = 30.0,
    ) -> None:
        core = RedisCore(
            client, prefix=prefix, retention=retention, clock=clock, tombstone=tombstone
        )
        self._core = core
        self._client = client
        self._keys = core.keys
        self._outage_grace = outage_grace
        self.process_id = core.process_id
        """This instance's id in the reader counts and its wake-up key."""
        self._owns_client = False
        self._tail = RedisTail(core)
        self._counts = ReaderCounts(core, process_ttl)
        self._cancels = CancelWatch(core)
        self._leases = Leases(core, self._producer_lost)
        self.on_producer_lost: Callable[[str], Coroutine[Any, Any, None]] | None = None
        self.events_in_process = False
        """Awaited in a task of its own with the stream id each time a reader of
        this process appended ``producer_lost`` (see :class:`StreamLog`)."""
        self._lost_tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "tw:",
        retention: float = 3600.0,
        max_connections: int = 64,
        client_name: str | None = None,
    ) -> RedisStreamLog:
        """A log with its own client (closed by :meth:`close`).

        Args:
            url: ``redis://host:port/db`` or ``rediss://…``.
            prefix: prepended to every key and channel.
            retention: seconds a finished stream stays readable.
            max_connections: connections at most; callers wait for a free one
                (``BlockingConnectionPool``, no time limit: under overload an append
                waits its turn instead of failing the generation).
            client_name: ``CLIENT SETNAME`` of every connection (``None``: none).
        """
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=None,
            client_name=client_name,
            socket_connect_timeout=2.0,
            # No socket_timeout: with one, redis-py sends through asyncio.wait_for,
            # which on Python 3.11 can swallow a task's cancellation. Dead peers are
            # found by TCP keepalive and the health check instead.
            socket_timeout=None,
            socket_keepalive=True,
            health_check_interval=30,
            retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.2), 2),
        )
        log = cls(aioredis.Redis.from_pool(pool), prefix=prefix, retention=retention)
        log._owns_client = True
        return log

    async def ping(self) -> None:
        """Check that Redis answers, within ``_PING_TIMEOUT`` seconds (for ``/readyz``).

        Raises:
            LogUnavailableError: Redis is unreachable or failed.
        """
        try:
            async with asyncio.timeout(_PING_TIMEOUT):
                await self._core.call(self._client.ping())
        except TimeoutError as exc:
            raise LogUnavailableError("stream log unavailable: ping timed out") from exc

    async def create(self, stream_id: str, meta: Mapping[str, str]) -> None:
        core, keys = self._core, self._keys
        conversation_id = meta.get("conversation_id")
        created = await core.call(
            core.create_script(
                keys=[keys.meta(stream_id), keys.events(stream_id), keys.gone(stream_id)],
                args=[
                    repr(core.clock()),
                    json.dumps(dict(meta)),
                    conversation_id or "",
                    keys.active(conversation_id) if conversation_id is not None else "",
                    stream_id,
                ],
            )
        )
        if not created:
            raise ValueError(f"stream {stream_id!r} exists")

    async def append(self, stream_id: str, events: list[Event]) -> list[Event]:
        return await self._core.append(stream_id, events, lease_expired=False)

    async def read(
        self, stream_id: str, after: int = 0, *, batch: int = 256, idle: float | None = None
    ) -> AsyncGenerator[list[Event], None]:
        await self._counts.enter(stream_id)
        follow = Follow(
            self._core,
            self._tail.wait,
            self._leases.end_lost,
            self._outage_grace,
            stream_id=stream_id,
            after=after,
            batch=batch,
            idle=idle,
        )
        try:
            async with contextlib.aclosing(follow.chunks()) as chunks:
                async for chunk in chunks:
                    yield chunk
        finally:
            leave = self._core.spawn(self._counts.leave(stream_id))
            with contextlib.suppress(Exception):
                await asyncio.shield(leave)

    def follow(
        self,
        stream_id: str,
        after: int,
        sink: Sink,
        *,
        batch: int = 256,
        idle: float | None = None,
    ) -> Follower:
        """:meth:`read` in a task of its own, handing each batch to ``sink``."""
        return ReadingFollower(self.read(stream_id, after, batch=batch, idle=idle), sink)

    def _producer_lost(self, stream_id: str) -> None:
        """This process appended ``producer_lost``: run ``on_producer_lost`` in a task."""
        if self.on_producer_lost is not None:
            task = asyncio.create_task(self.on_producer_lost(stream_id))
            self._lost_tasks.add(task)
            task.add_done_callback(self._lost_tasks.discard)

    async def sweep_expired_leases(self) -> list[str]:
        """End every running stream whose producer's lease expired with
        ``error{producer_lost}`` (and ``on_producer_lost``), read or not; return the ids
        this call ended. Safe on several processes at once: the append script appends
        only while the lease key is absent and the stream is running, so one wins.

        Candidates come from the ``leases`` sorted set (at most ``_SWEEP_BATCH`` per
        call, see :mod:`~tokenwire.log.redis_lease`); ids of streams that ended or
        vanished are dropped from it.

        Raises:
            LogUnavailableError: Redis cannot be reached.
        """
        return await self._leases.sweep()

    async def events(
        self, stream_id: str, after: int = 0, limit: int | None = None, *, merged: bool = False
    ) -> list[Event]:
        events, status, _ = await fetch(self._core, stream_id, after, limit)
        if status is None:
            raise await self._core.missing(stream_id)
        return events

    async def wait(self, stream_id: str, after: int, timeout: float) -> list[Event]:
        events = await self.events(stream_id, after)
        if events or timeout <= 0 or (await self.info(stream_id)).status != "running":
            return events
        reader = self.read(stream_id, after, idle=timeout)
        try:
            batch = await reader.__anext__()
        except StopAsyncIteration:
            batch = []
        finally:
            await reader.aclose()
        return await self.events(stream_id, after) if batch else []

    async def info(self, stream_id: str) -> StreamInfo:
        raw = await self._core.call(self._client.hgetall(self._keys.meta(stream_id)))
        if not raw:
            raise await self._core.missing(stream_id)
        fields = {as_str(k): as_str(v) for k, v in raw.items()}
        finished_at = fields.get("finished_at")
        return StreamInfo(
            stream_id=stream_id,
            status=StreamStatus(fields["status"]),
            last_seq=int(fields["last_seq"]),
            meta=json.loads(fields.get("meta", "{}")),
            created_at=float(fields["created_at"]),
            finished_at=None if finished_at is None else float(finished_at),
        )

    async def active_stream(self, conversation_id: str) -> StreamInfo | None:
        stream_id = await self._core.call(self._client.get(self._keys.active(conversation_id)))
        if stream_id is None:
            return None
        try:
            info = await self.info(as_str(stream_id))
        except (StreamNotFoundError, StreamExpiredError):
            return None
        return info if info.status == "running" else None

    async def request_cancel(self, stream_id: str, reason: str) -> bool:
        return await self._cancels.request(stream_id, reason)

    def watch_cancel(self, stream_id: str, callback: Callable[[str], None]) -> Callable[[], None]:
        return self._cancels.watch(stream_id, callback)

    async def heartbeat(self, stream_id: str, ttl: float) -> None:
        await self._leases.heartbeat(stream_id, ttl)

    async def readers(self, stream_id: str) -> tuple[int, float | None]:
        return await self._counts.count(stream_id)

    def statistics(self) -> dict[str, int]:
        """This process's counts: live ``readers``, ``tailed_streams`` (with a waiting
        reader), ``cancel_watchers``."""
        return {
            "readers": self._counts.local,
            "tailed_streams": self._tail.waiting(),
            "cancel_watchers": self._cancels.count(),
        }

    async def close(self) -> None:
        """Stop the background tasks, delete this process's keys (its readers stop
        counting at once), close an owned client. Waits up to ``STOP_TIMEOUT``
        seconds for ``on_producer_lost`` tasks."""
        core = self._core
        core.closed = True
        if self._lost_tasks:  # let the owner finish the messages of lost producers
            await asyncio.wait(self._lost_tasks, timeout=STOP_TIMEOUT)
        await self._tail.close()
        tasks = [t for t in (self._counts.alive, *core.tasks) if t is not None]
        await asyncio.gather(self._cancels.close(), *(stop_task(t) for t in tasks))
        self._counts.alive = None
        await core.append_connection.release()
        with contextlib.suppress(redis.exceptions.RedisError, OSError):
            keys = self._keys
            await self._client.delete(keys.wake(self.process_id), keys.proc(self.process_id))
        if self._owns_client:
            await self._client.aclose()
