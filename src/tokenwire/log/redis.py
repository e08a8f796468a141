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

Live tail: one task per :class:`RedisStreamLog` (per process) runs ``XREAD BLOCK``
over every stream that has a waiting local reader, from the lowest position any of
them waits after (https://redis.io/docs/latest/commands/xread/: with ``BLOCK`` the
call returns as soon as one of the streams gets an entry with a greater id, else
``nil`` after the timeout). It decodes what arrives once and hands it to the waiting
readers' futures; a reader that was further behind fetches its batch with
``XRANGE … COUNT batch``. So a process holds one blocking connection however many
readers it serves, and following a stream costs no round trip per reader per
event. A reader waiting on a stream the tail does not follow yet ``XADD``\\ s to
the process's wake-up stream, which the tail always reads too, so the blocked call
returns at once; the block lasts at most ``_BLOCK_MS`` anyway.

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
(:func:`_unavailable`) into :class:`~tokenwire.errors.LogUnavailableError`. The
tail, the subscriber and the process heartbeat catch errors, back off (up to
``_BACKOFF_MAX`` s) and reconnect, so they survive a Redis restart. A reader whose
Redis calls fail keeps yielding its idle heartbeats and retries for
``outage_grace`` seconds before raising. Nothing is persisted here: with a Redis
that has no persistence, a restart loses every stream (reads then answer 404).
:meth:`RedisStreamLog.from_url` uses a ``BlockingConnectionPool`` (at most
``max_connections``) and no ``socket_timeout``: with one, redis-py writes through
:func:`asyncio.wait_for`, which on Python 3.11 can swallow a task's cancellation
(fixed in 3.12); every loop here also stops by itself once the log is closed.

Deviations from :class:`~tokenwire.log.memory.MemoryStreamLog`:

- ``watch_cancel`` cannot raise :class:`~tokenwire.errors.StreamNotFoundError`
  (it is synchronous; checking needs a round trip), and a callback registered
  after the request runs shortly after (one round trip), not before it returns.
- A reader re-reads the lease of a stream that has none every
  ``_UNLEASED_RECHECK`` seconds, so it also notices a lease that appears and
  expires later (the memory log only looks after an append).
- A killed process's readers stop counting ``process_ttl`` seconds after it died;
  ``last_left_at`` is then the time this was noticed.
- :meth:`RedisStreamLog.statistics` counts this process only (``readers``,
  ``tailed_streams``, ``cancel_watchers``): global counts would need a scan.
- Not for Redis Cluster: scripts touch keys they build from the prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Iterator, Mapping
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from tokenwire.errors import (
    LogUnavailableError,
    StreamExpiredError,
    StreamNotFoundError,
    TokenwireError,
)
from tokenwire.events import Cancelled, Error, Event, Finish, decode_event, encode_event, with_seq
from tokenwire.log import redis_scripts as scripts
from tokenwire.log.base import StreamInfo

__all__ = ["RedisStreamLog"]

logger = logging.getLogger("tokenwire.log.redis")

_OUTCOME: dict[type[Any], str] = {Finish: "completed", Error: "failed", Cancelled: "cancelled"}
_BLOCK_MS = 1000
"""Longest ``XREAD BLOCK`` of the tail, in milliseconds."""
_TAIL_COUNT = 1024
"""Most entries the tail takes per stream per ``XREAD`` (more come on the next call)."""
_UNLEASED_RECHECK = 2.0
"""Seconds between a reader's looks at the lease of a stream that has none."""
_BACKOFF_MIN, _BACKOFF_MAX = 0.05, 2.0
"""Seconds between reconnection attempts of the background tasks (doubling)."""
_STOP_TIMEOUT = 3.0
"""Seconds :meth:`RedisStreamLog.close` waits for each background task."""
_PING_TIMEOUT = 2.0
"""Seconds :meth:`RedisStreamLog.ping` waits."""
_SWEEP_BATCH = 1000
"""Most expired leases one :meth:`RedisStreamLog.sweep_expired_leases` call looks at."""


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    """The one boundary where redis-py exceptions become :class:`LogUnavailableError`."""
    try:
        yield
    except redis.exceptions.RedisError as exc:
        raise LogUnavailableError(f"stream log unavailable: {type(exc).__name__}") from exc
    except OSError as exc:  # a socket error redis-py did not wrap
        raise LogUnavailableError(f"stream log unavailable: {type(exc).__name__}") from exc


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _ms(seconds: float) -> int:
    """Seconds → whole milliseconds, at least 1 (``PX`` refuses 0)."""
    return max(1, math.ceil(seconds * 1000))


def _split(event: Event) -> tuple[bytes, bytes]:
    """The event's JSON around its ``seq`` value, for the append script to number.

    msgspec encodes ``seq`` (a base-class field) last: ``{… ,"seq":0}``.
    """
    data = encode_event(with_seq(event, 0))
    at = data.rfind(b'"seq":0')
    if at < 0:  # pragma: no cover - msgspec always writes the field
        raise ValueError("event JSON has no seq")
    return data[: at + 6], data[at + 7 :]


class _Tail:
    """The process's live tail: one ``XREAD BLOCK`` loop serving every waiting reader.

    ``_after[s]`` is where the tail reads stream ``s`` from; it never exceeds the
    position of a reader waiting on ``s`` (a reader asking from an earlier position
    is answered at once: it should fetch). A waiter's future gets the events after
    its position the tail saw, or ``[]`` meaning "something changed, fetch".
    """

    def __init__(self, log: RedisStreamLog) -> None:
        self._log = log
        self._after: dict[str, int] = {}
        self._waiters: dict[str, list[tuple[int, asyncio.Future[list[Event]]]]] = {}
        self._reading: frozenset[str] = frozenset()
        self._wake_id = "0-0"
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._poking = False

    def wait(self, stream_id: str, after: int) -> asyncio.Future[list[Event]]:
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

    def forget(self, stream_id: str, future: asyncio.Future[list[Event]]) -> None:
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
        self._log._spawn(self._send_poke())

    async def _send_poke(self) -> None:
        try:
            key = self._log._keys.wake(self._log.process_id)
            async with self._log._client.pipeline(transaction=False) as pipe:
                pipe.xadd(key, {"w": "1"}, maxlen=1, approximate=False)
                pipe.pexpire(key, 3_600_000)
                await pipe.execute()
        except redis.exceptions.RedisError:
            pass  # the tail's block times out after _BLOCK_MS anyway
        finally:
            self._poking = False

    async def _run(self) -> None:
        backoff = _BACKOFF_MIN
        while not self._log._closed:
            if not self._after:
                self._changed.clear()
                await self._changed.wait()
                continue
            try:
                await self._read_once()
                backoff = _BACKOFF_MIN
            except Exception as exc:  # Redis down, or a corrupt entry: never die
                logger.warning("stream log tail: %r; retrying in %.2f s", exc, backoff)
                self._reading = frozenset()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _read_once(self) -> None:
        keys = self._log._keys
        wake = keys.wake(self._log.process_id)
        positions = dict(self._after)
        self._reading = frozenset(positions)
        request: dict[Any, Any] = {keys.events(s): f"{n}-0" for s, n in positions.items()}
        request[wake] = self._wake_id
        by_key = {keys.events(s): s for s in positions}
        try:
            reply: Any = await self._log._client.xread(request, count=_TAIL_COUNT, block=_BLOCK_MS)
        finally:
            self._reading = frozenset()
        items = reply.items() if isinstance(reply, dict) else (reply or [])
        for key, entries in items:
            if not entries:
                continue
            name = _str(key)
            if name == wake:
                self._wake_id = _str(entries[-1][0])
                continue
            stream_id = by_key.get(name)
            if stream_id is not None:
                events = [decode_event(_field(fields)) for _, fields in entries]
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
        return len(self._after)

    async def close(self) -> None:
        if self._task is not None:
            await _stop(self._task)
        for waiters in self._waiters.values():
            for _, future in waiters:
                future.cancel()
        self._waiters.clear()
        self._after.clear()


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
        self._client = client
        self._keys = scripts.Keys(prefix)
        self._retention = retention
        self._clock = clock
        self._tombstone = tombstone
        self._process_ttl = process_ttl
        self._outage_grace = outage_grace
        self.process_id = uuid.uuid4().hex
        """This instance's id in the reader counts and its wake-up key."""
        self._owns_client = False
        self._create = client.register_script(scripts.CREATE)
        self._append_script = client.register_script(scripts.APPEND)
        self._heartbeat = client.register_script(scripts.HEARTBEAT)
        self._cancel = client.register_script(scripts.CANCEL)
        self._join = client.register_script(scripts.JOIN)
        self._leave_script = client.register_script(scripts.LEAVE)
        self._readers = client.register_script(scripts.READERS)
        self._sweep = client.register_script(scripts.SWEEP)
        self._tail: _Tail | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._local_readers = 0
        self._alive: asyncio.Task[None] | None = None
        self._watchers: dict[str, list[Callable[[str], None]]] = {}
        self._subscriber: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._closed = False
        self.on_producer_lost: Callable[[str], Coroutine[Any, Any, None]] | None = None
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

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _call(self, awaitable: Awaitable[Any]) -> Any:
        with _unavailable():
            return await awaitable

    async def _missing(self, stream_id: str, code: int = 0) -> TokenwireError:
        """The error for a stream whose hash is gone: 410 while its tombstone lasts."""
        if code == -2 or (
            code == 0 and await self._call(self._client.exists(self._keys.gone(stream_id)))
        ):
            return StreamExpiredError(stream_id)
        return StreamNotFoundError(stream_id)

    async def ping(self) -> None:
        """Check that Redis answers, within ``_PING_TIMEOUT`` seconds (for ``/readyz``).

        Raises:
            LogUnavailableError: Redis is unreachable or failed.
        """
        try:
            async with asyncio.timeout(_PING_TIMEOUT):
                await self._call(self._client.ping())
        except TimeoutError as exc:
            raise LogUnavailableError("stream log unavailable: ping timed out") from exc

    async def create(self, stream_id: str, meta: Mapping[str, str]) -> None:
        keys = self._keys
        conversation_id = meta.get("conversation_id")
        created = await self._call(
            self._create(
                keys=[keys.meta(stream_id), keys.events(stream_id), keys.gone(stream_id)],
                args=[
                    repr(self._clock()),
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
        return await self._append(stream_id, events, lease_expired=False)

    async def _append(
        self, stream_id: str, events: list[Event], *, lease_expired: bool
    ) -> list[Event]:
        keys = self._keys
        args: list[str | bytes | float | int] = [
            stream_id,
            repr(self._clock()),
            _ms(self._retention),
            _ms(self._retention + self._tombstone),
            "1" if lease_expired else "0",
            keys.conv_prefix(),
        ]
        for event in events:
            head, tail = _split(event)
            args += [_OUTCOME.get(type(event), ""), head, tail]
        code, first, count = await self._call(
            self._append_script(
                keys=[
                    keys.events(stream_id),
                    keys.meta(stream_id),
                    keys.lease(stream_id),
                    keys.readers(stream_id),
                    keys.gone(stream_id),
                    keys.leases(),
                ],
                args=args,
            )
        )
        if code < 0:
            raise await self._missing(stream_id, code)
        return [with_seq(events[i], first + i) for i in range(count)]

    async def _fetch(
        self, stream_id: str, after: int, count: int | None
    ) -> tuple[list[Event], str | None, float]:
        """Events with ``seq > after`` (at most ``count``), the status (``None``: no
        such stream) and the monotonic time at which to look at the lease next, in
        one ``MULTI`` transaction (``-inf``: the lease has expired)."""
        keys = self._keys
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.xrange(keys.events(stream_id), f"({after}-0", "+", count=count)
            pipe.hmget(keys.meta(stream_id), ["status", "leased"])
            pipe.pttl(keys.lease(stream_id))
            entries, (status, leased), pttl = await self._call(pipe.execute())
        events = [decode_event(_field(fields)) for _, fields in entries]
        now = time.monotonic()
        if leased is None:
            lease_at = now + _UNLEASED_RECHECK
        elif pttl == -2:
            lease_at = -math.inf  # expired: the reader ends it with producer_lost
        else:
            lease_at = now + (pttl / 1000 if pttl >= 0 else _UNLEASED_RECHECK)
        return events, None if status is None else _str(status), lease_at

    async def read(
        self, stream_id: str, after: int = 0, *, batch: int = 256, idle: float | None = None
    ) -> AsyncGenerator[list[Event], None]:
        await self._enter(stream_id)
        try:
            async with contextlib.aclosing(self._follow(stream_id, after, batch, idle)) as chunks:
                async for chunk in chunks:
                    yield chunk
        finally:
            leave = self._spawn(self._leave(stream_id))
            with contextlib.suppress(Exception):
                await asyncio.shield(leave)

    async def _follow(
        self, stream_id: str, after: int, batch: int, idle: float | None
    ) -> AsyncGenerator[list[Event], None]:
        quiet_until = math.inf if idle is None else time.monotonic() + idle
        lease_at = math.inf
        pending: list[Event] = []
        must_fetch = True
        down_since: float | None = None
        backoff = _BACKOFF_MIN
        while True:
            chunk: list[Event] = []
            if pending:
                chunk, pending = pending[:batch], pending[batch:]
            elif must_fetch:
                try:
                    chunk, status, lease_at = await self._fetch(stream_id, after, batch)
                except LogUnavailableError:
                    now = time.monotonic()
                    down_since = now if down_since is None else down_since
                    if now - down_since > self._outage_grace:
                        raise
                    if now >= quiet_until:
                        yield []
                        quiet_until = now + (idle or 0.0)
                    await asyncio.sleep(min(backoff, max(0.0, quiet_until - now)))
                    backoff = min(backoff * 2, _BACKOFF_MAX)
                    continue
                down_since, backoff = None, _BACKOFF_MIN
                if status is None:
                    raise await self._missing(stream_id)
                must_fetch = len(chunk) == batch
                if not chunk and status != "running":
                    return
            if chunk:
                after = chunk[-1].seq
                yield chunk
                if type(chunk[-1]) in _OUTCOME:
                    return
                if idle is not None:
                    quiet_until = time.monotonic() + idle
                continue
            now = time.monotonic()
            if now >= quiet_until:
                yield []
                quiet_until = now + (idle or 0.0)
                continue
            if now >= lease_at:  # expired (-inf) or due for another look
                if lease_at == -math.inf:
                    await self._end_lost(stream_id)
                lease_at, must_fetch = math.inf, True
                continue
            pending = await self._wait(stream_id, after, min(quiet_until, lease_at) - now)
            must_fetch = not pending

    async def _end_lost(self, stream_id: str) -> bool:
        """Append ``producer_lost`` if the lease is still expired (atomic: once);
        ``True`` when this call appended it."""
        try:
            appended = await self._append(stream_id, [_lost()], lease_expired=True)
        except LogUnavailableError:
            return False  # the reader retries through the outage
        if appended and self.on_producer_lost is not None:
            task = asyncio.create_task(self.on_producer_lost(stream_id))
            self._lost_tasks.add(task)
            task.add_done_callback(self._lost_tasks.discard)
        return bool(appended)

    async def sweep_expired_leases(self) -> list[str]:
        """End every running stream whose producer's lease expired with
        ``error{producer_lost}`` (and ``on_producer_lost``), read or not; return the ids
        this call ended. Safe on several processes at once: the append script appends
        only while the lease key is absent and the stream is running, so one wins.

        Candidates come from the ``leases`` sorted set (at most ``_SWEEP_BATCH`` per
        call); ids of streams that ended or vanished are dropped from it.

        Raises:
            LogUnavailableError: Redis cannot be reached.
        """
        leases = self._keys.leases()
        due = await self._call(self._sweep(keys=[leases], args=[_SWEEP_BATCH]))
        lost: list[str] = []
        stale: list[str] = []
        for stream_id in map(_str, due):
            try:
                if await self._end_lost(stream_id):
                    lost.append(stream_id)
                elif (await self.info(stream_id)).status != "running":
                    stale.append(stream_id)
            except (StreamNotFoundError, StreamExpiredError):
                stale.append(stream_id)
        if stale:
            await self._call(self._client.zrem(leases, *stale))
        return lost

    async def _wait(self, stream_id: str, after: int, timeout: float) -> list[Event]:
        """Events after ``after`` from the tail, ``[]`` when to fetch (or timed out)."""
        if self._tail is None:
            self._tail = _Tail(self)
        future = self._tail.wait(stream_id, after)
        try:
            async with asyncio.timeout(None if timeout == math.inf else timeout):
                return await future
        except TimeoutError:
            return []
        finally:
            self._tail.forget(stream_id, future)

    async def _enter(self, stream_id: str) -> None:
        keys = self._keys
        code = await self._call(
            self._join(
                keys=[
                    keys.readers(stream_id),
                    keys.proc(self.process_id),
                    keys.meta(stream_id),
                    keys.gone(stream_id),
                ],
                args=[self.process_id, _ms(self._process_ttl)],
            )
        )
        if code < 0:
            raise await self._missing(stream_id, code)
        self._local_readers += 1
        if self._alive is None:
            self._alive = asyncio.create_task(self._keep_alive(), name="tokenwire-redis-alive")

    async def _leave(self, stream_id: str) -> None:
        self._local_readers -= 1
        keys = self._keys
        try:
            await self._leave_script(
                keys=[keys.readers(stream_id), keys.meta(stream_id)],
                args=[self.process_id, repr(self._clock()), keys.proc_prefix()],
            )
        except redis.exceptions.RedisError as exc:
            logger.warning("could not uncount a reader of %s: %s", stream_id, exc)

    async def _keep_alive(self) -> None:
        """Renew this process's liveness key while it may count readers."""
        key = self._keys.proc(self.process_id)
        while not self._closed:
            with contextlib.suppress(redis.exceptions.RedisError):
                await self._client.set(key, "1", px=_ms(self._process_ttl))
            await asyncio.sleep(self._process_ttl / 3)

    async def events(self, stream_id: str, after: int = 0, limit: int | None = None) -> list[Event]:
        events, status, _ = await self._fetch(stream_id, after, limit)
        if status is None:
            raise await self._missing(stream_id)
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
        raw = await self._call(self._client.hgetall(self._keys.meta(stream_id)))
        if not raw:
            raise await self._missing(stream_id)
        fields = {_str(k): _str(v) for k, v in raw.items()}
        finished_at = fields.get("finished_at")
        return StreamInfo(
            stream_id=stream_id,
            status=fields["status"],
            last_seq=int(fields["last_seq"]),
            meta=json.loads(fields.get("meta", "{}")),
            created_at=float(fields["created_at"]),
            finished_at=None if finished_at is None else float(finished_at),
        )

    async def active_stream(self, conversation_id: str) -> StreamInfo | None:
        stream_id = await self._call(self._client.get(self._keys.active(conversation_id)))
        if stream_id is None:
            return None
        try:
            info = await self.info(_str(stream_id))
        except (StreamNotFoundError, StreamExpiredError):
            return None
        return info if info.status == "running" else None

    async def request_cancel(self, stream_id: str, reason: str) -> bool:
        keys = self._keys
        code = await self._call(
            self._cancel(
                keys=[keys.meta(stream_id), keys.gone(stream_id)],
                args=[reason, keys.cancel_channel(), json.dumps([stream_id, reason])],
            )
        )
        if code < 0:
            raise await self._missing(stream_id, code)
        return bool(code)

    def watch_cancel(self, stream_id: str, callback: Callable[[str], None]) -> Callable[[], None]:
        self._watchers.setdefault(stream_id, []).append(callback)
        if self._subscriber is None:
            self._subscriber = asyncio.create_task(self._subscribe(), name="tokenwire-redis-cancel")
        self._spawn(self._check_cancel([stream_id]))

        def unwatch() -> None:
            callbacks = self._watchers.get(stream_id)
            if callbacks is not None and callback in callbacks:
                callbacks.remove(callback)
                if not callbacks:
                    del self._watchers[stream_id]

        return unwatch

    def _dispatch(self, stream_id: str, reason: str) -> None:
        for callback in self._watchers.pop(stream_id, []):
            try:
                callback(reason)
            except Exception:
                logger.exception("cancel callback failed")

    async def _check_cancel(self, stream_ids: list[str]) -> None:
        """Dispatch the cancel requests already made (once subscribed, so none is missed)."""
        await self._subscribed.wait()
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for stream_id in stream_ids:
                    pipe.hget(self._keys.meta(stream_id), "cancel")
                reasons = await pipe.execute()
        except redis.exceptions.RedisError:
            return  # checked again after the subscriber reconnects
        for stream_id, reason in zip(stream_ids, reasons, strict=True):
            if reason is not None:
                self._dispatch(stream_id, _str(reason))

    async def _subscribe(self) -> None:
        """Follow the cancel channel; reconnect and re-check every flag after a failure."""
        backoff = _BACKOFF_MIN
        channel = self._keys.cancel_channel()
        while not self._closed:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                self._subscribed.set()
                if self._watchers:
                    self._spawn(self._check_cancel(list(self._watchers)))
                backoff = _BACKOFF_MIN
                while not self._closed:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        stream_id, reason = json.loads(message["data"])
                        self._dispatch(stream_id, reason)
            except Exception as exc:  # Redis down, or a foreign message: never die
                logger.warning("cancel subscriber: %r; retrying in %.2f s", exc, backoff)
            finally:
                self._subscribed.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    async def heartbeat(self, stream_id: str, ttl: float) -> None:
        keys = self._keys
        code = await self._call(
            self._heartbeat(
                keys=[
                    keys.meta(stream_id),
                    keys.lease(stream_id),
                    keys.gone(stream_id),
                    keys.leases(),
                ],
                args=[_ms(ttl), stream_id],
            )
        )
        if code < 0:
            raise await self._missing(stream_id, code)

    async def readers(self, stream_id: str) -> tuple[int, float | None]:
        keys = self._keys
        code, total, left_at = await self._call(
            self._readers(
                keys=[keys.readers(stream_id), keys.meta(stream_id), keys.gone(stream_id)],
                args=[keys.proc_prefix(), repr(self._clock())],
            )
        )
        if code < 0:
            raise await self._missing(stream_id, code)
        left = _str(left_at)
        return int(total), float(left) if left else None

    def statistics(self) -> dict[str, int]:
        """This process's counts: live ``readers``, ``tailed_streams`` (with a waiting
        reader), ``cancel_watchers``."""
        return {
            "readers": self._local_readers,
            "tailed_streams": 0 if self._tail is None else self._tail.waiting(),
            "cancel_watchers": sum(len(w) for w in self._watchers.values()),
        }

    async def close(self) -> None:
        """Stop the background tasks, delete this process's keys (its readers stop
        counting at once), close an owned client. Waits up to ``_STOP_TIMEOUT``
        seconds for ``on_producer_lost`` tasks."""
        self._closed = True
        if self._lost_tasks:  # let the owner finish the messages of lost producers
            await asyncio.wait(self._lost_tasks, timeout=_STOP_TIMEOUT)
        if self._tail is not None:
            await self._tail.close()
        tasks = [t for t in (self._subscriber, self._alive, *self._tasks) if t is not None]
        await asyncio.gather(*(_stop(t) for t in tasks))
        self._subscriber = self._alive = None
        self._watchers.clear()
        with contextlib.suppress(redis.exceptions.RedisError, OSError):
            keys = self._keys
            await self._client.delete(keys.wake(self.process_id), keys.proc(self.process_id))
        if self._owns_client:
            await self._client.aclose()


def _field(fields: Mapping[Any, Any]) -> bytes | str:
    """The ``e`` field of a stream entry, whether the client decodes responses or not."""
    value = fields.get(b"e")
    return fields["e"] if value is None else value  # type: ignore[no-any-return]


async def _stop(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait for it, at most ``_STOP_TIMEOUT`` seconds.

    Re-cancels until it ends: a cancellation can be lost inside a Redis call (the
    loops also stop by themselves once the log is closed)."""
    deadline = time.monotonic() + _STOP_TIMEOUT
    while not task.done() and time.monotonic() < deadline:
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: never "exception was never retrieved"


def _lost() -> Error:
    return Error(
        code="producer_lost", message="the generation stopped unexpectedly", retryable=True
    )
