"""What every part of the Redis stream log shares: the client, the keys, the
registered scripts, the append, and the one error boundary (see :mod:`tokenwire.log.redis`)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from typing import Any

import hiredis
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.connection import AbstractConnection

from tokenwire.errors import (
    LogUnavailableError,
    StreamExpiredError,
    StreamNotFoundError,
    TokenwireError,
)
from tokenwire.events import (
    Error,
    Event,
    StreamStatus,
    encode_event,
    is_terminal,
    outcome,
    with_seq,
)
from tokenwire.log import redis_scripts as scripts
from tokenwire.log.redis_batch import Batcher

__all__ = ["OwnConnection", "RedisCore"]

BACKOFF_MIN, BACKOFF_MAX = 0.05, 2.0
"""Seconds between reconnection attempts of the background tasks (doubling)."""
_BATCH_LIMIT = 256
"""Most streams per append or heartbeat script run."""
STOP_TIMEOUT = 3.0
"""Seconds :meth:`~tokenwire.log.redis.RedisStreamLog.close` waits for each background task."""


@contextlib.contextmanager
def unavailable(
    error: type[TokenwireError] = LogUnavailableError, what: str = "stream log"
) -> Iterator[None]:
    """The boundary where redis-py exceptions become ``error`` (the stream log's
    :class:`LogUnavailableError` by default; the job queue and the Pusher bus use it
    with theirs), raised ``from`` the original with a message naming ``what`` and the
    exception's class only."""
    try:
        yield
    except (redis.exceptions.RedisError, OSError) as exc:  # OSError: a socket error not wrapped
        raise error(f"{what} unavailable: {type(exc).__name__}") from exc


def as_str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def ms(seconds: float) -> int:
    """Seconds → whole milliseconds, at least 1 (``PX`` refuses 0)."""
    return max(1, math.ceil(seconds * 1000))


_OUTCOME_CODES = {
    StreamStatus.COMPLETED: b"c",
    StreamStatus.FAILED: b"f",
    StreamStatus.CANCELLED: b"x",
}
"""The first letter of an event's line in the append script (``-``: not terminal)."""


def event_line(event: Event) -> bytes:
    """The event as one line of the append script's ``events`` argument: its outcome
    code, then its JSON without the final ``0}`` for the script to number.

    msgspec encodes ``seq`` (a base-class field) last, so the JSON ends ``"seq":0}``;
    it escapes control characters in strings, so the JSON holds no raw newline.
    """
    data = encode_event(with_seq(event, 0))
    if not data.endswith(b'"seq":0}'):  # pragma: no cover - msgspec always writes it last
        raise ValueError("event JSON does not end with seq")
    code = _OUTCOME_CODES[outcome(event)] if is_terminal(event) else b"-"
    return code + data[:-2]


def entry_field(fields: Mapping[Any, Any]) -> bytes | str:
    """The ``e`` field of a stream entry, whether the client decodes responses or not."""
    value = fields.get(b"e")
    return fields["e"] if value is None else value  # type: ignore[no-any-return]


class OwnConnection:
    """A connection of the client's pool kept by one caller that sends one command at
    a time (the append batch, the live tail), which sends it without redis-py's
    per-command layers.

    redis-py's ``execute_command`` checks a connection out of the pool and back, encodes
    every argument in Python and records observability data on every call: about half
    of a round trip's CPU in this process (issue #12: a 31-argument ``EVALSHA`` took
    122 µs of CPU that way against 61 µs for the same bytes sent on a kept
    connection). Here the command is packed by hiredis in one C call and written on
    the kept connection; the reply is read by the connection's own parser (no
    response callbacks: ``XREAD`` entries come as ``[id, [field, value, …]]``).
    Failures are as redis-py's: a connection error closes the connection and the
    command is sent again as the pool's ``Retry`` says; a cancelled call closes it (a
    reply may be pending); the next call reconnects.

    Args:
        pool: the client's connection pool; the connection is taken on first use and
            given back by :meth:`release`.
    """

    __slots__ = ("_connection", "_pool")

    def __init__(self, pool: aioredis.ConnectionPool) -> None:
        self._pool = pool
        self._connection: AbstractConnection | None = None

    async def execute(self, *args: str | bytes | int | float) -> Any:
        """Send one command (``args[0]`` its name) and return its raw reply.

        Raises:
            redis.exceptions.RedisError: the reply is an error (``NoScriptError`` …),
                or the connection failed after the retries.
            OSError: a socket error redis-py did not wrap.
        """
        connection = self._connection
        if connection is None:
            connection = self._connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        # hiredis's stub types the tuple as one element; any length is packed.
        packed = hiredis.pack_command(args)  # type: ignore[arg-type]

        async def attempt() -> Any:
            await connection.send_packed_command(packed)
            return await connection.read_response()

        async def fail(error: Exception) -> None:
            await connection.disconnect(error=error)

        return await connection.retry.call_with_retry(attempt, fail)

    async def release(self) -> None:
        """Give the connection back to the pool (the next call takes one again)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            await self._pool.release(connection)


async def stop_task(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait for it, at most ``STOP_TIMEOUT`` seconds.

    Re-cancels until it ends: a cancellation can be lost inside a Redis call (the
    loops also stop by themselves once the log is closed)."""
    deadline = time.monotonic() + STOP_TIMEOUT
    while not task.done() and time.monotonic() < deadline:
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: never "exception was never retrieved"


def lost_error() -> Error:
    """The terminal event of a stream whose producer's lease expired."""
    return Error(
        code="producer_lost", message="the generation stopped unexpectedly", retryable=True
    )


class RedisCore:
    """The client, keys and scripts of one :class:`~tokenwire.log.redis.RedisStreamLog`,
    its background tasks and its ``closed`` flag (every loop stops once it is set).

    Args: as :class:`~tokenwire.log.redis.RedisStreamLog`.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str,
        retention: float,
        clock: Callable[[], float],
        tombstone: float,
    ) -> None:
        self.client = client
        self.keys = scripts.Keys(prefix)
        self.clock = clock
        self.retention = retention
        self.tombstone = tombstone
        self.process_id = uuid.uuid4().hex
        self.closed = False
        self.tasks: set[asyncio.Task[Any]] = set()
        self.create_script = client.register_script(scripts.CREATE)
        self.append_script = client.register_script(scripts.APPEND)
        self.heartbeat_script = client.register_script(scripts.HEARTBEAT)
        self.cancel_script = client.register_script(scripts.CANCEL)
        self.join_script = client.register_script(scripts.JOIN)
        self.leave_script = client.register_script(scripts.LEAVE)
        self.readers_script = client.register_script(scripts.READERS)
        self.sweep_script = client.register_script(scripts.SWEEP)
        self.append_connection = OwnConnection(client.connection_pool)
        """The append batch's connection (one script run in flight)."""
        self._appends = Batcher(self._append_batch, _BATCH_LIMIT, self.spawn)
        self._heartbeats = Batcher(self._heartbeat_batch, _BATCH_LIMIT, self.spawn)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in a task that :meth:`stop_tasks` stops."""
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def call(self, awaitable: Awaitable[Any]) -> Any:
        """Await a Redis call; raises :class:`LogUnavailableError` for its failures."""
        with unavailable():
            return await awaitable

    async def missing(self, stream_id: str, code: int = 0) -> TokenwireError:
        """The error for a stream whose hash is gone: 410 while its tombstone lasts."""
        if code == -2 or (
            code == 0 and await self.call(self.client.exists(self.keys.gone(stream_id)))
        ):
            return StreamExpiredError(stream_id)
        return StreamNotFoundError(stream_id)

    async def append(
        self, stream_id: str, events: list[Event], *, lease_expired: bool
    ) -> list[Event]:
        """Append through the process's batch (one script run for every stream's
        waiting appends); ``lease_expired``: only while the lease key is absent."""
        lines = b"\n".join([event_line(event) for event in events])
        item = (stream_id, b"1" if lease_expired else b"0", lines)
        code, first, count = await self._appends.submit(item)
        if code < 0:
            raise await self.missing(stream_id, code)
        return [with_seq(events[i], first + i) for i in range(count)]

    async def _append_batch(
        self, batch: list[tuple[str, bytes, bytes]]
    ) -> list[tuple[int, int, int]]:
        args: list[str | bytes | int] = [
            1,  # numkeys
            self.keys.leases(),
            repr(self.clock()),
            ms(self.retention),
            ms(self.retention + self.tombstone),
            self.keys.prefix,
        ]
        for item in batch:
            args += item
        script, connection = self.append_script, self.append_connection
        with unavailable():
            try:
                flat = await connection.execute("EVALSHA", script.sha, *args)
            except redis.exceptions.NoScriptError:  # Redis restarted, or its cache flushed
                await self.client.script_load(scripts.APPEND)  # its sha is script.sha
                flat = await connection.execute("EVALSHA", script.sha, *args)
        return [(flat[i], flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3)]

    async def heartbeat(self, stream_id: str, ttl: float) -> int:
        """Renew one lease through the process's heartbeat batch; the script's code."""
        return await self._heartbeats.submit((stream_id, ms(ttl)))

    async def _heartbeat_batch(self, batch: list[tuple[str, int]]) -> list[int]:
        keys = self.keys
        script_keys = [keys.leases()]
        args: list[str | int] = []
        for stream_id, ttl_ms in batch:
            script_keys += [keys.meta(stream_id), keys.lease(stream_id), keys.gone(stream_id)]
            args += [stream_id, ttl_ms]
        return list(await self.call(self.heartbeat_script(keys=script_keys, args=args)))
