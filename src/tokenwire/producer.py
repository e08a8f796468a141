"""The producer: runs generations from provider to log to store (DESIGN §5).

Each generation runs as an :mod:`asyncio` task of its own, independent of any
HTTP request. A second task iterates the provider's async generator and appends
each event to the log as it comes (one append, one wake-up of the readers, per
provider event; merged deltas, see below, cost less). The first task only waits
for the end: the provider's terminal event, a stop request (stop button,
``superseded``, ``abandoned``, delivered by the log's
:meth:`~tokenwire.log.base.StreamLog.watch_cancel`) or a time limit (checked by the
ticker below, not by a timer per generation or per event). On a stop it cancels
the provider task, which closes the upstream HTTP response: the provider stops
generating and billing.

Shutdown (:meth:`Producer.drain`): running generations may end by themselves for a
grace period; those still running then end with ``cancelled{reason: "shutdown"}``
(appended and stored like any stop), so every reader gets its terminal event.

One ticker per :class:`Producer`, not per generation, renews the leases of every
running generation, ends those past a time limit (``max_stream_seconds``,
``provider_timeout``: checked every second, or every quarter of the limit when
shorter), cancels orphans (no live reader for ``orphan_timeout`` seconds: reason
``abandoned``) and writes the partial messages of all generations that changed
every ``checkpoint_interval`` seconds in one transaction (never one write per
token). A write hands the store only what grew since the last one
(:meth:`~tokenwire.accumulate.MessageState.take_growth`), so a run never holds a
whole answer; with a log that keeps its events in this process
(:attr:`~tokenwire.log.base.StreamLog.events_in_process`) it holds none of its text
at all, reading the new events back at each write.

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
ends. ``coalesce_ms = 0`` (the default) turns merging off: every delta is its own
event. The rule is :class:`~tokenwire.protocol.coalesce.Coalescer` (sans-I/O); the run only
arms a timer for its deadline.

Server-side tools (``docs/tools.md``): a generation naming tools runs the
:class:`~tokenwire.agent.Agent` loop, not the bare provider stream; all of the above
applies to the whole loop (one stream, one terminal event; a stop cancels tools).

Observability (``docs/observability.md``): each run is one OpenTelemetry span
(:mod:`tokenwire.observability.tracing`), records the Prometheus instruments of
:mod:`tokenwire.observability.metrics` (time to first token, duration, output
tokens and tokens per second, events appended, outcome), logs with its
``stream_id`` (:mod:`tokenwire.observability.logs`), and stores the message's
``cost`` (:func:`tokenwire.observability.cost.message_cost`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import msgspec

from tokenwire.accumulate import MessageSink, MessageState
from tokenwire.agent import DEFAULT_MAX_STEPS, source
from tokenwire.errors import ProviderError
from tokenwire.events import (
    Cancelled,
    Error,
    Event,
    Finish,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    with_seq,
)
from tokenwire.log.base import StreamLog
from tokenwire.observability import logs as obs_logs
from tokenwire.observability import metrics
from tokenwire.observability.cost import price
from tokenwire.observability.tracing import GenerationSpan
from tokenwire.protocol.coalesce import Coalescer
from tokenwire.providers.base import GenerationRequest, Provider
from tokenwire.tools import ToolRegistry

__all__ = ["Generation", "MessageSink", "Producer", "ProducerConfig"]

logger = logging.getLogger("tokenwire.producer")

_CONTENT = (TextDelta, ReasoningDelta, ToolCallStart, ToolCallDelta, ToolCall)
"""Events that count as the first token."""
_FIRST_READER_GRACE = 10.0
"""Seconds a new stream waits for its first reader when ``orphan_timeout`` is shorter."""
_CHECKPOINT_BATCH = 8
"""Messages per checkpoint transaction: small enough not to stall the event loop, and
for the peak of a batch's copies (events read back, the growths, encoded) to stay
small, since the heap keeps it (1,000 paced streams of 20 KB, KB per connection
held at the end beyond the open: 24.8-27.2 with 64, 23.6-23.8 with 16, 23.1-23.2 with
4; with the append in SQL still 25.0-25.6 with 64 against 23.0-24.0 with 8, though a
message costs the event loop 35 µs instead of 141; docs/performance.md)."""
_CLOSE_TIMEOUT = 5.0
"""Seconds allowed for closing the upstream response after a stop."""


class ProducerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Timing of generations; seconds unless named ``_ms``. See :class:`~tokenwire.Settings`."""

    coalesce_ms: float = 0.0
    orphan_timeout: float | None = 60.0
    max_stream_seconds: float = 600.0
    provider_timeout: float = 120.0
    checkpoint_interval: float = 5.0
    lease_ttl: float = 15.0
    max_retries: int = 2
    retry_backoff: float = 0.5
    tool_timeout: float = 30.0


class Generation(msgspec.Struct, frozen=True, kw_only=True):
    """One generation to run: ids and the provider's request."""

    stream_id: str
    message_id: str
    conversation_id: str
    request: GenerationRequest
    model: str = ""
    """The full ``provider:model`` name (metrics, span, cost); empty when unknown."""
    tools: list[str] = msgspec.field(default_factory=list)
    """Server-side tools the model may call (names in the producer's registry); empty:
    no agent loop (``request.tools`` may still offer client-side tools)."""
    max_steps: int = DEFAULT_MAX_STEPS
    """Most model calls of the agent loop."""


class Producer:
    """Runs generations into a :class:`~tokenwire.log.base.StreamLog`.

    Args:
        log: where events go.
        sink: where messages are checkpointed and finally written, or ``None``.
        config: timing.
        tools: the server-side tools generations may name.
    """

    def __init__(
        self,
        log: StreamLog,
        sink: MessageSink | None,
        config: ProducerConfig,
        tools: ToolRegistry | None = None,
    ) -> None:
        self.log = log
        self.sink = sink
        self.config = config
        self.tools = tools if tools is not None else ToolRegistry()
        self._runs: dict[str, _Run] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        """Set while no generation runs."""
        self._idle.set()
        self.shutting_down = False
        """Set by :meth:`drain` once the grace period is over: runs stop at once."""

    def run(self, generation: Generation, provider: Provider) -> Coroutine[Any, Any, Event]:
        """The generation's run, to await (or run as a task) to the end: it returns
        the terminal event that ended the stream.

        The stream must exist in the log (normally with its ``start`` event).
        Raises nothing but :class:`asyncio.CancelledError` (after appending
        ``cancelled`` with reason ``shutdown``). The run's own coroutine, with no
        frame of this method around it for as long as it streams.
        """
        return _Run(self, generation, provider).run()

    def _enter(self, run: _Run) -> None:
        self._runs[run.stream_id] = run
        self._idle.clear()
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.create_task(self._tick())

    def _leave(self, run: _Run) -> None:
        del self._runs[run.stream_id]
        if not self._runs:
            self._idle.set()

    async def drain(self, grace: float) -> None:
        """Shut down: let running generations end by themselves for ``grace`` seconds,
        then stop the rest with ``cancelled{reason: "shutdown"}``, and return once every
        generation has ended (its terminal event appended, its message stored; at most
        ``grace`` + 2 * ``_CLOSE_TIMEOUT`` seconds). A generation started after the grace
        period is stopped the same way at once."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, grace)):
                await self._idle.wait()
        self.shutting_down = True
        for run in list(self._runs.values()):
            run.stop(Cancelled(reason="shutdown"))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2 * _CLOSE_TIMEOUT):
                await self._idle.wait()

    def running(self) -> int:
        """Generations running now (the ``tokenwire_generations_active`` gauge)."""
        return len(self._runs)

    async def _tick(self) -> None:
        """Leases, time limits, orphans and checkpoints of every running generation,
        until none runs.

        Leases are renewed by a loop of their own, all at once, so slow checkpoint
        writes never delay them past their expiry.
        """
        leases = asyncio.create_task(self._renew_leases())
        try:
            config = self.config
            ticks = [1.0, config.checkpoint_interval]
            # A time limit ends a generation at most a quarter of it late (or 1 s).
            ticks += [config.max_stream_seconds / 4, config.provider_timeout / 4]
            if config.orphan_timeout is not None:
                ticks.append(config.orphan_timeout / 4)
            tick = max(0.01, min(ticks))
            next_checkpoint = time.monotonic() + config.checkpoint_interval
            while self._runs:
                await asyncio.sleep(tick)
                runs = list(self._runs.values())
                now = time.monotonic()
                for run in runs:
                    run.check_time_limits(now)
                try:
                    if config.orphan_timeout is not None:
                        for run in runs:
                            await run.check_orphan(config.orphan_timeout)
                    if time.monotonic() >= next_checkpoint:
                        next_checkpoint = time.monotonic() + config.checkpoint_interval
                        await self._checkpoint(runs)
                except Exception:
                    logger.exception("producer housekeeping failed")
        finally:
            leases.cancel()

    async def _renew_leases(self) -> None:
        ttl = self.config.lease_ttl
        while True:
            await asyncio.sleep(ttl / 3)
            ids = list(self._runs)
            results = await asyncio.gather(
                *(self.log.heartbeat(i, ttl) for i in ids), return_exceptions=True
            )
            for stream_id, result in zip(ids, results, strict=True):
                if isinstance(result, Exception) and stream_id in self._runs:
                    logger.warning("could not renew the lease of %s: %r", stream_id, result)

    async def _checkpoint(self, runs: list[_Run]) -> None:
        changed = [r for r in runs if r.appended_seq != r.checkpointed_seq and not r.ending]
        if self.sink is None or not changed:
            return
        for start in range(0, len(changed), _CHECKPOINT_BATCH):
            batch = changed[start : start + _CHECKPOINT_BATCH]
            written = asyncio.get_running_loop().create_future()
            taken: list[_Run] = []
            try:
                grown = {}
                for run in batch:
                    await run.sync_state()
                    await asyncio.sleep(0)  # one message's fold per turn, not a batch's stall
                    if run.ending:  # began its final write meanwhile, which stores it
                        continue
                    run.checkpointed_seq = run.state.last_seq
                    grown[run.message_id] = run.state.take_growth()
                    run.checkpoint = written
                    taken.append(run)
                await self.sink.checkpoint_messages(grown)
            except BaseException:
                for run in taken:  # the store may lack what was taken
                    run.start_over()
                raise
            finally:
                for run in taken:
                    run.checkpoint = None
                written.set_result(None)


class _Run:
    def __init__(self, producer: Producer, generation: Generation, provider: Provider) -> None:
        self.log = producer.log
        self.sink = producer.sink
        self.config = producer.config
        self.producer = producer
        self.generation = generation
        self.provider = provider
        self.source = source(provider, producer.tools, generation.tools, generation.max_steps,
                             producer.config.tool_timeout)  # fmt: skip
        self.stream_id = generation.stream_id
        self.message_id = generation.message_id
        self.state = MessageState()
        self.lock = asyncio.Lock()
        self.coalescer = Coalescer(producer.config.coalesce_ms / 1000, time.monotonic)
        self.fold_appends = not producer.log.events_in_process
        """Fold what this run appends as it appends it (else: read it back at a write)."""
        self.appended_seq = 0
        self.checkpointed_seq = 0
        self.checkpoint: asyncio.Future[None] | None = None
        """Resolved once the checkpoint that took this run's growth has written it."""
        self.ending = False
        """Set once the final write began: checkpoints leave the run alone."""
        self.started = time.monotonic()
        self.started_at = time.time()
        self.last_item_at = self.started
        self.flush_timer: asyncio.TimerHandle | None = None
        self.flush_task: asyncio.Task[None] | None = None
        self.stopped: asyncio.Future[Event] | None = None
        self.first_token_at: float | None = None
        self.span: GenerationSpan | None = None

    async def run(self) -> Event:
        self.producer._enter(self)
        try:
            loop = asyncio.get_running_loop()
            obs_logs.stream_id.set(self.stream_id)  # this task's context: its log lines
            generation = self.generation
            self.span = GenerationSpan(
                generation.model,
                generation.request.model,
                generation.request.params,
                {
                    "stream_id": self.stream_id,
                    "message_id": self.message_id,
                    "conversation_id": generation.conversation_id,
                },
            )
            self.span.activate()  # the provider task below inherits it
            await self.log.heartbeat(self.stream_id, self.config.lease_ttl)
            await self.sync_state()  # the start: from here on, appends are folded as made
            stopped = self.stopped = loop.create_future()
            if self.producer.shutting_down:
                self.stop(Cancelled(reason="shutdown"))
            unwatch = self.log.watch_cancel(self.stream_id, self._cancel_requested)
            pump = asyncio.create_task(self._pump())
            pump.add_done_callback(self._pumped)
            terminal: Event = Cancelled(reason="shutdown")
            try:
                terminal = await stopped  # the pump's end or a stop, whichever comes first
            finally:
                unwatch()
                if self.flush_timer is not None:
                    self.flush_timer.cancel()
                await _close(pump)
                terminal = await self._finish(terminal)
            return terminal
        finally:
            self.producer._leave(self)

    def _cancel_requested(self, reason: str) -> None:
        self.stop(Cancelled(reason=reason))

    def stop(self, terminal: Event) -> None:
        """End the run with ``terminal`` (the first call wins)."""
        if self.stopped is not None and not self.stopped.done():
            self.stopped.set_result(terminal)

    def _pumped(self, pump: asyncio.Task[Event]) -> None:
        """The provider task ended: its terminal event (or failure) ends the run,
        unless a stop came first."""
        stopped = self.stopped
        if stopped is None or stopped.done():
            return
        if pump.cancelled():
            stopped.cancel()
        elif (exc := pump.exception()) is not None:
            stopped.set_exception(exc)
        else:
            stopped.set_result(pump.result())

    async def _pump(self) -> Event:
        """Iterate the provider, appending as events come; return the terminal event.

        A failure before the first provider event is retried with backoff (DESIGN §5).
        """
        attempt = 0
        merging = self.coalescer.window > 0
        while True:
            produced = False
            stream: AsyncIterator[Event] = self.source(self.generation.request)
            try:
                async for event in stream:
                    produced = True
                    self.last_item_at = time.monotonic()
                    if type(event) is Finish:  # (a failed isinstance costs 3 times as much)
                        return event
                    if not merging:  # the default: each event as it comes (0.22 us less)
                        await self._append([event])
                        continue
                    out = self.coalescer.push(event)
                    if out:
                        await self._append(out)
                    if self.flush_timer is None and self.coalescer.deadline is not None:
                        self._arm_flush()
            except ProviderError as exc:
                if produced or not exc.retryable or attempt >= self.config.max_retries:
                    return exc.event()
                attempt += 1
                await asyncio.sleep(self.config.retry_backoff * 2 ** (attempt - 1))
                continue
            except Exception:
                logger.exception("generation %s failed", self.stream_id)
                return Error(code="internal_error", message="internal error")
            finally:
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()
            return Error(
                code="provider_error",
                message="the provider closed the stream before it finished",
                retryable=True,
            )

    def _arm_flush(self) -> None:
        """Append the pending delta when its coalescing window ends."""
        loop = asyncio.get_running_loop()
        deadline = self.coalescer.deadline
        delay = 0.0 if deadline is None else max(0.0, deadline - time.monotonic())
        self.flush_timer = loop.call_later(delay, self._flush_due)

    def _flush_due(self) -> None:
        self.flush_timer = None
        if self.coalescer.deadline is not None and self.flush_task is None:
            self.flush_task = asyncio.create_task(self._flush_now())

    async def _flush_now(self) -> None:
        try:
            out = self.coalescer.flush()
            if out:
                await self._append(out)
        finally:
            self.flush_task = None

    def check_time_limits(self, now: float) -> None:
        """Stop with ``error{stream_timeout}`` past ``max_stream_seconds``, or with
        ``error{provider_timeout}`` after ``provider_timeout`` seconds without a
        provider event (``now``: :func:`time.monotonic`)."""
        if now >= self.started + self.config.max_stream_seconds:
            self.stop(Error(code="stream_timeout", message="the generation took too long"))
        elif now >= self.last_item_at + self.config.provider_timeout:
            message = "the provider sent nothing for too long"
            self.stop(Error(code="provider_timeout", message=message, retryable=True))

    async def _append(self, events: list[Event]) -> None:
        if self.coalescer.window:
            async with self.lock:  # the flush task and the provider task both append
                appended = await self.log.append(self.stream_id, events)
        else:  # no flush task: the provider task appends alone (a lock costs 0.66 us)
            appended = await self.log.append(self.stream_id, events)
        if appended:
            self.appended_seq = appended[-1].seq
            if self.fold_appends and appended[0].seq == self.state.last_seq + 1:
                # Folded here rather than read back from Redis at a write; after a gap
                # (another node's append) ``sync_state`` reads the rest.
                self._fold(appended)
            self._observe(appended)

    def _observe(self, appended: list[Event]) -> None:
        """Count appended events; note the first token (metric and span event)."""
        metrics.EVENTS_APPENDED.inc(len(appended))
        if self.first_token_at is None and any(isinstance(e, _CONTENT) for e in appended):
            self.first_token_at = time.monotonic()
            metrics.TIME_TO_FIRST_TOKEN.labels(
                metrics.provider_label(self.generation.model)
            ).observe(self.first_token_at - self.started)
            if self.span is not None:
                self.span.first_token()

    async def sync_state(self) -> Event | None:
        """Fold the events the log holds past ``state`` into it (at the start, for
        store writes and at the end); return the last one read, if any. Merged runs of
        deltas (a read for folding) only when the run does not fold what it appends:
        an append folded meanwhile may fall inside a merged run."""
        after = self.state.last_seq
        events = await self.log.events(self.stream_id, after=after, merged=not self.fold_appends)
        self._fold(events)
        return events[-1] if events else None

    def _fold(self, events: list[Event]) -> None:
        """Apply the events not folded yet: a checkpoint's read and this run's append
        can both return an event (the read started before the append ended)."""
        state = self.state
        for event in events:
            if event.seq > state.last_seq:
                state.apply(event)

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
        """Store the message, then append what is pending and the terminal event: a
        reader that sees the terminal event finds the message stored as it ended."""
        self.ending = True
        if self.checkpoint is not None:  # a checkpoint holding this run's growth writes first
            await asyncio.wait({self.checkpoint})
        if self.flush_task is not None:
            await asyncio.wait({self.flush_task}, timeout=_CLOSE_TIMEOUT)
        out = self.coalescer.flush()
        ended: MessageState | None = None  # what was stored before the append
        try:
            await self.sync_state()
            ended = self.state.copy()
            for seq, event in enumerate([*out, terminal], start=ended.last_seq + 1):
                ended.apply(with_seq(event, seq))
            await self._store(ended)
            appended = await self.log.append(self.stream_id, [*out, terminal])
            self._observe(appended)
            self._fold(appended)
            last = appended[-1] if appended else await self.sync_state()
            if last is not None:  # ours, or the producer_lost that ended the stream first
                terminal = last
        except Exception:  # the log is gone (e.g. Redis lost it): end the message here
            logger.exception("could not end stream %s", self.stream_id)
            if self.state.status in ("pending", "streaming"):
                self.state.apply(with_seq(terminal, self.state.last_seq + 1))
        if ended is None:
            await self._store(self.state)  # not stored yet
        elif (ended.status, ended.error) != (self.state.status, self.state.error):
            await self._store_from_log()  # another terminal event won
        self._record_end(self.state.usage_dict())
        return terminal

    def start_over(self) -> None:
        """Forget what was folded and written: the next store write reads the whole
        stream back from the log and stores the whole message."""
        self.state = MessageState()
        self.checkpointed_seq = 0

    async def _store_from_log(self) -> None:
        """Store the whole message as the log holds it (the store holds another end)."""
        self.start_over()
        try:
            await self.sync_state()
        except Exception:
            logger.exception("could not read stream %s", self.stream_id)
            return
        await self._store(self.state)

    async def _store(self, state: MessageState) -> None:
        """The message's end: what grew since the last write, status, usage, cost."""
        if self.sink is None:
            return
        usage = state.usage_dict()
        try:
            await self.sink.update_message(
                self.message_id,
                grown=state.take_growth(),
                status=state.status,
                finish_reason=state.finish_reason,
                usage=usage,
                error=state.error if state.error is not None else state.stop_error(),
                cost=await price(self.generation.model, usage),
            )
        except Exception:
            logger.exception("could not store message %s", self.message_id)

    def _record_end(self, usage: dict[str, int] | None) -> None:
        """Metrics and the span's end, from the final state."""
        state = self.state
        outcome = state.status if state.status in ("completed", "failed", "cancelled") else "failed"
        metrics.record_end(self.generation.model, outcome, self.started, self.first_token_at, usage)
        if self.span is not None:
            self.span.end(
                outcome,
                usage=usage,
                finish_reason=state.finish_reason,
                error=state.error,
                cancel_reason=state.cancel_reason,
            )


async def _close(task: asyncio.Task[Event]) -> None:
    """Cancel the provider task and wait (bounded) for it to close the upstream response."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        async with asyncio.timeout(_CLOSE_TIMEOUT):
            await task
