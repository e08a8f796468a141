"""Cancel requests in the Redis stream log (see "Cancel" in :mod:`tokenwire.log.redis`):
a flag in the stream's hash plus a ``PUBLISH``, one pub/sub subscriber per process
dispatching to the local watchers, and a re-read of the flags after every
(re)subscription, since pub/sub delivers at most once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

import redis.exceptions

from tokenwire.log.redis_core import BACKOFF_MAX, BACKOFF_MIN, RedisCore, as_str, stop_task

__all__ = ["CancelWatch"]

logger = logging.getLogger("tokenwire.log.redis")


class CancelWatch:
    """This process's cancel watchers and their subscriber task."""

    def __init__(self, core: RedisCore) -> None:
        self._core = core
        self._watchers: dict[str, list[Callable[[str], None]]] = {}
        self._subscriber: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()
        """Set while the subscriber follows the cancel channel."""

    async def request(self, stream_id: str, reason: str) -> bool:
        """Set the flag and publish it; ``False`` if already asked or ended.

        Raises:
            StreamNotFoundError, StreamExpiredError: no such stream.
            LogUnavailableError: Redis cannot be reached.
        """
        core, keys = self._core, self._core.keys
        code = await core.call(
            core.cancel_script(
                keys=[keys.meta(stream_id), keys.gone(stream_id)],
                args=[reason, keys.cancel_channel(), json.dumps([stream_id, reason])],
            )
        )
        if code < 0:
            raise await core.missing(stream_id, code)
        return bool(code)

    def watch(self, stream_id: str, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(reason)`` once on a request; returns the unwatch function."""
        self._watchers.setdefault(stream_id, []).append(callback)
        if self._subscriber is None:
            self._subscriber = asyncio.create_task(self._subscribe(), name="tokenwire-redis-cancel")
        self._core.spawn(self._check([stream_id]))

        def unwatch() -> None:
            callbacks = self._watchers.get(stream_id)
            if callbacks is not None and callback in callbacks:
                callbacks.remove(callback)
                if not callbacks:
                    del self._watchers[stream_id]

        return unwatch

    def count(self) -> int:
        """Callbacks watching (the ``cancel_watchers`` statistic)."""
        return sum(len(w) for w in self._watchers.values())

    def _dispatch(self, stream_id: str, reason: str) -> None:
        for callback in self._watchers.pop(stream_id, []):
            try:
                callback(reason)
            except Exception:
                logger.exception("cancel callback failed")

    async def _check(self, stream_ids: list[str]) -> None:
        """Dispatch the cancel requests already made (once subscribed, so none is missed)."""
        await self.subscribed.wait()
        try:
            async with self._core.client.pipeline(transaction=False) as pipe:
                for stream_id in stream_ids:
                    pipe.hget(self._core.keys.meta(stream_id), "cancel")
                reasons = await pipe.execute()
        except redis.exceptions.RedisError:
            return  # checked again after the subscriber reconnects
        for stream_id, reason in zip(stream_ids, reasons, strict=True):
            if reason is not None:
                self._dispatch(stream_id, as_str(reason))

    def _resubscribed(self, _: object = None) -> None:
        """(Re)subscribed: dispatch the requests made meanwhile (pub/sub kept none)."""
        if self._watchers:
            self._core.spawn(self._check(list(self._watchers)))

    async def _subscribe(self) -> None:
        """Follow the cancel channel; reconnect and re-check every flag after a failure."""
        backoff = BACKOFF_MIN
        channel = self._core.keys.cancel_channel()
        while not self._core.closed:
            pubsub = self._core.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                self.subscribed.set()
                # redis-py reconnects and resubscribes by itself inside get_message
                # (the client's retries): check the flags again each time then too.
                assert pubsub.connection is not None  # set by subscribe
                pubsub.connection.register_connect_callback(self._resubscribed)
                self._resubscribed()
                backoff = BACKOFF_MIN
                while not self._core.closed:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        stream_id, reason = json.loads(message["data"])
                        self._dispatch(stream_id, reason)
            except Exception as exc:  # Redis down, or a foreign message: never die
                logger.warning("cancel subscriber: %r; retrying in %.2f s", exc, backoff)
            finally:
                self.subscribed.clear()
                if pubsub.connection is not None:
                    pubsub.connection.deregister_connect_callback(self._resubscribed)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis-py 8.2
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def close(self) -> None:
        """Stop the subscriber and drop every watcher."""
        if self._subscriber is not None:
            await stop_task(self._subscriber)
        self._subscriber = None
        self._watchers.clear()
