"""The in-memory stream log: numbering, replay + live tail, terminal, lease, retention."""

from __future__ import annotations

import anyio
import pytest

from tokenwire.errors import StreamExpiredError, StreamNotFoundError
from tokenwire.events import Cancelled, Error, Event, Finish, TextDelta
from tokenwire.log.memory import MemoryStreamLog

pytestmark = pytest.mark.anyio


def delta(text: str) -> TextDelta:
    return TextDelta(part=0, delta=text)


async def test_append_numbers_and_stops_at_terminal() -> None:
    log = MemoryStreamLog()
    await log.create("s", {"k": "v"})
    first = await log.append("s", [delta("a"), delta("b")])
    assert [e.seq for e in first] == [1, 2]
    ended = await log.append("s", [Finish(finish_reason="stop"), delta("late")])
    assert [type(e) for e in ended] == [Finish]
    assert await log.append("s", [Cancelled(reason="user")]) == []
    info = await log.info("s")
    assert (info.status, info.last_seq, info.meta["k"]) == ("completed", 3, "v")
    assert not await log.request_cancel("s", "user")


async def test_read_replays_then_follows_in_batches() -> None:
    log = MemoryStreamLog()
    await log.create("s", {})
    await log.append("s", [delta("a"), delta("b")])
    batches: list[list[Event]] = []
    reader = log.read("s", after=1)
    assert await log.readers("s") == (0, None)
    batches.append(await reader.__anext__())
    assert (await log.readers("s"))[0] == 1
    await log.append("s", [delta("c"), delta("d"), Error(code="provider_error", message="x")])
    async for batch in reader:
        batches.append(batch)
    assert [[e.seq for e in b] for b in batches] == [[2], [3, 4, 5]]
    count, left_at = await log.readers("s")
    assert count == 0 and left_at is not None


async def test_batch_size_bounds_each_step() -> None:
    log = MemoryStreamLog()
    await log.create("s", {})
    await log.append("s", [delta(str(i)) for i in range(10)] + [Finish(finish_reason="stop")])
    sizes = [len(b) async for b in log.read("s", batch=4)]
    assert sizes == [4, 4, 3]


async def test_idle_reader_gets_empty_batches_for_heartbeats() -> None:
    log = MemoryStreamLog()
    await log.create("s", {})
    reader = log.read("s", idle=0.01)
    with anyio.fail_after(5):
        assert await reader.__anext__() == []
    await log.append("s", [Finish(finish_reason="stop")])
    assert [e.seq for e in await reader.__anext__()] == [1]
    await reader.aclose()


async def test_expired_lease_ends_stream_with_producer_lost_once() -> None:
    log = MemoryStreamLog()
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


async def test_retention_answers_expired_then_sweeps() -> None:
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


async def test_cancel_is_idempotent_and_calls_watchers_once() -> None:
    log = MemoryStreamLog()
    await log.create("s", {})
    seen: list[str] = []
    log.watch_cancel("s", seen.append)
    unwatch = log.watch_cancel("s", lambda r: seen.append("unwatched " + r))
    unwatch()
    assert await log.request_cancel("s", "user")
    assert not await log.request_cancel("s", "superseded")
    log.watch_cancel("s", lambda r: seen.append("late " + r))
    assert seen == ["user", "late user"]


async def test_long_poll_returns_when_an_event_arrives() -> None:
    log = MemoryStreamLog()
    await log.create("s", {})
    async with anyio.create_task_group() as tg:
        result: list[Event] = []

        async def poll() -> None:
            result.extend(await log.wait("s", 0, timeout=30))

        tg.start_soon(poll)
        await anyio.wait_all_tasks_blocked()
        assert (await log.readers("s"))[0] == 1
        await log.append("s", [delta("x")])
    assert [e.seq for e in result] == [1]
    assert await log.wait("s", 1, timeout=0.01) == []


async def test_active_stream_of_a_conversation() -> None:
    log = MemoryStreamLog()
    await log.create("a", {"conversation_id": "c"})
    await log.create("b", {"conversation_id": "c"})
    await log.create("x", {})
    active = await log.active_stream("c")
    assert active is not None and active.stream_id == "b"
    await log.append("a", [Finish(finish_reason="stop")])  # an older stream ending changes nothing
    assert (await log.active_stream("c")).stream_id == "b"  # type: ignore[union-attr]
    await log.append("b", [Cancelled(reason="user")])
    assert await log.active_stream("c") is None
    assert await log.active_stream("other") is None
