"""Limits on what one caller may start (docs/api.md, "Limits").

Every endpoint that starts a generation asks :meth:`Limits.admit` first, with the
caller's key (their identity id, or ``ip:<address>`` when anonymous), before
anything is created. Three limits, each off or on by its setting:

- ``TOKENWIRE_LIMIT_REQUESTS`` (``N/second|minute|hour|day``): starts per period,
  a moving window of the ``limits`` library.
- ``TOKENWIRE_LIMIT_CONCURRENT_STREAMS`` (default 8; 0 = none): generations
  running at once. Each running generation holds a *slot*: a member of a set with
  an expiry (a lease), renewed every ``lease_ttl / 3`` seconds by the node that
  started it while the generation runs and removed when it ends, however it ends.
  A slot whose node died is not renewed and expires after ``lease_ttl`` seconds;
  a refusal first drops the slots of streams the log says have ended. No counter
  that a lost decrement could leave too high.
- ``TOKENWIRE_LIMIT_TOKENS_PER_DAY``: output tokens per UTC day, charged when a
  generation ends (from its last ``usage``/``finish``); a caller at or over it is
  refused until the next UTC midnight. A generation running when the budget runs
  out is not stopped, so the day's total may pass the limit by what was running.

Storage: this process's memory, or Redis when ``TOKENWIRE_LOG_URL`` is
``redis://`` (keys under ``<log_prefix>limits``), so the limits hold across nodes.

A refusal raises :class:`RateLimitedError`; each surface answers it as 429 with
``Retry-After`` (whole seconds) in its own error shape
(:func:`tokenwire.server.errors.error_response` for the native API's).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from limits import RateLimitItem, RateLimitItemPerDay, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from tokenwire.errors import RateLimitedError, TokenwireError
from tokenwire.settings import LIMIT_GRAMMAR

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from tokenwire.settings import Settings

__all__ = [
    "Limit",
    "Limits",
    "RateLimitedError",
    "Ticket",
    "parse_rate",
]

logger = logging.getLogger("tokenwire.limits")

Limit = Literal["requests", "concurrent_streams", "tokens_per_day"]
CONCURRENT_RETRY_AFTER = 1
"""Seconds in ``Retry-After`` when refused for concurrent streams: a slot frees
whenever one of the caller's generations ends, which cannot be foreseen."""


def parse_rate(value: str) -> RateLimitItem:
    """``"120/minute"`` as a ``limits`` item.

    Raises:
        ValueError: ``value`` does not match :data:`LIMIT_GRAMMAR`.
    """
    match = LIMIT_GRAMMAR.fullmatch(value)
    if match is None:
        raise ValueError(f"{value!r} is not N/second, N/minute, N/hour or N/day")
    return parse(f"{match.group(1)}/{match.group(2)}")


class Ticket:
    """An admitted start: the id its stream will have and the slot it holds."""

    __slots__ = ("key", "started", "stream_id")

    def __init__(self, key: str, stream_id: str) -> None:
        self.key = key
        """The caller's key (identity id, or ``ip:<address>``)."""
        self.stream_id = stream_id
        """The id the started stream takes (and its slot's name)."""
        self.started = False


IsRunning = Callable[[str], Awaitable[bool]]
"""``async (stream_id) -> bool``: the stream is known and has no terminal event yet."""


class Limits:
    """This instance's limits; one per :class:`~tokenwire.Tokenwire`.

    Args:
        settings: the ``limit_*`` settings, ``lease_ttl`` (slot lifetime, seconds),
            ``log_url`` and ``log_prefix`` (storage).
        is_running: asks the stream log whether a stream still runs.
        output_tokens: ``async (stream_id) -> int``: the output tokens a finished
            stream used (0 when unknown).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        is_running: IsRunning,
        output_tokens: Callable[[str], Awaitable[int]],
    ) -> None:
        self.requests = parse_rate(settings.limit_requests) if settings.limit_requests else None
        self.concurrent = settings.limit_concurrent_streams
        self.tokens_per_day = settings.limit_tokens_per_day
        self.slot_ttl = settings.lease_ttl
        self._is_running = is_running
        self._output_tokens = output_tokens
        self.on_refused: list[Callable[[Limit], None]] = []
        """Called with the limit at each refusal (the app counts them for ``/metrics``)."""
        self.refused: dict[Limit, int] = {}
        storage: Storage
        url = settings.log_url
        if url.startswith(("redis://", "rediss://")):
            prefix = f"{settings.log_prefix}limits"
            storage = RedisStorage(f"async+{url}", implementation="redispy", key_prefix=prefix)
            self._slots: _Slots = _RedisSlots(url, f"{prefix}:streams:")
        else:
            storage = MemoryStorage()
            self._slots = _MemorySlots()
        self._storage = storage
        self._moving = MovingWindowRateLimiter(storage)
        self._fixed = FixedWindowRateLimiter(storage)
        self._held: dict[str, tuple[Ticket, bool]] = {}
        """stream id -> (ticket, ends here: its end is reported by :meth:`finished`)."""
        self._renewer: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()

    # -- admission ----------------------------------------------------------------

    async def admit(self, key: str, stream_id: str) -> Ticket:
        """Admit a start by ``key`` whose stream will be ``stream_id``.

        Raises:
            RateLimitedError: a limit refuses it; nothing is held then.
        """
        ticket = Ticket(key, stream_id)
        if self.tokens_per_day is not None:
            # A full concurrent-streams slot set settles by itself (``_acquire``); asking
            # the log about every stream the key holds, on every start, cost O(streams).
            await self._settle(key)
            item = RateLimitItemPerDay(self.tokens_per_day)
            if not await self._fixed.test(item, "tokens", key, _utc_day()):
                raise self._refuse(
                    "tokens_per_day",
                    _seconds_to_utc_midnight(),
                    f"output token limit of {self.tokens_per_day} per UTC day reached",
                )
        if self.requests is not None and not await self._moving.hit(self.requests, "req", key):
            stats = await self._moving.get_window_stats(self.requests, "req", key)
            raise self._refuse(
                "requests",
                math.ceil(stats.reset_time - time.time()),
                f"request limit of {self.requests.amount} per "
                f"{self.requests.GRANULARITY.name} reached",
            )
        if self.concurrent and not await self._acquire(ticket):
            raise self._refuse(
                "concurrent_streams",
                CONCURRENT_RETRY_AFTER,
                f"limit of {self.concurrent} concurrent generations reached; "
                "wait for one to end or cancel one",
            )
        return ticket

    async def _acquire(self, ticket: Ticket) -> bool:
        held = await self._slots.acquire(
            ticket.key, ticket.stream_id, self.concurrent, self.slot_ttl
        )
        if held is None:
            return True
        # Full: drop the slots of streams that have ended (a release not seen yet).
        ended = [s for s in held if not await self._maybe_running(s)]
        if not ended:
            return False
        await self._slots.release(ticket.key, ended)
        return (
            await self._slots.acquire(ticket.key, ticket.stream_id, self.concurrent, self.slot_ttl)
            is None
        )

    async def _settle(self, key: str) -> None:
        """Account now for ``key``'s generations started here that the log says have
        ended, so that a caller who saw the terminal event finds the slot free and the
        tokens charged (the producer task ends a little after its terminal event)."""
        if self._background:  # the accounting of generations that have just ended
            await asyncio.gather(*list(self._background), return_exceptions=True)
        for ticket, _ in [held for held in self._held.values() if held[0].key == key]:
            if not await self._maybe_running(ticket.stream_id):
                await self._finish(ticket)

    async def _maybe_running(self, stream_id: str) -> bool:
        try:
            return await self._is_running(stream_id)
        except TokenwireError:  # unknown: not created yet (being started) or expired
            return True

    def _refuse(self, limit: Limit, retry_after: int, message: str) -> RateLimitedError:
        self.refused[limit] = self.refused.get(limit, 0) + 1
        for callback in self.on_refused:
            callback(limit)
        return RateLimitedError(limit, retry_after, message)

    # -- running generations ------------------------------------------------------

    def started(self, ticket: Ticket, *, ends_here: bool) -> None:
        """The ticket's stream started. ``ends_here``: this process learns of its end
        through :meth:`finished`; otherwise (a worker runs it) the log is asked."""
        ticket.started = True
        self._held[ticket.stream_id] = (ticket, ends_here)
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew(), name="tokenwire-limits")

    def finished(self, ticket: Ticket) -> None:
        """The ticket's stream ended (or never started): free its slot, charge its tokens."""
        task = asyncio.create_task(self._finish(ticket))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _finish(self, ticket: Ticket) -> None:
        if ticket.started and self._held.pop(ticket.stream_id, None) is None:
            return  # accounted for already
        try:
            if self.concurrent:
                await self._slots.release(ticket.key, [ticket.stream_id])
            if self.tokens_per_day is not None and ticket.started:
                used = await self._output_tokens(ticket.stream_id)
                if used > 0:
                    item = RateLimitItemPerDay(self.tokens_per_day)
                    await self._fixed.hit(item, "tokens", ticket.key, _utc_day(), cost=used)
        except Exception:  # the slot expires by itself; the charge is lost
            logger.warning("could not account for stream %s", ticket.stream_id, exc_info=True)

    async def _renew(self) -> None:
        """Renew the slots of this process's running generations; notice the end of
        those a worker runs."""
        interval = self.slot_ttl / 3
        while self._held:
            await asyncio.sleep(interval)
            try:
                by_key: dict[str, list[str]] = {}
                for stream_id, (ticket, ends_here) in list(self._held.items()):
                    if not ends_here and not await self._maybe_running(stream_id):
                        await self._finish(ticket)
                        continue
                    by_key.setdefault(ticket.key, []).append(stream_id)
                if self.concurrent:
                    await self._slots.renew(by_key, self.slot_ttl)
            except Exception:  # Redis down: tried again next round (slots lapse meanwhile)
                logger.warning("could not renew the concurrent-streams slots", exc_info=True)

    def statistics(self) -> dict[str, int]:
        """``held``: slots this process renews; ``refused_<limit>``: refusals so far."""
        return {"held": len(self._held), **{f"refused_{k}": v for k, v in self.refused.items()}}

    async def close(self) -> None:
        """Finish pending accounting; stop renewing (held slots expire by themselves)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        await self._slots.close()
        await _close_storage(self._storage)


async def _close_storage(storage: Storage) -> None:
    """Stop the ``limits`` storage's own resources (it has no public close): the
    memory storage's expiry task, the Redis storage's client."""
    timer = getattr(storage, "timer", None)
    if isinstance(timer, asyncio.Task):
        timer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await timer
    client = getattr(getattr(storage, "bridge", None), "storage", None)
    if client is not None:
        with contextlib.suppress(Exception):
            await client.aclose()


def _utc_day() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")


def _seconds_to_utc_midnight() -> int:
    now = datetime.datetime.now(datetime.UTC)
    midnight = (now + datetime.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return math.ceil((midnight - now).total_seconds())


# -- slots: leases of running generations ------------------------------------------


class _Slots:
    async def acquire(self, key: str, member: str, limit: int, ttl: float) -> list[str] | None:
        """Take a slot for ``member`` unless ``limit`` live slots are held: ``None``
        when taken, else the members holding them."""
        raise NotImplementedError

    async def release(self, key: str, members: list[str]) -> None:
        raise NotImplementedError

    async def renew(self, members: dict[str, list[str]], ttl: float) -> None:
        """Move the expiry of held slots (key -> members) to ``ttl`` seconds from now."""
        raise NotImplementedError

    async def close(self) -> None:
        pass


class _MemorySlots(_Slots):
    def __init__(self) -> None:
        self._slots: dict[str, dict[str, float]] = {}

    async def acquire(self, key: str, member: str, limit: int, ttl: float) -> list[str] | None:
        now = time.monotonic()
        slots = self._slots.setdefault(key, {})
        for expired in [m for m, until in slots.items() if until <= now]:
            del slots[expired]
        if len(slots) >= limit:
            return list(slots)
        slots[member] = now + ttl
        return None

    async def release(self, key: str, members: list[str]) -> None:
        slots = self._slots.get(key, {})
        for member in members:
            slots.pop(member, None)
        if not slots:
            self._slots.pop(key, None)

    async def renew(self, members: dict[str, list[str]], ttl: float) -> None:
        until = time.monotonic() + ttl
        for key, names in members.items():
            slots = self._slots.get(key, {})
            for name in names:
                if name in slots:
                    slots[name] = until


# KEYS[1] the caller's sorted set (member = stream id, score = expiry, Redis TIME);
# ARGV: limit, ttl seconds, member. Returns 1 when taken, else the members held.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return redis.call('ZRANGE', KEYS[1], 0, -1)
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 1)
return 1
"""
# KEYS[1] as above; ARGV: ttl seconds, members... (only those still present).
_RENEW = """
local t = redis.call('TIME')
local until = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', until, ARGV[i])
end
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1])) + 1)
return 1
"""


class _RedisSlots(_Slots):
    def __init__(self, url: str, prefix: str) -> None:
        from redis.asyncio import Redis

        self._redis: Redis = Redis.from_url(url, decode_responses=True)
        self._prefix = prefix
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._renew = self._redis.register_script(_RENEW)

    async def acquire(self, key: str, member: str, limit: int, ttl: float) -> list[str] | None:
        result = await self._acquire(keys=[self._prefix + key], args=[limit, ttl, member])
        return None if result == 1 else list(result)

    async def release(self, key: str, members: list[str]) -> None:
        if members:
            await self._redis.zrem(self._prefix + key, *members)

    async def renew(self, members: dict[str, list[str]], ttl: float) -> None:
        for key, names in members.items():
            await self._renew(keys=[self._prefix + key], args=[ttl, *names])

    async def close(self) -> None:
        await self._redis.aclose()
