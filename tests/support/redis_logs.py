"""Redis stream logs for tests: a unique key prefix on the machine's Redis
(127.0.0.1:6379), deleted afterwards, and any number of ``RedisStreamLog`` "processes"
sharing it. A test skips when Redis does not answer."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable

import anyio
import pytest
import redis.asyncio as aioredis

from tokenwire.log.redis import RedisStreamLog

__all__ = ["REDIS_URL", "namespace", "open_redis_logs"]

REDIS_URL = "redis://127.0.0.1:6379/0"


async def _redis_or_skip() -> aioredis.Redis:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        with anyio.fail_after(2):
            await client.ping()
    except Exception:
        await client.aclose()
        pytest.skip("no Redis server on 127.0.0.1:6379")
    return client


@contextlib.asynccontextmanager
async def namespace() -> AsyncIterator[str]:
    """A unique key prefix; every key under it is deleted afterwards."""
    prefix = f"twtest:{uuid.uuid4().hex[:12]}:"
    client = await _redis_or_skip()
    try:
        yield prefix
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@contextlib.asynccontextmanager
async def open_redis_logs(prefix: str) -> AsyncIterator[Callable[..., RedisStreamLog]]:
    """``make(retention=…, process_ttl=…)``: a new log (a "process") on ``prefix``;
    every one is closed afterwards."""
    made: list[RedisStreamLog] = []

    def make(*, retention: float = 3600.0, process_ttl: float | None = None) -> RedisStreamLog:
        log = RedisStreamLog.from_url(REDIS_URL, prefix=prefix, retention=retention)
        if process_ttl is not None:  # from_url has no such option: set it inside
            log._counts.process_ttl = process_ttl
        made.append(log)
        return log

    try:
        yield make
    finally:
        for log in made:
            await log.close()
