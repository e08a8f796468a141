"""In-memory stream log: one process, no dependencies, the default.

Events live in a per-stream list whose index is ``seq - 1``. A reader waits on a
future of the stream's ``waiters``, which an append resolves, so one append wakes
every live reader once, however many events it carried; a follower
(:meth:`MemoryStreamLog.follow`) is handed them by a callback at the next turn.
Once a stream holds 64 events more than its last 8, they are packed into a
compressed chunk at the event loop's next turn, after its followers took them; the
rest of a finished stream ``pack_after`` seconds after its terminal event: a stream
then costs 1.1 to 1.4 times its text (token-sized deltas of prose), not ~160 bytes
of structs per event. Finished streams are dropped ``retention`` seconds after their
terminal event (then 410 for a while).
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Coroutine, Mapping
from typing import Any, cast

import lz4.block
import msgspec

from tokenwire.errors import StreamExpiredError, StreamNotFoundError
from tokenwire.events import (
    Error,
    Event,
    ReasoningDelta,
    StreamStatus,
    TextDelta,
    is_terminal,
    outcome,
    with_seq,
)
from tokenwire.log.base import StreamInfo
from tokenwire.log.follow import Follower, Sink

__all__ = ["MemoryStreamLog"]

logger = logging.getLogger("tokenwire.log.memory")

_EXPIRED_KEPT = 100_000
"""How many expired stream ids are remembered to answer 410 rather than 404."""


_PACK_AFTER = 5.0
"""Seconds after its terminal event at which the rest of a finished stream is packed:
after its live followers took the end."""
_CHUNK = 64
"""Events per packed chunk."""
_KEEP = 8
"""Events a running stream keeps as they are when packed (it holds 8 to 71): what
readers that wake after the packing turn take without unpacking."""
_pack_encoder = msgspec.msgpack.Encoder()
_chunk_decoder = msgspec.msgpack.Decoder(tuple[int, bytes, list[int], list[int], str, list[Event]])
_TEXT, _REASONING, _OTHER = 0, 1, 2
"""Kinds of a packed event: a text delta (not a refusal's), a reasoning delta, any other."""


def _pack(events: list[Event]) -> bytes:
    """Consecutive events as one chunk, compressed with LZ4 (a block with its size).

    The events' ``seq`` must be consecutive. Deltas, nearly every event, are stored
    as their text, joined, with a kind, part and length each, their ``seq`` the
    chunk's first plus their index; the rest as msgpack structs. 64 deltas of
    token-sized prose (~4.5 bytes each): 6.2 bytes per event, 1.35 x the text (as
    msgpack structs, before 2026-12-04: 13.2 bytes, 2.9 x); the benchmark's 40-byte
    stamps: 12.6 bytes per event (16.4). Packing costs 0.12 to 0.16 us per event
    (as structs: 0.08 to 0.12), unpacking ~0.3: only a reader behind the live tail
    (a resume, a reload, a slow client) pays that."""
    unset = msgspec.UNSET
    for event in events:
        if type(event) is not TextDelta or event.refusal is not unset:
            return _pack_mixed(events)
    plain = cast(list[TextDelta], events)  # nearly every chunk: ~25 % less CPU
    texts = [e.delta for e in plain]
    parts = [e.part for e in plain]
    kinds = bytes(len(plain))  # all zero: _TEXT
    return _compress((events[0].seq, kinds, parts, list(map(len, texts)), "".join(texts), []))


def _pack_mixed(events: list[Event]) -> bytes:
    kinds = bytearray()
    parts: list[int] = []
    lengths: list[int] = []
    texts: list[str] = []
    others: list[Event] = []
    for event in events:
        if type(event) is TextDelta and event.refusal is msgspec.UNSET:
            kinds.append(_TEXT)
        elif type(event) is ReasoningDelta:
            kinds.append(_REASONING)
        else:
            kinds.append(_OTHER)
            others.append(event)
            continue
        delta = event.delta
        parts.append(event.part)
        lengths.append(len(delta))
        texts.append(delta)
    return _compress((events[0].seq, bytes(kinds), parts, lengths, "".join(texts), others))


def _compress(packed: tuple[int, bytes, list[int], list[int], str, list[Event]]) -> bytes:
    chunk: bytes = lz4.block.compress(_pack_encoder.encode(packed), store_size=True)
    return chunk


def _unpack(chunk: bytes) -> list[Event]:
    first, kinds, parts, lengths, text, others = _chunk_decoder.decode(lz4.block.decompress(chunk))
    out: list[Event] = []
    start = delta = other = 0
    for index, kind in enumerate(kinds):
        if kind == _OTHER:
            out.append(others[other])
            other += 1
            continue
        end = start + lengths[delta]
        cls = TextDelta if kind == _TEXT else ReasoningDelta
        out.append(cls(part=parts[delta], delta=text[start:end], seq=first + index))
        start = end
        delta += 1
    return out


def _unpack_merged(chunk: bytes) -> list[Event]:
    """A chunk's events as :func:`_unpack` gives them, except that consecutive deltas
    of one kind and part are one event, numbered as the last of them (a chunk of one
    part's text: one event)."""
    first, kinds, parts, lengths, text, others = _chunk_decoder.decode(lz4.block.decompress(chunk))
    if not others and not any(kinds) and min(parts) == max(parts):  # nearly every chunk
        return [TextDelta(part=parts[0], delta=text, seq=first + len(kinds) - 1)]
    runs: list[tuple[int, int, int, int]] = []  # kind, part, last index, end in text
    end = delta = 0
    for index, kind in enumerate(kinds):
        if kind == _OTHER:
            runs.append((kind, -1, index, end))
            continue
        part = parts[delta]
        end += lengths[delta]
        delta += 1
        if runs and runs[-1][:2] == (kind, part):
            runs[-1] = (kind, part, index, end)
        else:
            runs.append((kind, part, index, end))
    out: list[Event] = []
    begin = other = 0
    for kind, part, index, end in runs:
        if kind == _OTHER:
            out.append(others[other])
            other += 1
            continue
        cls = TextDelta if kind == _TEXT else ReasoningDelta
        out.append(cls(part=part, delta=text[begin:end], seq=first + index))
        begin = end
    return out


class _Stream:
    """One stream: its events (``seq`` 1 to ``size``) are ``chunks`` (``packed`` of
    them, ``_CHUNK`` per chunk, the last one of a finished stream maybe fewer), then
    ``events``, the tail as structs."""

    __slots__ = (
        "cancel_reason",
        "cancel_watchers",
        "chunks",
        "created_at",
        "events",
        "finished_at",
        "followers",
        "lease_until",
        "meta",
        "pack_queued",
        "packed",
        "readers",
        "readers_left_at",
        "status",
        "stream_id",
        "waiters",
    )

    def __init__(self, stream_id: str, meta: Mapping[str, str], now: float) -> None:
        self.stream_id = stream_id
        self.events: list[Event] = []
        self.chunks: list[bytes] = []
        self.packed = 0
        self.pack_queued = False
        self.status = StreamStatus.RUNNING
        self.meta = dict(meta)
        self.created_at = now
        self.finished_at: float | None = None
        self.cancel_reason: str | None = None
        self.cancel_watchers: list[Callable[[str], None]] = []
        self.lease_until: float | None = None
        self.readers = 0
        self.readers_left_at: float | None = None
        self.waiters: list[asyncio.Future[None]] = []
        self.followers: list[_Follower] = []

    @property
    def size(self) -> int:
        """The last ``seq`` (0 before any event)."""
        return self.packed + len(self.events)

    def slice(self, start: int, stop: int | None = None) -> list[Event]:
        """Events with ``start < seq <= stop`` (``stop``: ``None`` for all), unpacking
        only the chunks that hold some of them."""
        packed = self.packed
        if start >= packed:  # the live tail: what followers and readers take
            return self.events[start - packed : None if stop is None else stop - packed]
        end = self.size if stop is None else min(stop, self.size)
        first = start // _CHUNK
        out: list[Event] = []
        for chunk in self.chunks[first : -(-min(end, packed) // _CHUNK)]:
            out += _unpack(chunk)
        if end > packed:
            out += self.events[: end - packed]
        offset = first * _CHUNK
        return out[start - offset : end - offset]

    def merged(self, start: int) -> list[Event]:
        """Events with ``seq > start``, the deltas of each whole packed chunk merged
        (:func:`_unpack_merged`): a read for folding costs a few structs per chunk,
        not one per event."""
        packed = self.packed
        if start >= packed:
            return self.events[start - packed :]
        first, skip = divmod(start, _CHUNK)
        chunks = self.chunks[first:]
        out = _unpack(chunks[0])[skip:] if skip else _unpack_merged(chunks[0])
        for chunk in chunks[1:]:
            out += _unpack_merged(chunk)
        return out + self.events

    def pack(self, keep: int) -> None:
        """Pack the tail down to its last ``keep`` to ``keep + _CHUNK - 1`` events, or
        all of it with ``keep=0`` (a finished stream)."""
        events = self.events
        while len(events) >= keep + _CHUNK or (keep == 0 and events):
            chunk = events[:_CHUNK]
            self.chunks.append(_pack(chunk))
            self.packed += len(chunk)
            del events[:_CHUNK]


class _Timers:
    """The deadlines of every reader and follower of a log behind one event-loop timer.

    A heap of ``[deadline, order, owner]`` entries (``time.monotonic()`` seconds) and
    one timer for the earliest: ~100 bytes per armed owner where a timer of its own
    costs ~530 (a uvloop ``TimerHandle`` with its libuv handle, arguments and
    context). A disarmed entry keeps its place with ``owner`` cleared (the heapq
    documentation's "removed" mark) until it comes due.
    """

    __slots__ = ("handle", "handle_at", "heap", "loop", "order")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.heap: list[list[Any]] = []
        self.order = 0
        self.handle: asyncio.TimerHandle | None = None
        self.handle_at = math.inf

    def add(self, deadline: float, owner: _LazyTimer) -> list[Any]:
        """Have ``owner._fired`` run at ``deadline``; return the entry (to disarm it)."""
        self.order += 1
        entry = [deadline, self.order, owner]
        heapq.heappush(self.heap, entry)
        self._arm()
        return entry

    def _arm(self) -> None:
        heap = self.heap
        while heap and heap[0][2] is None:
            heapq.heappop(heap)
        deadline = heap[0][0] if heap else math.inf
        if deadline < self.handle_at:
            if self.handle is not None:
                self.handle.cancel()
            self.handle_at = deadline
            when = self.loop.time() + (deadline - time.monotonic())
            self.handle = self.loop.call_at(when, self._run)

    def _run(self) -> None:
        """Run the owners that are due (those that re-arm come back at a later run)."""
        self.handle, self.handle_at = None, math.inf
        heap = self.heap
        now = time.monotonic()
        due: list[_LazyTimer | None] = []
        while heap and heap[0][0] <= now:
            due.append(heapq.heappop(heap)[2])
        for owner in due:
            if owner is not None:
                try:
                    owner._fired()
                except Exception:  # a bug in one owner: not the others' deadlines
                    logger.exception("a log timer failed")
        self._arm()


class _LazyTimer:
    """Base of a reader or follower with one deadline, armed lazily: asking for a
    later deadline than the armed one changes nothing, and when it comes early (the
    deadline moved on because events came) the owner asks again for the new one. So
    following a busy stream costs no timer per event. The owner's ``_fire`` runs."""

    __slots__ = ("entry", "timers")

    def __init__(self, timers: _Timers) -> None:
        self.timers = timers
        self.entry: list[Any] | None = None
        """This owner's ``[deadline, order, owner]`` in ``timers``, while armed."""

    def _arm(self, deadline: float) -> None:
        """Have ``_fire`` run by ``deadline`` (``time.monotonic()`` seconds)."""
        if deadline < math.inf and (self.entry is None or deadline < self.entry[0]):
            self._disarm()
            self.entry = self.timers.add(deadline, self)

    def _fired(self) -> None:
        self.entry = None
        self._fire()

    def _disarm(self) -> None:
        if self.entry is not None:
            self.entry[2] = None
            self.entry = None

    def _fire(self) -> None:
        raise NotImplementedError


class _Wake(_LazyTimer):
    """How a live reader waits: a future resolved by the next append, or by the timer."""

    __slots__ = ("future", "stream")

    def __init__(self, timers: _Timers, stream: _Stream) -> None:
        super().__init__(timers)
        self.stream = stream
        self.future: asyncio.Future[None] | None = None

    async def wait(self, deadline: float) -> None:
        """Wait for an append or until ``deadline`` (``time.monotonic()`` seconds)."""
        self._arm(deadline)
        future = self.future = self.timers.loop.create_future()
        self.stream.waiters.append(future)
        await future

    def _fire(self) -> None:
        if self.future is not None and not self.future.done():
            self.future.set_result(None)

    def close(self) -> None:
        self._disarm()


class _Follower(_LazyTimer):
    """A follower the log pushes to, from a callback: no task of its own.

    It hands over what the log holds after its position, batch by batch, then waits
    in the stream's ``followers``. An append queues the follower for the event loop's
    next turn (once, however many appends the turn has; one callback serves every
    follower queued in a turn, as a ``call_soon`` costs ~0.7 us), which hands over
    everything that came, in batches, each in one write: the writes of a turn leave
    together, not one between every producer's work (docs/performance.md, "Pushed to
    the SSE response", for why not in the appender's step).

    While the sink's write is in flight, nothing is handed over: the follower
    catches up from its position when the write is done. Its one timer
    (:class:`_LazyTimer`) serves heartbeats and the lease check.
    """

    __slots__ = (
        "after", "batch", "done", "ended", "idle", "log", "queued", "quiet_until",
        "sink", "stream", "writing",
    )  # fmt: skip

    def __init__(
        self,
        log: MemoryStreamLog,
        stream: _Stream,
        after: int,
        sink: Sink,
        batch: int,
        idle: float | None,
    ) -> None:
        super().__init__(log._timers_now())
        self.log = log
        self.stream = stream
        self.after = after
        self.sink = sink
        self.batch = batch
        self.idle = math.inf if idle is None else idle
        self.done: asyncio.Future[None] = self.timers.loop.create_future()
        self.quiet_until = time.monotonic() + self.idle
        self.writing = False
        self.queued = False
        """Whether the next-turn callback is queued."""
        self.ended = False
        stream.readers += 1
        stream.followers.append(self)
        self._deliver()

    def wake(self) -> None:
        """An append: hand over what came at the event loop's next turn."""
        if not self.queued:
            self.queued = True
            self.log._queue(self)

    def next_turn(self) -> None:
        self.queued = False
        self._deliver()

    def _deliver(self) -> None:
        """Hand over every batch the log holds after ``after`` (until a write is in flight)."""
        stream = self.stream
        while not self.writing and not self.done.done():
            if stream.size <= self.after:
                if stream.status != "running":
                    self._end(None)
                else:
                    self._arm_quiet()
                return
            chunk = stream.slice(self.after, self.after + self.batch)
            self.after = chunk[-1].seq
            self.quiet_until = time.monotonic() + self.idle
            self._hand(chunk, is_terminal(chunk[-1]))

    def _hand(self, chunk: list[Event], terminal: bool) -> None:
        try:
            pending = self.sink(chunk)
        except Exception as exc:  # the sink's own failure ends this follower only
            self._end(exc)
            return
        if pending is None:
            if terminal:
                self._end(None)
            return
        self.writing = True
        asyncio.ensure_future(pending).add_done_callback(
            lambda written: self._written(written, terminal)
        )

    def _written(self, written: asyncio.Future[object], terminal: bool) -> None:
        self.writing = False
        if written.cancelled():  # the follower's owner gave up on it
            self._end(None)
        elif (exc := written.exception()) is not None:
            self._end(exc)
        elif terminal:
            self._end(None)
        else:
            self._deliver()

    def _arm_quiet(self) -> None:
        """Time the heartbeat, or the lease check if the lease ends first."""
        self._arm(min(self.quiet_until, self.stream.lease_until or math.inf))

    def _fire(self) -> None:
        if self.done.done():
            return
        now = time.monotonic()
        stream = self.stream
        if stream.lease_until is not None and now >= stream.lease_until:
            self.log._check_lease(stream)  # its producer_lost wakes this follower
        elif not self.writing and now >= self.quiet_until:
            self.quiet_until = now + self.idle
            self._hand([], False)
        if not self.done.done():
            self._arm_quiet()

    def _end(self, exc: BaseException | None) -> None:
        if self.ended:
            return
        self.ended = True
        self._disarm()
        self.stream.followers.remove(self)
        self.log._reader_left(self.stream)
        if self.done.done():  # cancelled by its owner (the client left)
            return
        if exc is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(exc)

    def close(self) -> None:
        self._end(None)


def _unwatch(stream: _Stream, callback: Callable[[str], None]) -> None:
    if callback in stream.cancel_watchers:
        stream.cancel_watchers.remove(callback)


class MemoryStreamLog:
    """A :class:`~tokenwire.log.base.StreamLog` in this process's memory.

    Args:
        retention: seconds a finished stream stays readable after its terminal event.
        clock: wall clock in Unix seconds (injectable for tests); leases use
            :func:`time.monotonic`.
        pack_after: seconds after its terminal event at which the rest of a finished
            stream's events are packed (``0``: at once; a running stream's older events
            are packed 64 at a time once it holds 72, at the next turn).
    """

    def __init__(
        self,
        *,
        retention: float = 3600.0,
        clock: Callable[[], float] = time.time,
        pack_after: float = _PACK_AFTER,
    ) -> None:
        self._pack_after = pack_after
        self._streams: dict[str, _Stream] = {}
        self.on_producer_lost: Callable[[str], Coroutine[Any, Any, None]] | None = None
        self.events_in_process = True
        self._lost_tasks: set[asyncio.Task[None]] = set()
        self._woken: list[_Follower] = []
        """Followers to hand their new events to at the event loop's next turn."""
        self._to_pack: list[_Stream] = []
        """Running streams to pack at the event loop's next turn, after ``_woken``."""
        self._turn_queued = False
        self._timers: _Timers | None = None
        self._active: dict[str, str] = {}
        """conversation id → its running stream's id."""
        self._expired: OrderedDict[str, None] = OrderedDict()
        self._retention = retention
        self._clock = clock
        self._last_sweep = clock()

    def _get(self, stream_id: str) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            if stream_id in self._expired:
                raise StreamExpiredError(stream_id)
            raise StreamNotFoundError(stream_id)
        if stream.finished_at is not None and self._clock() > stream.finished_at + self._retention:
            self._expire(stream_id)
            raise StreamExpiredError(stream_id)
        return stream

    def _expire(self, stream_id: str) -> None:
        del self._streams[stream_id]
        self._expired[stream_id] = None
        if len(self._expired) > _EXPIRED_KEPT:
            self._expired.popitem(last=False)

    def _sweep(self) -> None:
        now = self._clock()
        if now - self._last_sweep < min(60.0, self._retention):
            return
        self._last_sweep = now
        cutoff = now - self._retention
        for stream_id in [
            sid
            for sid, s in self._streams.items()
            if s.finished_at is not None and s.finished_at < cutoff
        ]:
            self._expire(stream_id)

    async def create(self, stream_id: str, meta: Mapping[str, str]) -> None:
        self._sweep()
        if stream_id in self._streams:
            raise ValueError(f"stream {stream_id!r} exists")
        self._streams[stream_id] = _Stream(stream_id, meta, self._clock())
        conversation_id = meta.get("conversation_id")
        if conversation_id is not None:
            self._active[conversation_id] = stream_id

    async def append(self, stream_id: str, events: list[Event]) -> list[Event]:
        return self._append(self._get(stream_id), events)

    def _append(self, stream: _Stream, events: list[Event]) -> list[Event]:
        if stream.status != "running":
            return []
        log = stream.events
        seq = stream.size
        out: list[Event] = []
        for event in events:
            seq += 1
            numbered = with_seq(event, seq)
            log.append(numbered)
            out.append(numbered)
            if is_terminal(event):
                stream.status = outcome(event)
                stream.finished_at = self._clock()
                stream.lease_until = None
                stream.cancel_watchers.clear()
                self._pack_later(stream)
                conversation_id = stream.meta.get("conversation_id")
                if (
                    conversation_id is not None
                    and self._streams.get(self._active.get(conversation_id, "")) is stream
                ):
                    del self._active[conversation_id]
                break
        if out:
            if stream.waiters:
                waiters, stream.waiters = stream.waiters, []
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)
            for follower in stream.followers[:]:
                follower.wake()
        if len(log) >= _KEEP + _CHUNK and not stream.pack_queued and stream.status == "running":
            stream.pack_queued = True
            self._to_pack.append(stream)
            self._next_turn_soon()
        return out

    def _timers_now(self) -> _Timers:
        """The deadlines of this log's readers and followers on the running loop."""
        loop = asyncio.get_running_loop()
        if self._timers is None or self._timers.loop is not loop:
            self._timers = _Timers(loop)
        return self._timers

    def _queue(self, follower: _Follower) -> None:
        self._next_turn_soon()
        self._woken.append(follower)

    def _next_turn_soon(self) -> None:
        if not self._turn_queued:
            self._turn_queued = True
            asyncio.get_running_loop().call_soon(self._next_turn)

    def _next_turn(self) -> None:
        """Hand the woken followers their events, then pack what they took: a stream's
        packing is one step of every turn's work for all streams, not a stall in the
        step of its producer, and a follower a turn behind does not unpack it."""
        self._turn_queued = False
        woken, self._woken = self._woken, []
        for follower in woken:
            try:
                follower.next_turn()
            except Exception:  # a bug in one follower: not the others' delivery
                logger.exception("stream %s: a follower failed", follower.stream.stream_id)
        to_pack, self._to_pack = self._to_pack, []
        for stream in to_pack:
            stream.pack_queued = False
            if stream.status == "running":
                stream.pack(keep=_KEEP)

    def _pack_later(self, stream: _Stream) -> None:
        if self._pack_after <= 0:
            stream.pack(keep=0)
        else:
            asyncio.get_running_loop().call_later(self._pack_after, stream.pack, 0)

    async def read(
        self, stream_id: str, after: int = 0, *, batch: int = 256, idle: float | None = None
    ) -> AsyncGenerator[list[Event], None]:
        stream = self._get(stream_id)
        stream.readers += 1
        wake = _Wake(self._timers_now(), stream)
        try:
            quiet_until = math.inf if idle is None else time.monotonic() + idle
            while True:
                if stream.size > after:
                    chunk = stream.slice(after, after + batch)
                    after = chunk[-1].seq
                    yield chunk
                    if is_terminal(chunk[-1]):
                        return
                    if idle is not None:
                        quiet_until = time.monotonic() + idle
                    continue
                if stream.status != "running":
                    return
                now = time.monotonic()
                if now >= quiet_until:
                    yield []
                    quiet_until = now + (idle or 0.0)
                    continue
                if stream.lease_until is not None and now >= stream.lease_until:
                    self._check_lease(stream)
                    continue
                await wake.wait(min(quiet_until, stream.lease_until or math.inf))
        finally:
            wake.close()
            self._reader_left(stream)

    def follow(
        self,
        stream_id: str,
        after: int,
        sink: Sink,
        *,
        batch: int = 256,
        idle: float | None = None,
    ) -> Follower:
        """Push each batch to ``sink`` (:mod:`tokenwire.log.follow`): what the log
        holds at once, then what each turn of the event loop appends, at the next
        turn, from a callback; a live SSE response needs no task of its own.

        Raises:
            StreamNotFoundError, StreamExpiredError: at once.
        """
        return _Follower(self, self._get(stream_id), after, sink, batch, idle)

    async def _wait_changed(self, stream: _Stream, timeout: float | None = None) -> bool:
        """Wait for an append, at most ``timeout`` s and never past the lease's expiry.

        Returns ``False`` when the wait timed out."""
        lease_left = None
        if stream.lease_until is not None:
            lease_left = max(0.0, stream.lease_until - time.monotonic())
        limits = [t for t in (timeout, lease_left) if t is not None]
        try:
            async with asyncio.timeout(min(limits) if limits else None):
                future = asyncio.get_running_loop().create_future()
                stream.waiters.append(future)
                await future
        except TimeoutError:
            self._check_lease(stream)
            return False
        return True

    def _check_lease(self, stream: _Stream) -> bool:
        """Append ``producer_lost`` if the lease expired; ``True`` when it did."""
        if stream.lease_until is None or time.monotonic() < stream.lease_until:
            return False
        lost = Error(
            code="producer_lost", message="the generation stopped unexpectedly", retryable=True
        )
        if not self._append(stream, [lost]):
            return False
        if self.on_producer_lost is not None:
            task = asyncio.get_running_loop().create_task(self.on_producer_lost(stream.stream_id))
            self._lost_tasks.add(task)
            task.add_done_callback(self._lost_tasks.discard)
        return True

    async def sweep_expired_leases(self) -> list[str]:
        """End every running stream whose producer's lease expired with
        ``error{producer_lost}`` (and ``on_producer_lost``), whether or not anyone reads
        it; return their ids. Looks at every stream held (one pass, no waiting)."""
        now = time.monotonic()
        expired = [
            s
            for s in self._streams.values()
            if s.status == "running" and s.lease_until is not None and now >= s.lease_until
        ]
        return [s.stream_id for s in expired if self._check_lease(s)]

    async def events(
        self, stream_id: str, after: int = 0, limit: int | None = None, *, merged: bool = False
    ) -> list[Event]:
        stream = self._get(stream_id)
        if merged and limit is None:
            return stream.merged(after)
        return stream.slice(after, None if limit is None else after + limit)

    async def wait(self, stream_id: str, after: int, timeout: float) -> list[Event]:
        stream = self._get(stream_id)
        deadline = time.monotonic() + timeout
        while stream.size <= after and stream.status == "running":
            left = deadline - time.monotonic()
            if left <= 0:
                break
            stream.readers += 1
            try:
                await self._wait_changed(stream, left)
            finally:
                self._reader_left(stream)
        return stream.slice(after)

    async def info(self, stream_id: str) -> StreamInfo:
        stream = self._get(stream_id)
        return StreamInfo(
            stream_id=stream_id,
            status=stream.status,
            last_seq=stream.size,
            meta=stream.meta,
            created_at=stream.created_at,
            finished_at=stream.finished_at,
        )

    async def active_stream(self, conversation_id: str) -> StreamInfo | None:
        stream_id = self._active.get(conversation_id)
        return None if stream_id is None else await self.info(stream_id)

    async def request_cancel(self, stream_id: str, reason: str) -> bool:
        stream = self._get(stream_id)
        if stream.status != "running" or stream.cancel_reason is not None:
            return False
        stream.cancel_reason = reason
        watchers, stream.cancel_watchers = stream.cancel_watchers, []
        for callback in watchers:
            callback(reason)
        return True

    def watch_cancel(self, stream_id: str, callback: Callable[[str], None]) -> Callable[[], None]:
        stream = self._get(stream_id)
        if stream.cancel_reason is not None:
            callback(stream.cancel_reason)
            return lambda: None
        stream.cancel_watchers.append(callback)
        return functools.partial(_unwatch, stream, callback)  # lighter than a closure

    async def heartbeat(self, stream_id: str, ttl: float) -> None:
        stream = self._get(stream_id)
        if stream.status == "running":
            stream.lease_until = time.monotonic() + ttl

    def _reader_left(self, stream: _Stream) -> None:
        stream.readers -= 1
        if not stream.readers:
            stream.readers_left_at = self._clock()

    async def readers(self, stream_id: str) -> tuple[int, float | None]:
        stream = self._get(stream_id)
        return stream.readers, stream.readers_left_at

    def statistics(self) -> dict[str, int]:
        """Counts for metrics: ``streams``, ``running``, ``events`` held, live ``readers``,
        and ``packed_bytes``, the size of the packed chunks of events."""
        streams = self._streams.values()
        return {
            "streams": len(self._streams),
            "running": sum(1 for s in streams if s.status == "running"),
            "events": sum(s.size for s in streams),
            "readers": sum(s.readers for s in streams),
            "packed_bytes": sum(len(chunk) for s in streams for chunk in s.chunks),
        }

    async def close(self) -> None:
        self._streams.clear()
