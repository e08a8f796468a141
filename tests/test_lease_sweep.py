"""The lease sweep (issue 9, item 6): a stream whose producer's lease expired ends with
exactly one ``error{producer_lost}`` and a failed stored message although nobody reads
it, on the memory log and on the real Redis (several processes sweeping at once).

The end-to-end variant with a killed ``tokenwire worker`` process is in
``tests/test_shutdown_cluster.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import redis.asyncio as aioredis

from tests.support.redis_logs import REDIS_URL, namespace, open_redis_logs
from tokenwire import Settings, Tokenwire
from tokenwire.events import Error, Event, Finish, Start, TextDelta
from tokenwire.log.memory import MemoryStreamLog
from tokenwire.log.redis import RedisStreamLog

pytestmark = pytest.mark.anyio

SHORT_TTL = 0.05
"""Seconds: a lease that is never renewed."""


@contextlib.asynccontextmanager
async def _redis_logs() -> AsyncIterator[Callable[[], RedisStreamLog]]:
    """Fresh Redis logs (one per "process") under a unique prefix, deleted afterwards."""
    async with namespace() as prefix, open_redis_logs(prefix) as make:
        yield make


@pytest.fixture(params=["memory", "redis"])
async def logs(request: pytest.FixtureRequest) -> AsyncIterator[Callable[[], Any]]:
    """``make()`` gives the log of one process; on Redis every call is another process
    sharing the same streams, on memory the same log again."""
    if request.param == "memory":
        log = MemoryStreamLog()
        yield lambda: log
        await log.close()
    else:
        async with _redis_logs() as make:
            yield make


def _recorder(into: list[str]) -> Callable[[str], Coroutine[Any, Any, None]]:
    async def record(stream_id: str) -> None:
        into.append(stream_id)

    return record


async def _sweep_until_found(log: Any) -> list[str]:
    """Sweep until a sweep ends something (the lease's expiry is the condition)."""
    with anyio.fail_after(5):
        while True:
            found: list[str] = await log.sweep_expired_leases()
            if found:
                return found
            await anyio.sleep(0.01)


async def _until(check: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0) -> None:
    """Poll ``check`` (state in Redis, the store or a background task: no event to
    wait on) until true; fail after ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        while True:
            done = check()
            if done if isinstance(done, bool) else await done:
                return
            await anyio.sleep(0.01)


async def _status(tw: Tokenwire, message_id: str, status: str) -> bool:
    message = await tw.store.get_message(message_id)
    return message is not None and message.status == status


def _lost(events: list[Event]) -> list[Event]:
    return [e for e in events if isinstance(e, Error) and e.code == "producer_lost"]


async def test_sweep_ends_an_unread_stream_whose_lease_expired(logs: Any) -> None:
    log = logs()
    lost: list[str] = []
    log.on_producer_lost = _recorder(lost)
    await log.create("s", {})
    await log.append("s", [TextDelta(part=0, delta="half")])
    await log.heartbeat("s", SHORT_TTL)
    assert await _sweep_until_found(log) == ["s"]
    events = await log.events("s")
    assert [type(e) for e in events] == [TextDelta, Error]
    assert _lost(events) == events[1:]
    assert (await log.info("s")).status == "failed"
    assert await log.sweep_expired_leases() == []  # once
    await _until(lambda: bool(lost))  # the hook runs in a task of its own
    assert lost == ["s"]


async def test_sweep_leaves_live_unleased_and_ended_streams(logs: Any) -> None:
    log = logs()
    for stream_id in ("live", "unleased", "ended", "dead"):
        await log.create(stream_id, {})
    await log.heartbeat("live", 60)
    await log.heartbeat("ended", SHORT_TTL)
    await log.append("ended", [Finish(finish_reason="stop")])
    await log.heartbeat("dead", SHORT_TTL)
    assert await _sweep_until_found(log) == ["dead"]
    for stream_id in ("live", "unleased"):
        assert await log.events(stream_id) == []
        assert (await log.info(stream_id)).status == "running"
    assert [type(e) for e in await log.events("ended")] == [Finish]


async def test_renewed_lease_is_not_swept(logs: Any) -> None:
    log = logs()
    await log.create("s", {})
    await log.heartbeat("s", SHORT_TTL)
    await log.heartbeat("s", 60)  # the producer renewed it in time
    await log.create("dead", {})
    await log.heartbeat("dead", SHORT_TTL)
    assert await _sweep_until_found(log) == ["dead"]
    assert (await log.info("s")).status == "running"


async def test_concurrent_sweeps_of_several_processes_append_one_event_each() -> None:
    async with _redis_logs() as make:
        nodes = [make() for _ in range(3)]
        lost: list[str] = []
        for node in nodes:
            node.on_producer_lost = _recorder(lost)
        ids = [f"s{i}" for i in range(30)]
        for stream_id in ids:
            await nodes[0].create(stream_id, {})
            await nodes[0].heartbeat(stream_id, SHORT_TTL)
        found: list[str] = []

        async def sweep(node: RedisStreamLog) -> None:
            while len(found) < len(ids):
                found.extend(await node.sweep_expired_leases())
                await anyio.lowlevel.checkpoint()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for node in nodes:
                    for _ in range(3):  # several sweeps at once per process too
                        tg.start_soon(sweep, node)
            await _until(lambda: len(lost) == len(ids))
        assert sorted(found) == sorted(ids)  # each ended by exactly one sweep
        assert sorted(lost) == sorted(ids)  # and its message finished once
        for stream_id in ids:
            assert len(_lost(await nodes[1].events(stream_id))) == 1
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            assert await client.zcard(nodes[0]._keys.leases()) == 0
        finally:
            await client.aclose()


async def test_tokenwire_stores_the_message_of_a_lost_unread_stream(tmp_path: Path) -> None:
    """The instance's sweeper (memory log, SQLite store): a generation whose lease is
    never renewed, with no reader, ends failed in the store."""
    settings = Settings(
        fake_provider=True, data_dir=tmp_path, default_model="fake:lorem", lease_sweep_interval=0.05
    )
    async with Tokenwire(settings) as tw:
        conversation, _, assistant = await _turn(tw)
        await tw.log.create("s", {"conversation_id": conversation, "message_id": assistant})
        start = Start(
            stream_id="s",
            message_id=assistant,
            conversation_id=conversation,
            model="fake:lorem",
            created_at=0.0,
        )
        await tw.log.append("s", [start, TextDelta(part=0, delta="half an answer")])
        await tw.log.heartbeat("s", SHORT_TTL)  # and never again: the producer is gone
        await _until(lambda: _status(tw, assistant, "failed"))
        message = await tw.store.get_message(assistant)
        assert message is not None
        assert message.error is not None and message.error["code"] == "producer_lost"
        assert message.parts == [{"type": "text", "text": "half an answer"}]
        assert len(_lost(await tw.log.events("s"))) == 1


async def _turn(tw: Tokenwire) -> tuple[str, str, str]:
    turn = await tw.store.begin_turn(
        conversation_id=None,
        owner=None,
        messages=[("user", [{"type": "text", "text": "hi"}])],
        model="fake:lorem",
    )
    assert turn is not None
    conversation, _, assistant = turn
    return conversation.id, "", assistant.id
