"""The producer: runs one generation from provider to log to store (DESIGN §5).

A generation runs as an :mod:`asyncio` task of its own, independent of any HTTP
request. Around the provider call, concurrently:

- the **stop watch** waits for the log's cancel flag (stop button, superseded) and
  counts readers for ``orphan_timeout`` (then cancels with reason ``abandoned``);
- the **lease** is renewed every ``lease_ttl / 3`` seconds;
- **checkpoints** write the partial message to the store every
  ``checkpoint_interval`` seconds while it changes;
- the whole run is limited to ``max_stream_seconds`` (``error{stream_timeout}``),
  and a provider silent for ``provider_timeout`` seconds ends it with
  ``error{provider_timeout}``, whatever the SDK's own timeouts are.

Stopping cancels the task that iterates the provider's async generator, which
closes the upstream HTTP response, so the provider stops generating.

Exactly one terminal event ends every run: the provider's ``finish``; ``error``
for a provider failure (after retries, which happen only before the first
provider event), a bug of ours (``internal_error``, no exception text) or the
time limit; ``cancelled`` for a stop. The log drops anything after a terminal
event, so a racing ``producer_lost`` cannot make two.

Coalescing: consecutive deltas of the same part are merged for at most
``coalesce_ms``. It is a leading-edge throttle: a delta is appended at once when
none was appended in the last ``coalesce_ms`` (so the first token is never
delayed); otherwise it waits, merged with those that follow, until that window
ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any, Protocol

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
_END = object()
_FIRST_READER_GRACE = 10.0
"""Seconds a new stream waits for its first reader when ``orphan_timeout`` is shorter."""
_CLOSE_TIMEOUT = 5.0
"""Seconds allowed for closing the upstream response after a stop."""


class MessageSink(Protocol):
    """Where the producer writes the assistant message (the store, or nothing)."""

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


class ProducerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Timing of a generation; seconds unless named ``_ms``. See :class:`~tokenwire.Settings`."""

    coalesce_ms: float = 20.0
    orphan_timeout: float | None = 60.0
    max_stream_seconds: float = 600.0
    provider_timeout: float = 120.0
    checkpoint_interval: float = 5.0
    lease_ttl: float = 15.0
    max_retries: int = 2
    retry_backoff: float = 0.5


class Generation(msgspec.Struct, frozen=True, kw_only=True):
    """One generation to run: ids, the provider's request, and the stream to fill."""

    stream_id: str
    message_id: str
    conversation_id: str
    request: GenerationRequest


class Producer:
    """Runs generations into a :class:`~tokenwire.log.base.StreamLog`.

    Args:
        log: where events go.
        sink: where the message is checkpointed and finally written, or ``None``.
        config: timing.
    """

    def __init__(self, log: StreamLog, sink: MessageSink | None, config: ProducerConfig) -> None:
        self.log = log
        self.sink = sink
        self.config = config

    async def run(self, generation: Generation, provider: Provider) -> Event:
        """Run to the end; return the terminal event that ended the stream.

        The stream must exist in the log with its ``start`` event. Never raises
        but :class:`asyncio.CancelledError` (after appending ``cancelled`` with
        reason ``shutdown``).
        """
        return await _Run(self, generation, provider).run()


class _Run:
    def __init__(self, producer: Producer, generation: Generation, provider: Provider) -> None:
        self.log = producer.log
        self.sink = producer.sink
        self.config = producer.config
        self.generation = generation
        self.provider = provider
        self.stream_id = generation.stream_id
        self.state = MessageState()
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.pending: _Delta | None = None
        self.pending_deadline = 0.0
        self.last_delta_at = -math.inf
        self.checkpointed_seq = 0

    async def run(self) -> Event:
        config = self.config
        await self.log.heartbeat(self.stream_id, config.lease_ttl)
        pump = asyncio.create_task(self._pump())
        consume = asyncio.create_task(self._consume())
        stop = asyncio.create_task(self._watch_stop())
        helpers = [
            asyncio.create_task(self._keep_lease()),
            asyncio.create_task(self._checkpoints()),
        ]
        terminal: Event
        try:
            done, _ = await asyncio.wait(
                {consume, stop},
                timeout=config.max_stream_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if consume in done:
                terminal = consume.result()
            elif stop in done:
                terminal = Cancelled(reason=stop.result())
            else:
                terminal = Error(code="stream_timeout", message="the generation took too long")
        except asyncio.CancelledError:
            terminal = Cancelled(reason="shutdown")
            raise
        finally:
            for task in (consume, stop, *helpers):
                task.cancel()
            await _close(pump)
            await asyncio.gather(consume, stop, *helpers, return_exceptions=True)
            terminal = await self._finish(terminal)
        return terminal

    # provider → queue -----------------------------------------------------

    async def _pump(self) -> None:
        """Iterate the provider into the queue, retrying failures before its first event."""
        attempt = 0
        while True:
            produced = False
            try:
                stream = self.provider.stream(self.generation.request)
                try:
                    async for event in stream:
                        produced = True
                        self.queue.put_nowait(event)
                finally:
                    aclose = getattr(stream, "aclose", None)
                    if aclose is not None:
                        await aclose()
                self.queue.put_nowait(_END)
                return
            except ProviderError as exc:
                if produced or not exc.retryable or attempt >= self.config.max_retries:
                    self.queue.put_nowait(exc)
                    return
                attempt += 1
                await asyncio.sleep(self.config.retry_backoff * 2 ** (attempt - 1))
            except Exception as exc:
                self.queue.put_nowait(exc)
                return

    # queue → log ----------------------------------------------------------

    async def _consume(self) -> Event:
        """Append provider events with coalescing; return the terminal event to append."""
        try:
            silent_until = time.monotonic() + self.config.provider_timeout
            while True:
                until = silent_until if self.pending is None else self.pending_deadline
                try:
                    async with asyncio.timeout(max(0.0, until - time.monotonic())):
                        item = await self.queue.get()
                except TimeoutError:
                    if self.pending is None:
                        return Error(
                            code="provider_timeout",
                            message="the provider sent nothing for too long",
                            retryable=True,
                        )
                    await self._flush()
                    continue
                silent_until = time.monotonic() + self.config.provider_timeout
                if item is _END:
                    return Error(
                        code="provider_error",
                        message="the provider closed the stream before it finished",
                        retryable=True,
                    )
                if isinstance(item, ProviderError):
                    return Error(code=item.code, message=item.message, retryable=item.retryable)
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, Finish):
                    return item
                await self._handle(item)  # type: ignore[arg-type]
        except Exception:
            logger.exception("generation %s failed", self.stream_id)
            return Error(code="internal_error", message="internal error")

    async def _handle(self, event: ProviderEvent) -> None:
        if not isinstance(event, _Delta):
            await self._flush()
            await self._append([event])
            return
        now = time.monotonic()
        pending = self.pending
        if pending is not None and _mergeable(pending, event):
            self.pending = msgspec.structs.replace(pending, delta=pending.delta + event.delta)
            if now >= self.pending_deadline:
                await self._flush()
            return
        await self._flush()
        window = self.config.coalesce_ms / 1000
        if now - self.last_delta_at >= window:
            self.last_delta_at = now
            await self._append([event])
        else:
            self.pending = event
            self.pending_deadline = self.last_delta_at + window

    async def _flush(self) -> None:
        if self.pending is not None:
            event, self.pending = self.pending, None
            self.last_delta_at = time.monotonic()
            await self._append([event])

    async def _append(self, events: list[Event]) -> list[Event]:
        appended = await self.log.append(self.stream_id, events)
        for event in appended:
            self.state.apply(event)
        return appended

    # stop, lease, checkpoints -------------------------------------------

    async def _watch_stop(self) -> str:
        """Return the cancel reason once a cancel is requested or the stream is orphaned."""
        cancel = asyncio.create_task(self.log.wait_cancel(self.stream_id))
        try:
            limit = self.config.orphan_timeout
            if limit is None:
                return await cancel
            tick = min(1.0, max(0.02, limit / 4))
            idle_since = time.monotonic()
            seen_reader = False
            while not cancel.done():
                now = time.monotonic()
                if await self.log.readers(self.stream_id):
                    seen_reader, idle_since = True, now
                elif now - idle_since >= (
                    limit if seen_reader else max(limit, _FIRST_READER_GRACE)
                ):
                    await self.log.request_cancel(self.stream_id, "abandoned")
                await asyncio.wait({cancel}, timeout=tick)
            return cancel.result()
        finally:
            cancel.cancel()

    async def _keep_lease(self) -> None:
        while True:
            await asyncio.sleep(self.config.lease_ttl / 3)
            await self.log.heartbeat(self.stream_id, self.config.lease_ttl)

    async def _checkpoints(self) -> None:
        if self.sink is None:
            return
        while True:
            await asyncio.sleep(self.config.checkpoint_interval)
            if self.state.last_seq != self.checkpointed_seq:
                self.checkpointed_seq = self.state.last_seq
                await self._write(status="streaming")

    async def _finish(self, terminal: Event) -> Event:
        """Flush what is pending, append the terminal event, store the message."""
        try:
            await self._flush()
            appended = await self._append([terminal])
            if appended:
                terminal = appended[0]
            else:  # someone else ended the stream first (producer_lost)
                for event in await self.log.events(self.stream_id, after=self.state.last_seq):
                    self.state.apply(event)
                    terminal = event
        except Exception:
            logger.exception("could not end stream %s", self.stream_id)
        await self._write(status=self.state.status)
        return terminal

    async def _write(self, *, status: str) -> None:
        if self.sink is None:
            return
        state = self.state
        fields: dict[str, Any] = {"parts": state.parts_list(), "status": status}
        if status != "streaming":
            fields.update(
                finish_reason=state.finish_reason, usage=state.usage_dict(), error=state.error
            )
        try:
            await self.sink.update_message(self.generation.message_id, **fields)
        except Exception:
            logger.exception("could not store message %s", self.generation.message_id)


def _mergeable(pending: _Delta, event: _Delta) -> bool:
    if type(pending) is not type(event) or pending.part != event.part:
        return False
    return not isinstance(event, ToolCallDelta) or (
        isinstance(pending, ToolCallDelta) and pending.tool_call_id == event.tool_call_id
    )


async def _close(task: asyncio.Task[None]) -> None:
    """Cancel the provider task and wait (bounded) for it to close the upstream response."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        async with asyncio.timeout(_CLOSE_TIMEOUT):
            await task
