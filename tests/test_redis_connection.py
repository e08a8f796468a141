"""``OwnConnection``: the kept connection of the Redis log's append batch and tail,
against the machine's Redis (127.0.0.1:6379; skipped when it does not answer).

What it must keep from redis-py's own command path: a killed connection is
reconnected and the command answered, a cancelled command leaves no reply behind for
the next one, an error reply raises, and the connection goes back to the pool."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import anyio
import pytest
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tests.support.redis_logs import REDIS_URL, namespace
from tokenwire.log.redis_core import OwnConnection

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client() -> AsyncIterator[aioredis.Redis]:
    async with namespace():  # skips without Redis
        # One retry, as RedisStreamLog.from_url's pool has (2): the retry is the pool's.
        client = aioredis.Redis.from_url(REDIS_URL, retry=Retry(NoBackoff(), 1))
        try:
            yield client
        finally:
            await client.aclose()


async def test_a_killed_connection_is_reconnected_and_the_command_answered(
    client: aioredis.Redis,
) -> None:
    own = OwnConnection(client.connection_pool)
    first = await own.execute("CLIENT", "ID")
    assert await client.client_kill_filter(_id=first) == 1
    with anyio.fail_after(5):
        second = await own.execute("CLIENT", "ID")
    assert second != first  # a new connection answered
    assert await own.execute("PING") == b"PONG"
    await own.release()


async def test_a_cancelled_command_leaves_no_reply_for_the_next(
    client: aioredis.Redis,
) -> None:
    key = f"twtest:{uuid.uuid4().hex[:12]}:list"
    own = OwnConnection(client.connection_pool)
    blocked = asyncio.ensure_future(own.execute("BLPOP", key, 0))
    with anyio.fail_after(5):
        # Redis's state: no local event to wait on.
        while not any(c.get("cmd") == "blpop" for c in await client.client_list()):  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        blocked.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocked
        await client.rpush(key, "late")  # a reply the cancelled call would have read
        assert await own.execute("PING") == b"PONG"
        assert await own.execute("LPOP", key) == b"late"
    await own.release()


async def test_an_error_reply_raises_and_the_connection_goes_back_to_the_pool() -> None:
    async with namespace():  # skips without Redis
        pool = aioredis.BlockingConnectionPool.from_url(REDIS_URL, max_connections=1)
        client = aioredis.Redis.from_pool(pool)  # closes the pool with it
        try:
            own = OwnConnection(pool)
            with pytest.raises(redis.exceptions.NoScriptError):
                await own.execute("EVALSHA", "0" * 40, 0)
            assert await own.execute("ECHO", "still usable") == b"still usable"
            with pytest.raises(TimeoutError):  # the pool's one connection is kept
                with anyio.fail_after(0.2):
                    await client.ping()
            await own.release()
            with anyio.fail_after(5):
                assert await client.ping()
        finally:
            await client.aclose()
