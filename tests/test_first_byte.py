"""A turn's store writes are off the first-byte path (issue #12, ``tokenwire.store.turns``).

A real PostgreSQL whose ``messages`` table the test holds locked (``LOCK TABLE …
IN EXCLUSIVE MODE`` in an open transaction of its own): the stream's first token
arrives although the turn cannot be written; the terminal event cannot be appended
until the lock is released, and then the message is stored as it ended. A turn that
was never written (the process died first) is restored from the log by the lease
sweep, on the real Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import asyncpg
import pytest

from tests.support.cluster import pg_admin, unavailable
from tests.support.redis_logs import namespace, open_redis_logs
from tokenwire import Settings, Tokenwire
from tokenwire.events import Error, Finish, Start, TextDelta
from tokenwire.providers import Message
from tokenwire.store import Store

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def _database() -> AsyncIterator[str]:
    """A fresh PostgreSQL database (its asyncpg DSN), dropped afterwards."""
    name = f"tw_test_{uuid.uuid4().hex[:16]}"
    await pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        await pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def services() -> None:
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)


async def test_first_token_arrives_while_the_store_is_locked(
    tmp_path: Path, services: None
) -> None:
    async with _database() as dsn:
        settings = Settings(
            fake_provider=True,
            data_dir=tmp_path,
            store_url=dsn.replace("postgresql://", "postgresql+asyncpg://"),
            orphan_timeout=None,
        )
        async with Tokenwire(settings) as tw:
            locker = await asyncpg.connect(dsn)
            lock = locker.transaction()
            await lock.start()
            await locker.execute("LOCK TABLE messages IN EXCLUSIVE MODE")
            try:
                with anyio.fail_after(10):  # main wrote the turn first: it waited here
                    stream = await tw.start("fake:echo", [Message("user", "hello there")])
                    events = aiter(stream)
                    start = await anext(events)
                    assert isinstance(start, Start)
                    first = await anext(events)
                    assert isinstance(first, TextDelta)
                # the turn is not written and the stream is not complete yet
                count = await locker.fetchval("SELECT count(*) FROM messages")
                assert count == 0
                assert (await tw.log.info(stream.stream_id)).status == "running"
            finally:
                await lock.commit()
                await locker.close()
            rest = [event async for event in events]
            assert isinstance(rest[-1], Finish)
            message = await tw.store.get_message(start.message_id)
            assert message is not None and message.status == "completed"
            assert message.parts and message.parts[0]["type"] == "text"
            history = await tw.store.messages(message.conversation_id)
            assert [m.role for m in history] == ["user", "assistant"]


async def test_sweep_restores_a_turn_that_was_never_written(tmp_path: Path, services: None) -> None:
    """The process died after the first byte, before its writer committed: the log's
    ``meta["turn"]`` is all there is; another process's sweep writes the turn and the
    answer so far (``failed``, ``producer_lost``)."""
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'tw.db'}")
    async with namespace() as prefix, open_redis_logs(prefix) as make:
        try:
            decided = await store.plan_turn(
                conversation_id=None,
                owner="alice",
                messages=[("user", [{"type": "text", "text": "a question"}])],
                model="fake:lorem",
            )
            assert decided is not None
            turn, conversation, _, _ = decided  # never submitted: the process "died"
            dead, sweeper = make(), make()
            assistant = turn.messages[-1].id
            await dead.create("s", turn.meta("fake:lorem"))
            await dead.append(
                "s",
                [
                    Start(stream_id="s", message_id=assistant,
                          conversation_id=conversation.id, model="fake:lorem", created_at=0.0),
                    TextDelta(part=0, delta="half an answer"),
                ],
            )  # fmt: skip
            await dead.heartbeat("s", 0.05)  # and never again
            assert await store.get_message(assistant) is None
            lost: list[str] = []

            async def record(stream_id: str) -> None:
                from tokenwire.engine.housekeeping import finish_lost_message

                await finish_lost_message(sweeper, store, stream_id)
                lost.append(stream_id)

            sweeper.on_producer_lost = record
            while not lost:
                await sweeper.sweep_expired_leases()
                await asyncio.sleep(0.01)
            message = await store.get_message(assistant)
            assert message is not None and message.status == "failed"
            assert message.error is not None and message.error["code"] == "producer_lost"
            assert message.parts == [{"type": "text", "text": "half an answer"}]
            record_ = await store.get_conversation(conversation.id, owner="alice")
            assert record_ is not None and record_.title == "a question"
            assert [m.role for m in await store.messages(conversation.id)] == ["user", "assistant"]
            assert isinstance((await sweeper.events("s"))[-1], Error)
        finally:
            await store.close()
