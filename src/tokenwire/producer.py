"""The producer: runs generations from provider to log to store (DESIGN §5).

Each generation runs as an :mod:`asyncio` task of its own, independent of any
HTTP request, with one helper task that iterates the provider's async generator
into a queue. The run task takes *everything* that is waiting in the queue at
each wake-up and appends it to the log in one call, so a fast provider costs one
log append (and one wake-up of every reader) per burst, not per token.

A stop request (stop button, ``superseded``, ``abandoned``) arrives through the
log's :meth:`~tokenwire.log.base.StreamLog.watch_cancel` as an item in the same
queue, so events that came before it are kept; the provider task is then
cancelled, which closes the upstream HTTP response (the provider stops
generating and billing).

One ticker per :class:`Producer`, not per generation, renews the leases of every
running generation, cancels orphans (no live reader for ``orphan_timeout``
seconds: reason ``abandoned``) and writes the partial messages of all
generations that changed every ``checkpoint_interval`` seconds in one
transaction (never one write per token).

Exactly one terminal event ends every run: the provider's ``finish``; ``error``
for a provider failure (retried with backoff only before the first provider
event), a provider silent for ``provider_timeout`` seconds, the
``max_stream_seconds`` limit, or a bug of ours (``internal_error``, no exception
text); ``cancelled`` for a stop. The log drops anything after a terminal event,
so a racing ``producer_lost`` cannot make two.

Coalescing: consecutive deltas of the same part are merged for at most
``coalesce_ms``, as a leading-edge throttle: a delta is appended at once when no
delta was appended in the last ``coalesce_ms`` (so the first token is never
delayed); otherwise it waits, merged with those that follow, until that window
ends. ``coalesce_ms = 0`` turns merging off: every delta is its own event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Protocol

import msgspec

from tokenwire.accumulate import MessageState
from tokenwire.errors import ProviderError
from tokenwire.events import (
    Cancelled,
    Error,
    Event,
    Finish,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
)
from tokenwire.log.base import StreamLog
from tokenwire.providers.base import GenerationRequest, Provider, ProviderEvent

__all__ = ["Generation", "MessageSink", "Producer", "ProducerConfig"]

logger = logging.getLogger("tokenwire.producer")

_Delta = TextDelta | ReasoningDelta | ToolCallDelta
_FIRST_READER_GRACE = 10.0
"""Seconds a new stream waits for its first reader when ``orphan_timeout`` is shorter."""
_CLOSE_TIMEOUT = 5.0
"""Seconds allowed for closing the upstream response after a stop."""


class MessageSink(Protocol):
    """Where the producer writes assistant messages (the store)."""

    async def update_message(
        self,
        message_id: str,
        *,
        parts: list[dict[str, object]] | None = None,
        status: str | None = None,
        finish_reason: str | None = None,
        usage: dict[str, int] | None = None,
        error: dict[str, object] | None = None,
    ) -> None: ...

    async def checkpoint_messages(
        self, parts_by_id: dict[str, list[dict[str, object]]]
    ) -> None: ...


class ProducerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Timing of generations; seconds unless named ``_ms``. See :class:`~tokenwire.Settings`."""

    coalesce_ms: float = 20.0
    orphan_timeout: float | None = 60.0
    max_stream_seconds: float = 600.0
    provider_timeout: float = 120.0
    checkpoint_interval: float = 5.0
    lease_ttl: float = 15.0
    max_retries: int = 2
    retry_backoff: float = 0.5


class Generation(msgspec.Struct, frozen=True, kw_only=True):
    """One generation to run: ids and the provider's request."""

    stream_id: str
    message_id: str
    conversation_id: str
    request: GenerationRequest


class _End:
    """Queue item: the provider's generator is exhausted (or failed: ``error``)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class _Mailbox:
    """The run task's inbox: any task or callback puts, the run task takes all at once.

    Lighter than :class:`asyncio.Queue` (no per-item future, no join bookkeeping);
    unbounded, since a provider produces at most what the model generates.
    """

    __slots__ = ("items", "waiter")

    def __init__(self) -> None:
        self.items: list[object] = []
        self.waiter: asyncio.Future[None] | None = None

    def put(self, item: object) -> None:
        self.items.append(item)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take_all(self) -> list[object]:
        while not self.items:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        items, self.items = self.items, []
        return items


_FLUSH = object()
"""Queue item: the coalescing window of the pending delta has ended."""


class _Stop:
    """Queue item: a cancel was requested."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class Producer:
    """Runs generations into a :class:`~tokenwire.log.base.StreamLog`.

    Args:
        log: where events go.
        sink: where messages are checkpointed and finally written, or ``None``.
        config: timing.
    """

    def __init__(self, log: StreamLog, sink: MessageSink | None, config: ProducerConfig) -> None:
        self.log = log
        self.sink = sink
        self.config = config
        self._runs: dict[str, _Run] = {}
        self._ticker: asyncio.Task[None] | None = None

    async def run(self, generation: Generation, provider: Provider) -> Event:
        """Run to the end; return the terminal event that ended the stream.

        The stream must exist in the log (normally with its ``start`` event).
        Raises nothing but :class:`asyncio.CancelledError` (after appending
        ``cancelled`` with reason ``shutdown``).
        """
        run = _Run(self, generation, provider)
        self._runs[generation.stream_id] = run
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.create_task(self._tick())
        try:
            return await run.run()
        finally:
            del self._runs[generation.stream_id]

    async def _tick(self) -> None:
        """Leases, orphans and checkpoints of every running generation, until none runs."""
        config = self.config
        ticks = [1.0, config.lease_ttl / 3, config.checkpoint_interval]
        if config.orphan_timeout is not None:
            ticks.append(max(0.01, config.orphan_timeout / 4))
        tick = min(ticks)
        next_checkpoint = time.monotonic() + config.checkpoint_interval
        next_lease = time.monotonic() + config.lease_ttl / 3
        while self._runs:
            await asyncio.sleep(tick)
            now = time.monotonic()
            runs = list(self._runs.values())
            try:
                if now >= next_lease:
                    next_lease = now + config.lease_ttl / 3
                    for run in runs:
                        await self.log.heartbeat(run.stream_id, config.lease_ttl)
                if config.orphan_timeout is not None:
                    for run in runs:
                        await run.check_orphan(config.orphan_timeout)
                if now >= next_checkpoint:
                    next_checkpoint = now + config.checkpoint_interval
                    await self._checkpoint(runs)
            except Exception:
                logger.exception("producer housekeeping failed")

    async def _checkpoint(self, runs: list[_Run]) -> None:
        changed = [r for r in runs if r.appended_seq != r.checkpointed_seq]
        if self.sink is None or not changed:
            return
        for run in changed:
            await run.sync_state()
            run.checkpointed_seq = run.state.last_seq
        await self.sink.checkpoint_messages({r.message_id: r.state.parts_list() for r in changed})


class _Run:
    def __init__(self, producer: Producer, generation: Generation, provider: Provider) -> None:
        self.log = producer.log
        self.sink = producer.sink
        self.config = producer.config
        self.generation = generation
        self.provider = provider
        self.stream_id = generation.stream_id
        self.message_id = generation.message_id
        self.state = MessageState()
        self.queue = _Mailbox()
        self.pending: _Delta | None = None
        self.pending_deadline = 0.0
        self.last_delta_at = -math.inf
        self.appended_seq = 0
        self.checkpointed_seq = 0
        self.started = time.monotonic()
        self.started_at = time.time()
        self.last_item_at = self.started
        self.flush_timer: asyncio.TimerHandle | None = None
        self.watchdog_timer: asyncio.TimerHandle | None = None

    async def run(self) -> Event:
        await self.log.heartbeat(self.stream_id, self.config.lease_ttl)
        unwatch = self.log.watch_cancel(self.stream_id, lambda r: self.queue.put(_Stop(r)))
        pump = asyncio.create_task(self._pump())
        terminal: Event = Cancelled(reason="shutdown")
        try:
            terminal = await self._consume()
        finally:
            unwatch()
            await _close(pump)
            terminal = await self._finish(terminal)
        return terminal

    async def _pump(self) -> None:
        """Iterate the provider into the queue, retrying failures before its first event."""
        attempt = 0
        while True:
            produced = False
            stream = self.provider.stream(self.generation.request)
            try:
                async for event in stream:
                    produced = True
                    self.queue.put(event)
            except ProviderError as exc:
                if produced or not exc.retryable or attempt >= self.config.max_retries:
                    self.queue.put(_End(exc))
                    return
                attempt += 1
                await asyncio.sleep(self.config.retry_backoff * 2 ** (attempt - 1))
                continue
            except Exception as exc:
                self.queue.put(_End(exc))
                return
            finally:
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()
            self.queue.put(_End())
            return

    async def _consume(self) -> Event:
        """Append what the provider sends; return the terminal event to append.

        Waiting costs no timer per event: one watchdog timer per generation checks
        the time limits (rearmed only when it fires), and a flush timer is armed
        only while a coalesced delta is pending.
        """
        loop = asyncio.get_running_loop()
        self.last_item_at = time.monotonic()
        self.watchdog_timer = loop.call_later(self._watchdog_delay(), self._watchdog)
        try:
            while True:
                out: list[Event] = []
                terminal = self._take_ready(await self.queue.take_all(), out)
                if terminal is not None:
                    self._flush(out)
                    await self._append(out)
                    return terminal
                if out:
                    await self._append(out)
                if self.pending is not None and self.flush_timer is None:
                    self.flush_timer = loop.call_at(
                        loop.time() + max(0.0, self.pending_deadline - time.monotonic()),
                        self.queue.put,
                        _FLUSH,
                    )
        except Exception:
            logger.exception("generation %s failed", self.stream_id)
            return Error(code="internal_error", message="internal error")
        finally:
            if self.watchdog_timer is not None:
                self.watchdog_timer.cancel()
            if self.flush_timer is not None:
                self.flush_timer.cancel()

    def _watchdog_delay(self) -> float:
        """Seconds until the earlier of the stream's deadline and the provider's."""
        config = self.config
        until = min(
            self.started + config.max_stream_seconds, self.last_item_at + config.provider_timeout
        )
        return max(0.0, until - time.monotonic())

    def _watchdog(self) -> None:
        now = time.monotonic()
        if now >= self.started + self.config.max_stream_seconds:
            self.queue.put(_End(ProviderError("stream_timeout", "the generation took too long")))
        elif now >= self.last_item_at + self.config.provider_timeout:
            self.queue.put(
                _End(
                    ProviderError(
                        "provider_timeout", "the provider sent nothing for too long", retryable=True
                    )
                )
            )
        else:
            loop = asyncio.get_running_loop()
            self.watchdog_timer = loop.call_later(self._watchdog_delay(), self._watchdog)

    def _take_ready(self, items: list[object], out: list[Event]) -> Event | None:
        """Move ``items`` into ``out``; return a terminal event if one came (what
        follows it is dropped)."""
        for item in items:
            if isinstance(item, _Stop):
                return Cancelled(reason=item.reason)
            if isinstance(item, _End):
                return _terminal_for(item.error)
            if isinstance(item, Finish):
                return item
            if item is _FLUSH:
                self.flush_timer = None
                self._flush(out)
            else:
                self.last_item_at = time.monotonic()
                self._handle(item, out)  # type: ignore[arg-type]
        return None

    def _handle(self, event: ProviderEvent, out: list[Event]) -> None:
        if not isinstance(event, _Delta):
            self._flush(out)
            out.append(event)
            return
        now = time.monotonic()
        pending = self.pending
        if pending is not None and _mergeable(pending, event):
            self.pending = msgspec.structs.replace(pending, delta=pending.delta + event.delta)
            if now >= self.pending_deadline:
                self._flush(out)
            return
        self._flush(out)
        window = self.config.coalesce_ms / 1000
        if now - self.last_delta_at >= window:
            self.last_delta_at = now
            out.append(event)
        else:
            self.pending = event
            self.pending_deadline = self.last_delta_at + window

    def _flush(self, out: list[Event]) -> None:
        if self.pending is not None:
            out.append(self.pending)
            self.pending = None
            self.last_delta_at = time.monotonic()

    async def _append(self, events: list[Event]) -> None:
        appended = await self.log.append(self.stream_id, events)
        if appended:
            self.appended_seq = appended[-1].seq

    async def sync_state(self) -> Event | None:
        """Fold the events appended since the last call into ``state`` (off the hot
        path: only for checkpoints and the end); return the last one, if any."""
        last = None
        for last in await self.log.events(self.stream_id, after=self.state.last_seq):
            self.state.apply(last)
        return last

    async def check_orphan(self, limit: float) -> None:
        """Cancel (reason ``abandoned``) once no reader has followed for ``limit`` seconds,
        or for ``max(limit, 10)`` seconds after the start when none ever came."""
        count, left_at = await self.log.readers(self.stream_id)
        if count:
            return
        idle = time.time() - (left_at if left_at is not None else self.started_at)
        if idle >= (limit if left_at is not None else max(limit, _FIRST_READER_GRACE)):
            await self.log.request_cancel(self.stream_id, "abandoned")

    async def _finish(self, terminal: Event) -> Event:
        """Append what is pending and the terminal event; store the message."""
        out: list[Event] = []
        self._flush(out)
        try:
            await self.sync_state()
            appended = await self.log.append(self.stream_id, [*out, terminal])
            for event in appended:
                self.state.apply(event)
            last = appended[-1] if appended else await self.sync_state()
            if last is not None:  # ours, or the producer_lost that ended the stream first
                terminal = last
        except Exception:
            logger.exception("could not end stream %s", self.stream_id)
        if self.sink is not None:
            state = self.state
            try:
                await self.sink.update_message(
                    self.message_id,
                    parts=state.parts_list(),
                    status=state.status,
                    finish_reason=state.finish_reason,
                    usage=state.usage_dict(),
                    error=state.error,
                )
            except Exception:
                logger.exception("could not store message %s", self.message_id)
        return terminal


def _terminal_for(error: BaseException | None) -> Event:
    if error is None:
        return Error(
            code="provider_error",
            message="the provider closed the stream before it finished",
            retryable=True,
        )
    if isinstance(error, ProviderError):
        return Error(code=error.code, message=error.message, retryable=error.retryable)
    logger.error("generation failed", exc_info=error)
    return Error(code="internal_error", message="internal error")


def _mergeable(pending: Event, event: _Delta) -> bool:
    if type(pending) is not type(event) or getattr(pending, "part", None) != event.part:
        return False
    if isinstance(event, ToolCallDelta) and isinstance(pending, ToolCallDelta):
        return pending.tool_call_id == event.tool_call_id
    return True


async def _close(task: asyncio.Task[None]) -> None:
    """Cancel the provider task and wait (bounded) for it to close the upstream response."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        async with asyncio.timeout(_CLOSE_TIMEOUT):
            await task
