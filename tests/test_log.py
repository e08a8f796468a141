"""The stream log contract, run against every backend (memory and Redis), plus what
only Redis does: several processes sharing streams, connection bounds, outages."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sized
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import redis.asyncio as aioredis

from tests.support.redis_logs import REDIS_URL, namespace, open_redis_logs
from tokenwire.accumulate import MessageState
from tokenwire.errors import LogUnavailableError, StreamExpiredError, StreamNotFoundError
from tokenwire.events import (
    Cancelled,
    Error,
    Event,
    Finish,
    ReasoningDelta,
    Source,
    Start,
    StepFinish,
    StepStart,
    TextDelta,
    TokenUsage,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolResult,
    Usage,
    encode_event,
)
from tokenwire.log import redis_read, redis_tail
from tokenwire.log.base import StreamLog
from tokenwire.log.follow import Follower
from tokenwire.log.memory import MemoryStreamLog
from tokenwire.log.redis import RedisStreamLog

pytestmark = pytest.mark.anyio

MakeLog = Callable[..., Awaitable[StreamLog]]
"""``await make_log(retention=…)``: a fresh log of the backend under test."""


def delta(text: str) -> TextDelta:
    return TextDelta(part=0, delta=text)


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    async with namespace() as prefix:
        yield prefix


@pytest.fixture
async def redis_logs(redis_prefix: str) -> AsyncIterator[Callable[..., RedisStreamLog]]:
    """``make(**kwargs)``: a new :class:`RedisStreamLog` (a "process") on the test prefix."""
    async with open_redis_logs(redis_prefix) as make:
        yield make


@pytest.fixture(params=["memory", "redis"])
async def make_log(request: pytest.FixtureRequest) -> AsyncIterator[MakeLog]:
    """``await make_log(retention=…)``: a fresh log of the backend under test."""
    async with contextlib.AsyncExitStack() as stack:
        make_redis = None
        if request.param == "redis":
            prefix = await stack.enter_async_context(namespace())
            make_redis = await stack.enter_async_context(open_redis_logs(prefix))

        async def make(*, retention: float = 3600.0) -> StreamLog:
            if make_redis is not None:
                return make_redis(retention=retention)
            memory = MemoryStreamLog(retention=retention)
            stack.push_async_callback(memory.close)
            return memory

        yield make


@pytest.fixture
async def log(make_log: MakeLog) -> StreamLog:
    return await make_log()


# -- the contract ------------------------------------------------------------------------


async def test_append_numbers_and_stops_at_terminal(log: StreamLog) -> None:
    await log.create("s", {"k": "v"})
    with pytest.raises(ValueError):
        await log.create("s", {})
    first = await log.append("s", [delta("a"), delta("b")])
    assert [e.seq for e in first] == [1, 2]
    ended = await log.append("s", [Finish(finish_reason="stop"), delta("late")])
    assert [type(e) for e in ended] == [Finish]
    assert await log.append("s", [Cancelled(reason="user")]) == []
    info = await log.info("s")
    assert (info.status, info.last_seq, info.meta["k"]) == ("completed", 3, "v")
    assert info.finished_at is not None and info.finished_at >= info.created_at
    assert not await log.request_cancel("s", "user")
    stored = await log.events("s")
    assert [encode_event(e) for e in stored] == [encode_event(e) for e in [*first, *ended]]
    assert [e.seq for e in await log.events("s", after=1, limit=1)] == [2]


async def test_unknown_stream_is_not_found(log: StreamLog) -> None:
    with pytest.raises(StreamNotFoundError):
        await log.info("nope")
    with pytest.raises(StreamNotFoundError):
        await log.append("nope", [delta("a")])
    with pytest.raises(StreamNotFoundError):
        await log.events("nope")
    with pytest.raises(StreamNotFoundError):
        await log.read("nope").__anext__()
    with pytest.raises(StreamNotFoundError):
        await log.request_cancel("nope", "user")
    with pytest.raises(StreamNotFoundError):
        await log.readers("nope")


async def test_read_replays_then_follows_in_batches(log: StreamLog) -> None:
    await log.create("s", {})
    await log.append("s", [delta("a"), delta("b")])
    batches: list[list[Event]] = []
    reader = log.read("s", after=1)
    assert await log.readers("s") == (0, None)
    with anyio.fail_after(5):
        batches.append(await reader.__anext__())
        assert (await log.readers("s"))[0] == 1
        await log.append("s", [delta("c"), delta("d"), Error(code="provider_error", message="x")])
        async for batch in reader:
            batches.append(batch)
    assert [[e.seq for e in b] for b in batches] == [[2], [3, 4, 5]]
    count, left_at = await log.readers("s")
    assert count == 0 and left_at is not None


async def test_live_reader_gets_one_append_as_one_batch(log: StreamLog) -> None:
    await log.create("s", {})
    reader = log.read("s")
    got: list[list[Event]] = []

    async def follow() -> None:
        async for batch in reader:
            got.append(batch)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            await _until(lambda: _count(log, "s", 1))
            await log.append("s", [delta("a"), delta("b"), delta("c")])
            await _until(lambda: _has(got, 1))
            await log.append("s", [delta("d"), Finish(finish_reason="stop")])
    assert [[e.seq for e in b] for b in got] == [[1, 2, 3], [4, 5]]


async def test_batch_size_bounds_each_step(log: StreamLog) -> None:
    await log.create("s", {})
    events: list[Event] = [delta(str(i)) for i in range(10)]
    await log.append("s", [*events, Finish(finish_reason="stop")])
    sizes = [len(b) async for b in log.read("s", batch=4)]
    assert sizes == [4, 4, 3]


async def test_idle_reader_gets_empty_batches_for_heartbeats(log: StreamLog) -> None:
    await log.create("s", {})
    reader = log.read("s", idle=0.01)
    with anyio.fail_after(5):
        assert await reader.__anext__() == []
        assert await reader.__anext__() == []
        await log.append("s", [Finish(finish_reason="stop")])
        batch = await reader.__anext__()
        while not batch:  # a heartbeat may be due before the tail delivers
            batch = await reader.__anext__()
    assert [e.seq for e in batch] == [1]
    await reader.aclose()


async def test_expired_lease_ends_stream_with_producer_lost_once(log: StreamLog) -> None:
    lost: list[str] = []
    log.on_producer_lost = _lost_recorder(lost)
    await log.create("s", {})
    await log.append("s", [delta("a")])
    await log.heartbeat("s", ttl=0.02)
    seen: list[list[Event]] = [[], []]

    async def read(i: int) -> None:
        async for batch in log.read("s"):
            seen[i] += batch

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read, 0)
            tg.start_soon(read, 1)
    for events in seen:
        assert [e.seq for e in events] == [1, 2]
        assert isinstance(events[-1], Error) and events[-1].code == "producer_lost"
    assert (await log.info("s")).status == "failed"
    with anyio.fail_after(5):
        await _until(lambda: _true(lost == ["s"]))


async def test_heartbeat_keeps_the_lease(log: StreamLog) -> None:
    await log.create("s", {})
    await log.heartbeat("s", ttl=0.2)
    got: list[Event] = []

    async def follow() -> None:
        async for batch in log.read("s"):
            got.extend(batch)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            end = time.monotonic() + 0.5
            while time.monotonic() < end:  # renewing past the first ttl: no producer_lost
                await log.heartbeat("s", ttl=0.2)
                await anyio.sleep(0.05)
            await log.append("s", [Finish(finish_reason="stop")])
    assert [type(e) for e in got] == [Finish]


class Collect:
    """A follow sink keeping every batch; while ``hold`` is set, each batch's write
    stays in flight until the test resolves it."""

    def __init__(self) -> None:
        self.batches: list[list[Event]] = []
        self.hold = False
        self.in_flight: list[asyncio.Future[None]] = []

    def __call__(self, batch: list[Event]) -> asyncio.Future[None] | None:
        self.batches.append(batch)
        if not self.hold:
            return None
        write = asyncio.get_running_loop().create_future()
        self.in_flight.append(write)
        return write

    def seqs(self) -> list[list[int]]:
        return [[e.seq for e in b] for b in self.batches if b]


async def test_follow_replays_then_follows_then_ends(log: StreamLog) -> None:
    await log.create("s", {})
    await log.append("s", [delta("a"), delta("b")])
    sink = Collect()
    follower = log.follow("s", 1, sink)
    with anyio.fail_after(5):
        await _until(lambda: _has(sink.batches, 1))
        assert (await log.readers("s"))[0] == 1
        await log.append("s", [delta("c"), delta("d"), Error(code="provider_error", message="x")])
        await follower.done
    assert sink.seqs() == [[2], [3, 4, 5]]
    count, left_at = await log.readers("s")
    assert count == 0 and left_at is not None


async def _first_write_in_flight(log: StreamLog) -> tuple[Collect, Follower]:
    """Follow stream ``s`` with a sink that holds its writes; return once the write
    of the first event (``seq`` 1) is in flight."""
    await log.create("s", {})
    sink = Collect()
    sink.hold = True
    follower = log.follow("s", 0, sink)
    await log.append("s", [delta("a")])
    await _until(lambda: _has(sink.in_flight, 1))
    return sink, follower


async def test_follow_waits_for_a_write_in_flight_and_loses_nothing(log: StreamLog) -> None:
    with anyio.fail_after(5):
        sink, follower = await _first_write_in_flight(log)
        await log.append("s", [delta("b")])
        await log.append("s", [delta("c"), Finish(finish_reason="stop")])
        await anyio.sleep(0.05)  # room for a wrong handover; none may come while writing
        assert sink.seqs() == [[1]]
        sink.hold = False
        sink.in_flight[0].set_result(None)
        await follower.done
    assert sink.seqs() == [[1], [2, 3, 4]]  # caught up from its position, in one batch


async def test_follow_ends_with_the_sinks_error(log: StreamLog) -> None:
    with anyio.fail_after(5):
        sink, follower = await _first_write_in_flight(log)
        sink.in_flight[0].set_exception(OSError("client gone"))
        with pytest.raises(OSError, match="client gone"):
            await follower.done
        await _until(lambda: _count(log, "s", 0))
    await log.append("s", [delta("b")])  # the producer goes on


async def test_follow_heartbeats_and_producer_lost(log: StreamLog) -> None:
    await log.create("s", {})
    sink = Collect()
    follower = log.follow("s", 0, sink, idle=0.01)
    with anyio.fail_after(5):
        await _until(lambda: _has(sink.batches, 2))
        assert sink.batches[:2] == [[], []]
        await log.heartbeat("s", ttl=0.05)
        await follower.done
    [[lost]] = sink.seqs()
    event = sink.batches[-1][-1]
    assert isinstance(event, Error) and event.code == "producer_lost" and lost == 1


async def test_followers_heartbeat_each_on_its_own_interval(log: StreamLog) -> None:
    """The memory log keeps every follower's deadline behind one timer: a follower
    that heartbeats often goes on after its first, while one with a long interval
    beside it, and one closed, get nothing."""
    await log.create("s", {})
    fast, slow, closed = Collect(), Collect(), Collect()
    log.follow("s", 0, fast, idle=0.01)
    log.follow("s", 0, slow, idle=60)
    log.follow("s", 0, closed, idle=0.01).close()
    with anyio.fail_after(5):
        await _until(lambda: _has(fast.batches, 3))
    assert fast.batches[:3] == [[], [], []]
    assert slow.batches == [] and closed.batches == []


async def test_closed_follower_gets_nothing_more(log: StreamLog) -> None:
    await log.create("s", {})
    sink = Collect()
    follower = log.follow("s", 0, sink)
    with anyio.fail_after(5):
        await _until(lambda: _count(log, "s", 1))
        follower.close()
        await _until(lambda: _count(log, "s", 0))
    await log.append("s", [delta("a"), Finish(finish_reason="stop")])
    await anyio.sleep(0.05)  # a wrong handover would land here
    assert sink.seqs() == []


async def test_memory_follower_gets_a_turns_appends_at_the_next_turn_in_one_batch() -> None:
    """The memory log's push path: no task per follower; what one turn of the event
    loop appends is handed over by one callback at the next turn, in one batch (one
    write), and the follower is caught up before that callback's turn ends."""
    log = MemoryStreamLog()
    await log.create("s", {})
    await log.append("s", [delta("a")])
    sink = Collect()
    log.follow("s", 0, sink)
    assert sink.seqs() == [[1]]  # what the log holds: at once
    for i in range(2, 41):
        await log.append("s", [delta(str(i))])  # one turn: the memory append never suspends
    assert sink.seqs() == [[1]]
    await asyncio.sleep(0)  # (one turn: the follower's callback was queued first)
    assert sink.seqs() == [[1], list(range(2, 41))]
    with pytest.raises(StreamNotFoundError):
        log.follow("nope", 0, sink)


async def test_memory_followers_of_many_streams_are_served_at_the_same_next_turn() -> None:
    """One callback serves every follower woken in a turn, of whatever stream: all of
    them have their events after one turn, each in its own batch."""
    log = MemoryStreamLog()
    sinks = {name: Collect() for name in ("s", "t", "u")}
    for name, sink in sinks.items():
        await log.create(name, {})
        log.follow(name, 0, sink)
    for i in range(1, 4):
        for name in sinks:
            await log.append(name, [delta(str(i))])
    assert all(sink.seqs() == [] for sink in sinks.values())
    await asyncio.sleep(0)  # one turn
    assert [sink.seqs() for sink in sinks.values()] == [[[1, 2, 3]]] * 3
    await log.append("t", [delta("4")])
    await asyncio.sleep(0)
    assert [sink.seqs() for sink in sinks.values()] == [[[1, 2, 3]], [[1, 2, 3], [4]], [[1, 2, 3]]]


EVERY_KIND: list[Event] = [
    Start(stream_id="s", message_id="m", conversation_id="c", model="fake:x", created_at=1.5),
    StepStart(step=1),
    ReasoningDelta(part=0, delta="pensée "),
    TextDelta(part=1, delta="héllo 🌍"),
    TextDelta(part=1, delta=""),
    TextDelta(part=1, delta="no", refusal=True),
    TextDelta(part=300, delta="a part numbered past a byte"),
    ToolCallStart(part=2, tool_call_id="call_1", name="lookup"),
    ToolCallDelta(part=2, tool_call_id="call_1", delta='{"q": '),
    ToolCall(part=2, tool_call_id="call_1", name="lookup", arguments={"q": [1, 2.5, None]}),
    ToolResult(part=3, tool_call_id="call_1", output={"rows": ["x"]}, is_error=False),
    Source(part=4, url="https://example.com/", title=None),
    StepFinish(step=1, finish_reason="tool_calls"),
    Usage(input_tokens=3, output_tokens=5),
    Finish(finish_reason="stop", usage=TokenUsage(input_tokens=3, output_tokens=5)),
]


async def test_every_event_kind_reads_back_equal(log: StreamLog) -> None:
    await log.create("s", {})
    appended: list[Event] = []
    for event in EVERY_KIND:
        appended += await log.append("s", [event])
    assert [e.seq for e in appended] == list(range(1, len(EVERY_KIND) + 1))
    assert await log.events("s") == appended
    assert await log.events("s", after=3, limit=4) == appended[3:7]
    assert [e for batch in [b async for b in log.read("s", 0, batch=5)] for e in batch] == appended


async def test_a_packed_finished_stream_reads_back_equal() -> None:
    """The memory log packs a finished stream into one compressed blob (here at once,
    ``pack_after=0``): every kind reads back equal through every reading method, and
    nothing more is appended."""
    log = MemoryStreamLog(pack_after=0)
    await log.create("s", {})
    appended = await log.append("s", EVERY_KIND)
    assert log.statistics()["events"] == len(EVERY_KIND)
    assert 0 < log.statistics()["packed_bytes"] < sum(map(len, map(encode_event, appended)))
    assert await log.events("s") == appended
    assert await log.events("s", after=3, limit=4) == appended[3:7]
    assert [e for batch in [b async for b in log.read("s", 2, batch=5)] for e in batch] == (
        appended[2:]
    )
    assert await log.wait("s", len(appended) - 1, timeout=1) == appended[-1:]
    assert (await log.info("s")).last_seq == len(appended)
    batches: list[list[Event]] = []
    follower = log.follow("s", 0, batches.append, batch=4)
    with anyio.fail_after(5):
        await follower.done
    assert [e for batch in batches for e in batch] == appended
    assert await log.append("s", [TextDelta(part=1, delta="late")]) == []


async def test_a_packed_stream_of_token_sized_deltas_costs_about_its_text() -> None:
    """Deltas are packed as their joined text with a kind, part and length each, not
    as one msgpack struct per event (~3 x the text at ~4 bytes per delta)."""
    rng = random.Random(7)
    words = ["stream", "token", "the", "reader", "event", "model", "answer", "of", "resume"]
    pieces = [" " + rng.choice(words)[:4] for _ in range(2000)]
    log = MemoryStreamLog(pack_after=0)
    await log.create("s", {})
    events: list[Event] = [TextDelta(part=0, delta=piece) for piece in pieces]
    appended = await log.append("s", [*events, Finish(finish_reason="stop")])
    assert log.statistics()["packed_bytes"] < 1.5 * len("".join(pieces).encode())
    assert await log.events("s") == appended


async def test_memory_log_reads_across_packed_chunks_and_the_live_tail() -> None:
    """Older events of a running stream are packed 64 at a time at the turn after
    their append, the finished rest at once (``pack_after=0``): every slice reads the
    same events as appended, whether it falls in chunks, in the tail or across both."""
    log = MemoryStreamLog(pack_after=0)
    await log.create("s", {})
    appended: list[Event] = []
    for i in range(300):
        appended += await log.append("s", [delta(str(i))])
        await anyio.lowlevel.checkpoint()  # the turn that packs
    assert log.statistics()["packed_bytes"] > 0
    for after, limit in [(0, None), (0, 10), (60, 10), (63, 2), (100, 150), (250, None), (299, 5)]:
        end = None if limit is None else after + limit
        assert await log.events("s", after=after, limit=limit) == appended[after:end]
    assert await log.wait("s", 250, timeout=1) == appended[250:]
    appended += await log.append("s", [Finish(finish_reason="stop")])
    assert (await log.info("s")).last_seq == len(appended) == 301
    read = [e for batch in [b async for b in log.read("s", 5, batch=70)] for e in batch]
    assert read == appended[5:]
    assert await log.events("s", after=290) == appended[290:]
    assert await log.events("s") == appended
    batches: list[list[Event]] = []
    follower = log.follow("s", 0, batches.append, batch=100)
    with anyio.fail_after(5):
        await follower.done
    assert [e for batch in batches for e in batch] == appended


async def test_a_merged_read_folds_to_what_its_events_fold_to() -> None:
    """``events(merged=True)`` (the producer's read for a store write) gives each packed
    chunk's consecutive deltas of one kind and part as one event, numbered as the last:
    from any point, it folds to the same message, ends at the same ``seq``, and is
    shorter wherever chunks are whole."""
    log = MemoryStreamLog(pack_after=0)
    await log.create("s", {})
    events: list[Event] = []
    for i in range(100):
        events.append(TextDelta(part=1, delta=f"t{i} "))
        if i % 9 == 4:  # another text part next to it
            events.append(TextDelta(part=4, delta=f"p{i} "))
        if i % 40 == 7:  # every kind but the terminal one, in the middle of chunks
            events += [e for e in EVERY_KIND if not isinstance(e, Finish)]
        if i % 30 == 3:
            events += [ReasoningDelta(part=5, delta="hm"), ReasoningDelta(part=5, delta="m")]
    events += [TextDelta(part=1 if i % 5 else 4, delta=f"q{i} ") for i in range(130)]
    events += [TextDelta(part=1, delta=f"r{i} ") for i in range(130)]  # whole chunks of one part
    for event in events:
        await log.append("s", [event])
        await anyio.lowlevel.checkpoint()  # the turn that packs
    for finished in (False, True):
        size = (await log.info("s")).last_seq
        for after in (0, 1, 63, 64, 65, 128, 150, 300, size - 3, size):
            plain = await log.events("s", after=after)
            merged = await log.events("s", after=after, merged=True)
            folded = [MessageState(), MessageState()]
            for state, read in zip(folded, (plain, merged), strict=True):
                for event in read:
                    state.apply(event)
            assert folded[1].parts_list() == folded[0].parts_list(), (finished, after)
            assert [e.seq for e in merged[-1:]] == [e.seq for e in plain[-1:]]
            assert all(a.seq < b.seq for a, b in itertools.pairwise(merged))
            if finished and after in (0, 64):  # whole chunks from there
                assert len(merged) < len(plain) / 2
        await log.append("s", [Finish(finish_reason="stop")])


async def test_retention_answers_expired(make_log: MakeLog) -> None:
    log = await make_log(retention=0.2)
    await log.create("s", {})
    await log.append("s", [Finish(finish_reason="stop")])
    assert (await log.info("s")).status == "completed"
    with anyio.fail_after(5):
        while True:  # retention is real time here: wait for it
            try:
                await log.info("s")
            except StreamExpiredError:
                break
            await anyio.sleep(0.02)
    with pytest.raises(StreamExpiredError):
        await log.events("s")
    with pytest.raises(StreamExpiredError):
        await log.read("s").__anext__()
    with pytest.raises(StreamNotFoundError):
        await log.info("other")


async def test_retention_with_injected_clock_then_sweeps() -> None:
    now = [1000.0]
    log = MemoryStreamLog(retention=60, clock=lambda: now[0])
    await log.create("s", {})
    await log.append("s", [Finish(finish_reason="stop")])
    now[0] += 59
    assert (await log.info("s")).status == "completed"
    now[0] += 2
    with pytest.raises(StreamExpiredError):
        await log.events("s")
    with pytest.raises(StreamExpiredError):
        await log.info("s")
    with pytest.raises(StreamNotFoundError):
        await log.info("other")


async def test_cancel_is_idempotent_and_calls_watchers_once(log: StreamLog) -> None:
    await log.create("s", {})
    seen: list[str] = []
    late = anyio.Event()
    log.watch_cancel("s", seen.append)
    unwatch = log.watch_cancel("s", lambda r: seen.append("unwatched " + r))
    unwatch()
    assert await log.request_cancel("s", "user")
    assert not await log.request_cancel("s", "superseded")
    with anyio.fail_after(5):
        await _until(lambda: _true(seen == ["user"]))
        log.watch_cancel("s", _recorder(seen, late, "late "))
        await late.wait()
    assert seen == ["user", "late user"]


async def test_long_poll_returns_when_an_event_arrives(log: StreamLog) -> None:
    await log.create("s", {})
    result: list[Event] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def poll() -> None:
                result.extend(await log.wait("s", 0, timeout=30))

            tg.start_soon(poll)
            await _until(lambda: _count(log, "s", 1))
            await log.append("s", [delta("x")])
    assert [e.seq for e in result] == [1]
    assert await log.wait("s", 1, timeout=0.01) == []
    assert [e.seq for e in await log.wait("s", 0, timeout=0.01)] == [1]


async def test_active_stream_of_a_conversation(log: StreamLog) -> None:
    await log.create("a", {"conversation_id": "c"})
    await log.create("b", {"conversation_id": "c"})
    await log.create("x", {})
    active = await log.active_stream("c")
    assert active is not None and active.stream_id == "b"
    await log.append("a", [Finish(finish_reason="stop")])  # an older stream ending changes nothing
    active = await log.active_stream("c")
    assert active is not None and active.stream_id == "b"
    await log.append("b", [Cancelled(reason="user")])
    assert await log.active_stream("c") is None
    assert await log.active_stream("other") is None


# -- Redis only: several processes on one Redis -----------------------------------------


async def test_append_on_one_process_read_live_on_another(
    redis_logs: Callable[..., RedisStreamLog],
) -> None:
    a, b = redis_logs(), redis_logs()
    await a.create("s", {})
    await a.append("s", [delta("a")])
    live: list[Event] = []

    async def follow() -> None:
        async for batch in b.read("s"):
            live.extend(batch)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            await _until(lambda: _has(live, 1))
            await a.append("s", [delta("b"), delta("c")])
            await _until(lambda: _has(live, 3))
            await a.append("s", [Finish(finish_reason="stop")])
        late = [e async for batch in b.read("s") for e in batch]
    assert [e.seq for e in live] == [1, 2, 3, 4]
    assert [encode_event(e) for e in late] == [encode_event(e) for e in live]
    assert [encode_event(e) for e in await a.events("s")] == [encode_event(e) for e in live]


async def test_readers_of_many_streams_get_every_append_from_the_tail_at_once(
    redis_logs: Callable[..., RedisStreamLog], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Process ``b`` follows 20 streams that process ``a`` appends to in random order,
    one event at a time, while the readers come and go between their waits: every
    event reaches its reader through ``b``'s tail (the changes it reads, or the
    stream read from the reader's position), never by a reader's own recheck, which
    is set to a minute here: a change the tail missed would stall the test."""
    monkeypatch.setattr(redis_read, "_UNLEASED_RECHECK", 60.0)
    a, b = redis_logs(), redis_logs()
    ids = [f"s{i}" for i in range(20)]
    for stream_id in ids:
        await a.create(stream_id, {})
    rounds = 15
    got: dict[str, list[int]] = {stream_id: [] for stream_id in ids}

    async def follow(stream_id: str) -> None:
        async for batch in b.read(stream_id):
            got[stream_id].extend(e.seq for e in batch)
            await (
                anyio.lowlevel.checkpoint()
            )  # away from the tail for a moment, as a response write

    shuffle = random.Random(7).shuffle
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for stream_id in ids:
                tg.start_soon(follow, stream_id)
            for n in range(1, rounds + 1):
                shuffle(ids)
                for stream_id in ids:
                    await a.append(stream_id, [delta(str(n))])
                if n % 5 == 0:  # now and then, until every reader has caught up
                    await _until(lambda n=n: _true(all(len(g) == n for g in got.values())))
            for stream_id in ids:
                await a.append(stream_id, [Finish(finish_reason="stop")])
    assert all(seqs == list(range(1, rounds + 2)) for seqs in got.values())


@pytest.mark.parametrize("linger", [60.0, 0.0], ids=["still-followed", "dropped"])
async def test_an_append_made_while_the_reader_was_away_reaches_it_at_once(
    redis_logs: Callable[..., RedisStreamLog], monkeypatch: pytest.MonkeyPatch, linger: float
) -> None:
    """A reader of ``b`` takes event 1 and is away while ``a`` appends events 2 to 5 and
    ``b``'s tail reads that change (seen by another reader of ``b``, woken by a later
    append); back, it gets them at once, whether its stream was still followed by the
    tail (``_LINGER``) or dropped meanwhile, though the tail takes only 2 events per
    call. Rechecks are a minute away: a lost change would stall it."""
    monkeypatch.setattr(redis_read, "_UNLEASED_RECHECK", 60.0)
    monkeypatch.setattr(redis_tail, "_LINGER", linger)
    monkeypatch.setattr(redis_tail, "_TAIL_COUNT", 2)  # the tail reads 2 events a call
    a, b = redis_logs(), redis_logs()
    await a.create("s", {})
    await a.create("t", {})
    with anyio.fail_after(10):
        reader = b.read("s")
        other = b.read("t")
        first = asyncio.ensure_future(anext(reader))
        witness = asyncio.ensure_future(anext(other))
        await _until(lambda: _true(b.statistics()["tailed_streams"] == 2))
        await a.append("s", [delta("1")])
        assert [e.seq for e in await first] == [1]
        await a.append("s", [delta("2"), delta("3"), delta("4"), delta("5")])
        await a.append("t", [delta("x")])  # its change comes after that of s
        assert [e.seq for e in await witness] == [1]
        seqs: list[int] = []
        while len(seqs) < 4:
            seqs += [e.seq for e in await anext(reader)]
        assert seqs == [2, 3, 4, 5]
    await reader.aclose()
    await other.aclose()


async def test_cancel_reaches_a_watcher_in_another_process(
    redis_logs: Callable[..., RedisStreamLog],
) -> None:
    a, b = redis_logs(), redis_logs()
    await a.create("s", {})
    reasons: list[str] = []
    got = anyio.Event()
    b.watch_cancel("s", _recorder(reasons, got))
    with anyio.fail_after(5):
        await _until(lambda: _true(b._cancels.subscribed.is_set()))
        assert await a.request_cancel("s", "user")
        await got.wait()
    assert reasons == ["user"]


async def test_readers_counted_across_processes(
    redis_logs: Callable[..., RedisStreamLog],
) -> None:
    a, b = redis_logs(), redis_logs()
    await a.create("s", {})
    ra, rb = a.read("s", idle=60), b.read("s", idle=60)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(_drain, ra)
            tg.start_soon(_drain, rb)
            await _until(lambda: _count(a, "s", 2))
            assert await b.readers("s") == (2, None)
            tg.cancel_scope.cancel()
    count, left_at = await b.readers("s")
    assert count == 0 and left_at is not None


async def test_readers_of_a_dead_process_stop_counting(
    redis_logs: Callable[..., RedisStreamLog],
) -> None:
    a, dead = redis_logs(), redis_logs(process_ttl=0.1)
    await a.create("s", {})
    reader = dead.read("s", idle=60)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(_drain, reader)
            await _until(lambda: _count(a, "s", 1))
            assert dead._counts.alive is not None
            dead._counts.alive.cancel()  # the process stops renewing its liveness key: "killed"
            await _until(lambda: _count(a, "s", 0))
            tg.cancel_scope.cancel()
    assert (await a.readers("s"))[1] is not None


async def test_lease_expiry_races_across_processes_give_one_producer_lost(
    redis_logs: Callable[..., RedisStreamLog],
) -> None:
    a, b = redis_logs(), redis_logs()
    lost: list[str] = []
    a.on_producer_lost = b.on_producer_lost = _lost_recorder(lost)
    await a.create("s", {})
    await a.append("s", [delta("a")])
    await a.heartbeat("s", ttl=0.05)
    seen: list[list[Event]] = [[] for _ in range(6)]

    async def read(i: int, log: RedisStreamLog) -> None:
        async for batch in log.read("s"):
            seen[i] += batch

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(read, i, (a, b)[i % 2])
    for events in seen:
        assert [e.seq for e in events] == [1, 2]
        assert isinstance(events[-1], Error) and events[-1].code == "producer_lost"
    assert [e.seq for e in await b.events("s")] == [1, 2]
    await a.close()  # waits for the on_producer_lost tasks
    await b.close()
    assert lost == ["s"]


async def test_many_readers_use_few_connections(redis_prefix: str) -> None:
    name = f"twtest-{uuid.uuid4().hex[:8]}"
    log = RedisStreamLog.from_url(
        REDIS_URL, prefix=redis_prefix, max_connections=4, client_name=name
    )
    admin = aioredis.Redis.from_url(REDIS_URL)
    try:
        await log.create("s", {})
        await log.append("s", [delta("a")])
        counts: list[int] = []

        async def read() -> None:
            counts.append(sum([len(b) async for b in log.read("s", idle=60)]))

        with anyio.fail_after(15):
            async with anyio.create_task_group() as tg:
                for _ in range(100):
                    tg.start_soon(read)
                await _until(lambda: _count(log, "s", 100))
                clients = await admin.client_list()
                assert 1 <= sum(1 for c in clients if c.get("name") == name) <= 4
                await log.append("s", [delta("b"), delta("c")])
                await log.append("s", [Finish(finish_reason="stop")])
        assert counts == [4] * 100
    finally:
        await log.close()
        await admin.aclose()


async def test_concurrent_appends_share_round_trips(
    redis_logs: Callable[..., RedisStreamLog],
) -> None:
    """Appends made while one is in flight go together in one script run (issue #12),
    each stream still numbered and ended on its own."""
    log = redis_logs()
    admin = aioredis.Redis.from_url(REDIS_URL)
    ids = [f"s{i}" for i in range(100)]
    try:
        for stream_id in ids:
            await log.create(stream_id, {})
        await log.heartbeat("s0", 30)  # the scripts are loaded: EVALSHA from here on
        before = (await admin.info("commandstats"))["cmdstat_evalsha"]["calls"]
        appended = await asyncio.gather(
            *(log.append(i, [delta("a"), delta("b")]) for i in ids),
            log.append("s0", [Finish(finish_reason="stop")]),
            log.append("s0", [delta("late")]),
            *(log.heartbeat(i, 30) for i in ids[1:]),
        )
        calls = (await admin.info("commandstats"))["cmdstat_evalsha"]["calls"] - before
        assert calls <= 4, f"{calls} script runs for 100 streams' appends and heartbeats"
        assert all([e.seq for e in batch] == [1, 2] for batch in appended[:100])
        assert [e.seq for e in appended[100]] == [3] and appended[101] == []
        assert (await log.info("s0")).status == "completed"
        assert (await log.info("s99")).last_seq == 2
        with pytest.raises(StreamNotFoundError):
            await asyncio.gather(log.append("nope", [delta("x")]), log.append("s1", [delta("c")]))
        assert (await log.info("s1")).last_seq == 3  # its neighbour in the batch went in
    finally:
        await admin.aclose()


async def test_ping_against_a_closed_port_fails_fast() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the with block ends
    log = RedisStreamLog.from_url(f"redis://127.0.0.1:{port}/0")
    try:
        started = time.monotonic()
        with pytest.raises(LogUnavailableError):
            await log.ping()
        assert time.monotonic() - started < 3
        with pytest.raises(LogUnavailableError):
            await log.info("s")
    finally:
        await log.close()


async def test_ping_answers(redis_logs: Callable[..., RedisStreamLog]) -> None:
    await redis_logs().ping()


# -- helpers ------------------------------------------------------------------------------


async def _until(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``check`` until true (callers guard with ``fail_after``).

    For state that lives in Redis or in another "process" (reader counts, a
    subscription), where there is no local event to wait on."""
    while not await check():  # noqa: ASYNC110 - no event exists across processes
        await anyio.sleep(0.005)


async def _count(log: StreamLog, stream_id: str, n: int) -> bool:
    return (await log.readers(stream_id))[0] == n


async def _has(items: Sized, n: int) -> bool:
    return len(items) >= n


async def _true(value: bool) -> bool:
    return value


def _lost_recorder(into: list[str]) -> Callable[[str], Coroutine[Any, Any, None]]:
    async def record(stream_id: str) -> None:
        into.append(stream_id)

    return record


def _recorder(into: list[str], done: anyio.Event, tag: str = "") -> Callable[[str], None]:
    """A cancel callback that records the reason and sets ``done``."""

    def record(reason: str) -> None:
        into.append(tag + reason)
        done.set()

    return record


async def _drain(reader: AsyncIterator[list[Event]]) -> None:
    with contextlib.suppress(StopAsyncIteration):
        async for _ in reader:
            pass


@contextlib.contextmanager
def _private_redis(port: int, directory: str) -> Iterator[Callable[[], None]]:
    """A ``redis-server`` of our own (AOF on, so a restart keeps the data);
    yields ``restart()``, which stops it and starts it again on the same port."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server binary")
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--appendonly", "yes", "--appendfsync", "always", "--dir", directory]
    processes = [subprocess.Popen(args, stdout=subprocess.DEVNULL)]

    def wait_up() -> None:
        deadline = time.monotonic() + 5
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.01)

    def restart() -> None:
        processes[-1].terminate()  # SIGTERM: Redis flushes the AOF and exits
        processes[-1].wait(5)
        processes.append(subprocess.Popen(args, stdout=subprocess.DEVNULL))
        wait_up()

    wait_up()
    try:
        yield restart
    finally:
        processes[-1].terminate()
        processes[-1].wait(5)


async def test_background_tasks_and_readers_survive_a_redis_restart(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with _private_redis(port, str(tmp_path)) as restart:
        url = f"redis://127.0.0.1:{port}/0"
        a, b = RedisStreamLog.from_url(url), RedisStreamLog.from_url(url)
        try:
            await a.create("s", {})
            await a.append("s", [delta("a")])
            got: list[list[Event]] = []
            reasons: list[str] = []
            cancelled = anyio.Event()
            b.watch_cancel("s", _recorder(reasons, cancelled))

            async def follow() -> None:
                async for batch in b.read("s", idle=0.05):
                    got.append(batch)

            with anyio.fail_after(15):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(follow)
                    await _until(lambda: _has(got, 1))
                    await _until(lambda: _true(b._cancels.subscribed.is_set()))
                    await anyio.to_thread.run_sync(restart)
                    heartbeats = sum(1 for batch in got if not batch)
                    await _until(lambda: _true(sum(1 for x in got if not x) > heartbeats))
                    assert await a.request_cancel("s", "user")
                    await cancelled.wait()
                    await a.append("s", [delta("b"), Finish(finish_reason="stop")])
            assert reasons == ["user"]
            assert [e.seq for batch in got for e in batch] == [1, 2, 3]
        finally:
            await a.close()
            await b.close()
