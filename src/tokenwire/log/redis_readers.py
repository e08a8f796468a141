"""Counting the live readers of the Redis stream log, per process (DESIGN §4): a
process counts its readers in each stream's ``readers`` hash while its liveness key
lives, so a killed process's readers stop counting ``process_ttl`` seconds after it died."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.exceptions

from tokenwire.log.redis_core import RedisCore, as_str, ms

__all__ = ["ReaderCounts"]

logger = logging.getLogger("tokenwire.log.redis")


class ReaderCounts:
    """This process's readers: join, leave, the liveness key, the global count.

    Args:
        core: the log's shared client and keys.
        process_ttl: seconds a killed process's readers keep counting.
    """

    def __init__(self, core: RedisCore, process_ttl: float) -> None:
        self._core = core
        self.process_ttl = process_ttl
        """Seconds a killed process's readers keep counting."""
        self.local = 0
        """Live readers in this process."""
        self.alive: asyncio.Task[None] | None = None
        """The task that renews this process's liveness key, once a reader joined."""

    async def enter(self, stream_id: str) -> None:
        """Count one more reader of ``stream_id``.

        Raises:
            StreamNotFoundError, StreamExpiredError: no such stream.
            LogUnavailableError: Redis cannot be reached.
        """
        core, keys = self._core, self._core.keys
        code = await core.call(
            core.join_script(
                keys=[
                    keys.readers(stream_id),
                    keys.proc(core.process_id),
                    keys.meta(stream_id),
                    keys.gone(stream_id),
                ],
                args=[core.process_id, ms(self.process_ttl)],
            )
        )
        if code < 0:
            raise await core.missing(stream_id, code)
        self.local += 1
        if self.alive is None:
            self.alive = asyncio.create_task(self._keep_alive(), name="tokenwire-redis-alive")

    async def leave(self, stream_id: str) -> None:
        """Count one reader fewer (logged, not raised, when Redis fails)."""
        self.local -= 1
        core, keys = self._core, self._core.keys
        try:
            await core.leave_script(
                keys=[keys.readers(stream_id), keys.meta(stream_id)],
                args=[core.process_id, repr(core.clock()), keys.proc_prefix()],
            )
        except redis.exceptions.RedisError as exc:
            logger.warning("could not uncount a reader of %s: %s", stream_id, exc)

    async def count(self, stream_id: str) -> tuple[int, float | None]:
        """``(live readers in every process, Unix seconds when the last one left)``."""
        core, keys = self._core, self._core.keys
        code, total, left_at = await core.call(
            core.readers_script(
                keys=[keys.readers(stream_id), keys.meta(stream_id), keys.gone(stream_id)],
                args=[keys.proc_prefix(), repr(core.clock())],
            )
        )
        if code < 0:
            raise await core.missing(stream_id, code)
        left = as_str(left_at)
        return int(total), float(left) if left else None

    async def _keep_alive(self) -> None:
        """Renew this process's liveness key while it may count readers."""
        key = self._core.keys.proc(self._core.process_id)
        while not self._core.closed:
            with contextlib.suppress(redis.exceptions.RedisError):
                await self._core.client.set(key, "1", px=ms(self.process_ttl))
            await asyncio.sleep(self.process_ttl / 3)
