"""The producer: terminal events on every path, retries, stop, coalescing, orphans."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import msgspec
import pytest

from tests.support.cluster import REDIS_URL, drop_prefix, unavailable
from tokenwire.accumulate import PartsGrowth
from tokenwire.errors import StoreError
from tokenwire.events import Cancelled, Error, Event, Finish, Start, TextDelta
from tokenwire.log.memory import MemoryStreamLog
from tokenwire.producer import Generation, Producer, ProducerConfig
from tokenwire.providers.base import GenerationRequest, Message, ProviderEvent, finish
from tokenwire.providers.fake import FakeProvider

pytestmark = pytest.mark.anyio

WHY_NO_REDIS = unavailable()

FAST = ProducerConfig(coalesce_ms=0, orphan_timeout=None, retry_backoff=0)


async def run(
    provider: object, config: ProducerConfig = FAST, model: str = "lorem", **params: object
) -> tuple[Event, list[Event], MemoryStreamLog]:
    log = MemoryStreamLog()
    await log.create("s", {})
    await log.append(
        "s", [Start(stream_id="s", message_id="m", conversation_id="c", model="x", created_at=0)]
    )
    request = GenerationRequest(model=model, messages=[Message("user", "hi")], params=dict(params))
    generation = Generation(stream_id="s", message_id="m", conversation_id="c", request=request)
    with anyio.fail_after(10):
        terminal = await Producer(log, None, config).run(generation, provider)  # type: ignore[arg-type]
    return terminal, await log.events("s"), log


def terminals(events: list[Event]) -> list[str]:
    return [type(e).__name__ for e in events if isinstance(e, Finish | Error | Cancelled)]


async def test_finish_is_the_one_terminal() -> None:
    terminal, events, _ = await run(FakeProvider(), tokens=3)
    assert isinstance(terminal, Finish) and events[-1] == terminal
    assert terminals(events) == ["Finish"]
    assert "".join(e.delta for e in events if isinstance(e, TextDelta)) == "lorem ipsum dolor"


async def test_retries_before_first_event() -> None:
    provider = FakeProvider()
    terminal, events, _ = await run(provider, fail_before="rate_limited", fail_times=1, tokens=2)
    assert provider.calls == 2
    assert isinstance(terminal, Finish) and terminals(events) == ["Finish"]


async def test_gives_up_after_max_retries() -> None:
    provider = FakeProvider()
    terminal, events, _ = await run(provider, fail_before="overloaded")
    assert provider.calls == 1 + FAST.max_retries
    assert (
        isinstance(terminal, Error)
        and terminal.code == "provider_overloaded"
        and terminal.retryable
    )
    assert terminals(events) == ["Error"]


async def test_no_retry_after_the_first_event() -> None:
    provider = FakeProvider()
    terminal, events, _ = await run(provider, fail_after=2)
    assert provider.calls == 1
    assert isinstance(terminal, Error) and terminal.code == "provider_error"
    assert [e.delta for e in events if isinstance(e, TextDelta)] == ["lorem", " ipsum"]
    assert terminals(events) == ["Error"]


async def test_our_bug_becomes_internal_error_without_its_text() -> None:
    terminal, events, _ = await run(FakeProvider(), crash_after=1)
    assert isinstance(terminal, Error) and terminal.code == "internal_error"
    assert "fake crash" not in terminal.message
    assert terminals(events) == ["Error"]


class Gate:
    """A provider that yields one delta, then waits; records whether it was closed."""

    def __init__(self) -> None:
        self.closed = False
        self.started = anyio.Event()

    async def stream(self, request: GenerationRequest) -> AsyncIterator[ProviderEvent]:
        try:
            yield TextDelta(part=0, delta="partial")
            self.started.set()
            await anyio.sleep_forever()
            yield finish("stop", None, None)
        finally:
            self.closed = True


async def test_cancel_closes_the_provider_and_keeps_partial_text() -> None:
    provider = Gate()
    log = MemoryStreamLog()
    await log.create("s", {})
    request = GenerationRequest(model="m", messages=[Message("user", "hi")])
    generation = Generation(stream_id="s", message_id="m", conversation_id="c", request=request)
    result: list[Event] = []

    async def produce() -> None:
        result.append(await Producer(log, None, FAST).run(generation, provider))  # type: ignore[arg-type]

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            await provider.started.wait()
            assert await log.request_cancel("s", "user")
    assert provider.closed
    assert result == [Cancelled(reason="user", seq=2)]
    events = await log.events("s")
    assert [type(e).__name__ for e in events] == ["TextDelta", "Cancelled"]


async def test_time_limit_ends_with_stream_timeout() -> None:
    config = ProducerConfig(coalesce_ms=0, orphan_timeout=None, max_stream_seconds=0.05)
    terminal, events, _ = await run(FakeProvider(), config, stall_after=1)
    assert isinstance(terminal, Error) and terminal.code == "stream_timeout"
    assert terminals(events) == ["Error"]


async def test_stream_without_reader_is_abandoned() -> None:
    config = ProducerConfig(coalesce_ms=0, orphan_timeout=0.01, retry_backoff=0)
    log = MemoryStreamLog()
    await log.create("s", {})
    request = GenerationRequest(
        model="lorem", messages=[Message("user", "hi")], params={"stall_after": 1}
    )
    generation = Generation(stream_id="s", message_id="m", conversation_id="c", request=request)
    terminal: list[Event] = []

    async def produce() -> None:
        terminal.append(await Producer(log, None, config).run(generation, FakeProvider()))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            async for batch in log.read("s"):  # one reader comes, reads, and leaves
                if batch:
                    break
    assert terminal == [Cancelled(reason="abandoned", seq=2)]


class Burst:
    """One delta, then (after the test lets it go) three at once, then finish."""

    def __init__(self) -> None:
        self.go = anyio.Event()

    async def stream(self, request: GenerationRequest) -> AsyncIterator[ProviderEvent]:
        yield TextDelta(part=0, delta="a")
        await self.go.wait()
        for text in ("b", "c", "d"):
            yield TextDelta(part=0, delta=text)
        yield finish("stop", None, None)


async def test_coalescing_never_delays_the_first_delta_and_merges_a_burst() -> None:
    provider = Burst()
    log = MemoryStreamLog()
    await log.create("s", {})
    request = GenerationRequest(model="m", messages=[Message("user", "hi")])
    generation = Generation(stream_id="s", message_id="m", conversation_id="c", request=request)
    config = ProducerConfig(coalesce_ms=50, orphan_timeout=None)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(Producer(log, None, config).run, generation, provider)
            reader = log.read("s")
            first = await reader.__anext__()
            assert [e.delta for e in first if isinstance(e, TextDelta)] == ["a"]
            provider.go.set()
            rest = [e async for batch in reader for e in batch]
    assert [e.delta for e in rest if isinstance(e, TextDelta)] == ["bcd"]
    assert isinstance(rest[-1], Finish)


async def test_silent_provider_ends_with_provider_timeout() -> None:
    config = ProducerConfig(coalesce_ms=0, orphan_timeout=None, provider_timeout=0.05)
    terminal, events, _ = await run(FakeProvider(), config, stall_after=2)
    assert isinstance(terminal, Error) and terminal.code == "provider_timeout"
    assert [e.delta for e in events if isinstance(e, TextDelta)] == ["lorem", " ipsum"]
    assert terminals(events) == ["Error"]


async def test_checkpoints_store_the_partial_message_while_streaming(tmp_path: object) -> None:
    from tokenwire import Settings, Tokenwire

    settings = Settings(
        fake_provider=True, data_dir=tmp_path, checkpoint_interval=0.02, coalesce_ms=0
    )
    async with Tokenwire(settings) as tw:
        stream = await tw.start("fake:lorem", [Message("user", "x")], params={"stall_after": 3})
        assert stream.message_id is not None
        with anyio.fail_after(10):
            while True:  # the ticker writes within a few intervals
                message = await tw.store.get_message(stream.message_id)
                assert message is not None
                if message.parts == [{"type": "text", "text": "lorem ipsum dolor"}]:
                    break
                await anyio.sleep(0.01)
        assert message.status == "streaming"
        await stream.cancel()
        await tw.wait_idle()
        final = await tw.store.get_message(stream.message_id)
    assert final is not None and final.status == "cancelled"
    assert final.parts == [{"type": "text", "text": "lorem ipsum dolor"}]  # grown, not doubled


async def test_a_lost_producer_leaves_a_failed_message_with_its_partial_text(
    tmp_path: object,
) -> None:
    from tokenwire import Settings, Tokenwire

    async with Tokenwire(
        Settings(fake_provider=True, data_dir=tmp_path, default_model="fake:echo")
    ) as tw:
        turn = await tw.store.begin_turn(
            conversation_id=None,
            owner=None,
            messages=[("user", [{"type": "text", "text": "q"}])],
            model="fake:echo",
        )
        assert turn is not None
        conversation, _, message = turn
        # A stream whose producer renewed its lease once and then died.
        await tw.log.create("s", {"conversation_id": conversation.id, "message_id": message.id})
        await tw.log.append("s", [TextDelta(part=0, delta="partial")])
        await tw.log.heartbeat("s", 0.02)
        with anyio.fail_after(10):
            events = [e async for batch in tw.log.read("s") for e in batch]
            assert isinstance(events[-1], Error) and events[-1].code == "producer_lost"
            while (stored := await tw.store.get_message(message.id)) is not None:
                if stored.status != "streaming":
                    break
                await anyio.sleep(0.01)  # the log's hook stores it in a task of its own
    assert stored is not None and stored.status == "failed"
    assert stored.parts == [{"type": "text", "text": "partial"}]
    assert stored.error == {
        "code": "producer_lost",
        "message": "the generation stopped unexpectedly",
    }


class GatedReads(MemoryStreamLog):
    """A log whose ``events`` read, once ``gate`` is set, returns only after the next
    append, from the position it was asked for: a Redis read that a concurrent append
    overtakes."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: asyncio.Future[None] | None = None
        self.events_in_process = False  # as Redis: the producer folds what it appends

    async def events(
        self, stream_id: str, after: int = 0, limit: int | None = None, *, merged: bool = False
    ) -> list[Event]:
        if self.gate is not None:
            await self.gate
        return await super().events(stream_id, after, limit, merged=merged)

    async def append(self, stream_id: str, events: list[Event]) -> list[Event]:
        out = await super().append(stream_id, events)
        if self.gate is not None and not self.gate.done():
            self.gate.set_result(None)
        return out


class Stored:
    """A message sink of one message, growing it as the store does; it records the
    order of its writes, can fail its first checkpoints, and can hold one checkpoint
    until ``release`` is set."""

    def __init__(self, failing: int = 0) -> None:
        self.parts: list[dict[str, object]] = []
        self.failing = failing
        self.writes: list[str] = []
        self.checkpointed = asyncio.Event()
        self.ended = asyncio.Event()
        self.release: asyncio.Future[None] | None = None

    async def update_message(self, message_id: str, **fields: object) -> None:
        self.writes.append("final")
        grown = fields.get("grown")
        assert isinstance(grown, PartsGrowth)
        self.parts = grown.onto(self.parts)

    async def checkpoint_messages(self, grown_by_id: dict[str, PartsGrowth]) -> None:
        self.writes.append("checkpoint")
        self.checkpointed.set()
        if self.release is not None:
            await self.release
        if self.failing:
            self.failing -= 1
            raise StoreError("could not checkpoint messages (a test)")
        for grown in grown_by_id.values():
            self.parts = grown.onto(self.parts)


def start_event() -> Start:
    return Start(stream_id="s", message_id="m", conversation_id="c", model="x", created_at=0)


def paced(stored: Stored, texts: list[str]) -> object:
    """A provider sending ``texts``, each after the one before was checkpointed, then
    ``finish``; it sets ``stored.ended`` once closed."""

    class Provider:
        async def stream(self, request: object) -> AsyncIterator[ProviderEvent]:
            try:
                for i, text in enumerate(texts):
                    if i:
                        await stored.checkpointed.wait()
                    stored.checkpointed.clear()
                    yield TextDelta(part=0, delta=text)
                yield finish("stop", None, None)
            finally:
                stored.ended.set()

    return Provider()


@pytest.mark.parametrize("failing", [0, 1])
@pytest.mark.parametrize("in_process", [True, False])
async def test_checkpoints_and_the_end_store_the_whole_answer(
    failing: int, in_process: bool
) -> None:
    """Each write hands over only what grew since the last; after a failed checkpoint
    the next write starts over from the log, so nothing is lost or doubled."""
    log = MemoryStreamLog()
    log.events_in_process = in_process  # False: folded as appended, as with Redis
    await log.create("s", {})
    await log.append("s", [start_event()])
    stored = Stored(failing)
    producer = Producer(log, stored, msgspec.structs.replace(FAST, checkpoint_interval=0.01))
    request = GenerationRequest(model="x", messages=[Message("user", "hi")])
    generation = Generation(stream_id="s", message_id="m", conversation_id="c", request=request)
    with anyio.fail_after(10):
        terminal = await producer.run(generation, paced(stored, ["Hel", "lo", ", ", "world"]))  # type: ignore[arg-type]
    assert isinstance(terminal, Finish)
    assert stored.parts == [{"type": "text", "text": "Hello, world"}]
    assert stored.writes.count("checkpoint") >= 3 and stored.writes[-1] == "final"


async def test_a_run_ending_during_its_checkpoint_writes_after_it() -> None:
    """The final write waits for a checkpoint in flight that took the run's text."""
    log = MemoryStreamLog()
    await log.create("s", {})
    await log.append("s", [start_event()])
    stored = Stored()
    stored.release = asyncio.get_running_loop().create_future()
    producer = Producer(log, stored, msgspec.structs.replace(FAST, checkpoint_interval=0.01))
    request = GenerationRequest(model="x", messages=[Message("user", "hi")])
    generation = Generation(stream_id="s", message_id="m", conversation_id="c", request=request)
    with anyio.fail_after(10):
        running = asyncio.ensure_future(producer.run(generation, paced(stored, ["a", "b"])))  # type: ignore[arg-type]
        await stored.ended.wait()  # "a" is being checkpointed (held), "b" and the end came
        for _ in range(20):  # time for a final write that would not wait (none comes)
            await asyncio.sleep(0)
        assert stored.writes == ["checkpoint"]
        stored.release.set_result(None)
        assert isinstance(await running, Finish)
    assert stored.writes[:2] == ["checkpoint", "final"]
    assert stored.parts == [{"type": "text", "text": "ab"}]


async def test_a_checkpoint_read_overtaken_by_an_append_folds_each_event_once() -> None:
    """The run folds what it appends; a checkpoint's read of the log that started
    before an append and returns after it sees that event too: it is folded once."""
    log = GatedReads()
    await log.create("s", {})
    await log.append(
        "s", [Start(stream_id="s", message_id="m", conversation_id="c", model="x", created_at=0)]
    )
    deltas: asyncio.Queue[str | None] = asyncio.Queue()

    class Provider:
        async def stream(self, request: object) -> AsyncIterator[ProviderEvent]:
            while (text := await deltas.get()) is not None:
                yield TextDelta(part=0, delta=text)
            yield finish("stop", None, None)

    stored = Stored()
    producer = Producer(log, stored, FAST)
    request = GenerationRequest(model="x", messages=[Message("user", "hi")])
    generation = Generation(stream_id="s", message_id="m", conversation_id="c", request=request)
    with anyio.fail_after(10):
        running = asyncio.ensure_future(producer.run(generation, Provider()))  # type: ignore[arg-type]
        deltas.put_nowait("a")
        assert [e.seq for e in await log.wait("s", 1, timeout=5)] == [2]
        log.gate = asyncio.get_running_loop().create_future()
        checkpoint = asyncio.ensure_future(producer._runs["s"].sync_state())
        await asyncio.sleep(0)  # the read has started, after seq 2
        deltas.put_nowait("b")
        assert isinstance(await checkpoint, TextDelta)
        log.gate = None
        deltas.put_nowait(None)
        assert isinstance(await running, Finish)
    assert stored.parts == [{"type": "text", "text": "ab"}]


@pytest.mark.parametrize("log", ["memory", "redis"])
async def test_a_long_answer_checkpointed_many_times_is_stored_whole(
    tmp_path: Path, log: str
) -> None:
    """Through the real store (and Redis, whose log the run does not read back): many
    checkpoints, each handing over what grew, end with the stored message equal to
    every delta the stream carried."""
    from tokenwire import Settings, Tokenwire

    prefix = f"tw-ckpt-{uuid.uuid4().hex[:8]}:"
    options: dict[str, object] = {}
    if log == "redis":
        if WHY_NO_REDIS is not None:
            pytest.skip(WHY_NO_REDIS)
        options = {"log_url": REDIS_URL, "log_prefix": prefix}
    settings = Settings(
        fake_provider=True, data_dir=tmp_path, checkpoint_interval=0.01, coalesce_ms=0, **options
    )
    try:
        async with Tokenwire(settings) as tw:
            params = {"tokens": 120, "delay_ms": 2}
            stream = await tw.start("fake:lorem", [Message("user", "x")], params=params)
            with anyio.fail_after(30):
                events = [e async for e in stream.events()]
                await tw.wait_idle()
            assert isinstance(events[-1], Finish)
            assert stream.message_id is not None
            stored = await tw.store.get_message(stream.message_id)
    finally:
        if log == "redis":
            drop_prefix(prefix)
    text = "".join(e.delta for e in events if isinstance(e, TextDelta))
    assert len(text.split()) == 120
    assert stored is not None and stored.status == "completed"
    assert stored.parts == [{"type": "text", "text": text}]
