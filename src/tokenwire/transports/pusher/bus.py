"""What the Pusher server's nodes share: fan-out of publishes, presence members and
subscription counts.

:class:`MemoryBus` serves one process. :class:`RedisBus` serves several: every
publish goes to the other nodes over one Redis pub/sub channel; presence members
live in Redis hashes changed by Lua scripts, so ``member_added`` and
``member_removed`` are decided once for all nodes; each node keeps its
subscription counts in a hash of its own that expires when the node stops
renewing it, and a node's presence members are removed by the others when its
heartbeat stops (within ``3 x heartbeat`` seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any, Literal, Protocol

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tokenwire.errors import BusUnavailableError
from tokenwire.log.redis_core import unavailable

__all__ = ["Bus", "BusMessage", "MemoryBus", "RedisBus"]

logger = logging.getLogger("tokenwire.pusher")


def _unavailable() -> contextlib.AbstractContextManager[None]:
    """The bus's boundary: redis-py errors become :class:`BusUnavailableError`."""
    return unavailable(BusUnavailableError, "Pusher bus")


class BusMessage(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """One message between nodes.

    - ``publish``: deliver ``event`` with ``data`` on ``channel`` to every local
      subscriber except the connection ``exclude``;
    - ``stream``: stream ``data`` started in conversation ``channel`` (relay it);
    - ``terminate``: close the connections signed in as user ``data``.
    """

    kind: Literal["publish", "stream", "terminate"]
    app_id: str
    channel: str = ""
    event: str = ""
    data: str = ""
    exclude: str | None = None
    user_id: str | None = None
    """Sender of a client event on a presence channel."""
    node: str = ""


Dispatch = Callable[[BusMessage], None]


class Bus(Protocol):
    """The shared state of the nodes. Members are ``{user_id: user_info}``."""

    async def start(self, node: str, dispatch: Dispatch) -> None:
        """Begin receiving other nodes' messages, calling ``dispatch`` with each."""

    async def publish(self, message: BusMessage) -> None:
        """Send ``message`` to the other nodes (the caller delivers it locally)."""

    async def join(
        self, app_id: str, channel: str, socket_id: str, user_id: str, user_info: Any
    ) -> tuple[bool, dict[str, Any]]:
        """Add a presence member's connection; return whether it is the user's first
        connection on the channel (``member_added`` is due) and the members."""

    async def leave(self, app_id: str, channel: str, socket_id: str) -> str | None:
        """Remove a connection from a presence channel; return the user id when it was
        the user's last (``member_removed`` is due), else ``None``."""

    async def members(self, app_id: str, channel: str) -> dict[str, Any]:
        """The presence channel's members."""

    async def count(self, app_id: str, channel: str, delta: int) -> None:
        """Change this node's subscription count of a channel."""

    async def channels(self, app_id: str) -> dict[str, int]:
        """Subscription count of every occupied channel, over all nodes."""

    async def close(self) -> None: ...


class MemoryBus:
    """The :class:`Bus` of a single process."""

    def __init__(self) -> None:
        self._sockets: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
        self._info: dict[tuple[str, str], dict[str, Any]] = defaultdict(dict)
        self._counts: dict[str, dict[str, int]] = defaultdict(dict)

    async def start(self, node: str, dispatch: Dispatch) -> None:
        pass

    async def publish(self, message: BusMessage) -> None:
        pass  # no other node

    async def join(
        self, app_id: str, channel: str, socket_id: str, user_id: str, user_info: Any
    ) -> tuple[bool, dict[str, Any]]:
        sockets = self._sockets[app_id, channel]
        added = user_id not in sockets.values()
        sockets[socket_id] = user_id
        info = self._info[app_id, channel]
        info[user_id] = user_info
        return added, dict(info)

    async def leave(self, app_id: str, channel: str, socket_id: str) -> str | None:
        sockets = self._sockets.get((app_id, channel), {})
        user_id = sockets.pop(socket_id, None)
        if user_id is None or user_id in sockets.values():
            return None
        self._info[app_id, channel].pop(user_id, None)
        if not sockets:
            del self._sockets[app_id, channel], self._info[app_id, channel]
        return user_id

    async def members(self, app_id: str, channel: str) -> dict[str, Any]:
        return dict(self._info.get((app_id, channel), {}))

    async def count(self, app_id: str, channel: str, delta: int) -> None:
        counts = self._counts[app_id]
        counts[channel] = counts.get(channel, 0) + delta
        if counts[channel] <= 0:
            del counts[channel]

    async def channels(self, app_id: str) -> dict[str, int]:
        return dict(self._counts.get(app_id, {}))

    async def close(self) -> None:
        pass


# KEYS: sockets hash, users hash (user -> connections), info hash, index set
# ARGV: socket_id, "node\x1fuser_id", user_id, user_info JSON, index member
_JOIN = """
local added = 0
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  if redis.call('HINCRBY', KEYS[2], ARGV[3], 1) == 1 then added = 1 end
  redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
  redis.call('SADD', KEYS[4], ARGV[5])
end
return {added, redis.call('HGETALL', KEYS[3])}
"""
# KEYS as _JOIN; ARGV: socket_id. Returns the user id when its last connection left.
_LEAVE = """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
local user = string.sub(value, string.find(value, '\\31', 1, true) + 1)
if redis.call('HINCRBY', KEYS[2], user, -1) <= 0 then
  redis.call('HDEL', KEYS[2], user)
  redis.call('HDEL', KEYS[3], user)
  return user
end
return false
"""
_SEP = "\x1f"


class RedisBus:
    """The :class:`Bus` of several nodes sharing one Redis.

    Args:
        url: Redis URL.
        prefix: prefix of every key and channel (``Settings.log_prefix`` + ``pusher:``).
        heartbeat: seconds between renewals of this node's liveness.
        on_member_removed: called with ``(app_id, channel, user_id)`` when this node
            removed the last connection of a user of a node that died.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "tw:pusher:",
        heartbeat: float = 5.0,
        on_member_removed: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self._redis: aioredis.Redis = aioredis.Redis.from_url(url, decode_responses=True)
        self._prefix = prefix
        self._heartbeat = heartbeat
        self._on_member_removed = on_member_removed
        self._node = ""
        self._join = self._redis.register_script(_JOIN)
        self._leave = self._redis.register_script(_LEAVE)
        self._tasks: list[asyncio.Task[None]] = []
        self._encode = msgspec.json.Encoder().encode
        self._decode = msgspec.json.Decoder(BusMessage).decode

    def _keys(self, app_id: str, channel: str) -> list[str]:
        base = f"{self._prefix}presence:{app_id}:{channel}"
        return [base, f"{base}:users", f"{base}:info", f"{self._prefix}presence-channels"]

    async def start(self, node: str, dispatch: Dispatch) -> None:
        with _unavailable():
            self._node = node
            await self._renew()
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            await pubsub.subscribe(f"{self._prefix}bus")
            self._tasks = [
                asyncio.create_task(self._listen(pubsub, dispatch), name="tokenwire-pusher-bus"),
                asyncio.create_task(self._keep_alive(), name="tokenwire-pusher-nodes"),
            ]

    async def _listen(self, pubsub: Any, dispatch: Dispatch) -> None:
        while True:
            try:
                message = await pubsub.get_message(timeout=None)
            except RedisError:  # the connection dropped: redis-py reconnects on the next call
                logger.warning("pusher bus: Redis unreachable; retrying", exc_info=True)
                await asyncio.sleep(1.0)
                continue
            if message is None or message["type"] != "message":
                continue
            try:
                decoded = self._decode(message["data"])
            except msgspec.DecodeError:
                logger.warning("pusher bus: dropped a message that is not ours")
                continue
            if decoded.node != self._node:
                dispatch(decoded)

    async def publish(self, message: BusMessage) -> None:
        with _unavailable():
            payload = self._encode(msgspec.structs.replace(message, node=self._node))
            await self._redis.publish(f"{self._prefix}bus", payload)

    async def join(
        self, app_id: str, channel: str, socket_id: str, user_id: str, user_info: Any
    ) -> tuple[bool, dict[str, Any]]:
        with _unavailable():
            info = msgspec.json.encode(user_info).decode()
            args = [
                socket_id,
                f"{self._node}{_SEP}{user_id}",
                user_id,
                info,
                f"{app_id}{_SEP}{channel}",
            ]
            added, flat = await self._join(keys=self._keys(app_id, channel), args=args)
            return bool(added), _members(flat)

    async def leave(self, app_id: str, channel: str, socket_id: str) -> str | None:
        with _unavailable():
            user = await self._leave(keys=self._keys(app_id, channel), args=[socket_id])
            return str(user) if user else None

    async def members(self, app_id: str, channel: str) -> dict[str, Any]:
        with _unavailable():
            flat = await self._redis.hgetall(self._keys(app_id, channel)[2])
            return _members([str(x) for pair in flat.items() for x in pair])

    async def count(self, app_id: str, channel: str, delta: int) -> None:
        with _unavailable():
            key = f"{self._prefix}subs:{self._node}"
            field = f"{app_id}{_SEP}{channel}"
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hincrby(key, field, delta)
                pipe.expire(key, int(self._heartbeat * 3) + 1)
                value, _ = await pipe.execute()
            if value <= 0:
                await self._redis.hdel(key, field)

    async def channels(self, app_id: str) -> dict[str, int]:
        with _unavailable():
            alive = await self._redis.zrangebyscore(f"{self._prefix}nodes", time.time(), "+inf")
            totals: dict[str, int] = {}
            async with self._redis.pipeline(transaction=False) as pipe:
                for node in alive:
                    pipe.hgetall(f"{self._prefix}subs:{node!s}")
                for counts in await pipe.execute():
                    for field, value in counts.items():
                        app, _, channel = field.partition(_SEP)
                        if app == app_id and int(value) > 0:
                            totals[channel] = totals.get(channel, 0) + int(value)
            return totals

    async def _renew(self) -> None:
        now = time.time()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(f"{self._prefix}nodes", {self._node: now + self._heartbeat * 3})
            pipe.expire(f"{self._prefix}subs:{self._node}", int(self._heartbeat * 3) + 1)
            await pipe.execute()

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat)
            try:
                await self._renew()
                await self._sweep()
            except RedisError:
                logger.warning("pusher bus: could not renew this node's liveness", exc_info=True)

    async def _sweep(self) -> None:
        """Remove the presence members of nodes whose heartbeat stopped."""
        nodes = f"{self._prefix}nodes"
        dead = {str(n) for n in await self._redis.zrangebyscore(nodes, "-inf", time.time())}
        if not dead:
            return
        for member in await self._redis.smembers(f"{self._prefix}presence-channels"):
            app_id, _, channel = str(member).partition(_SEP)
            sockets = await self._redis.hgetall(self._keys(app_id, channel)[0])
            if not sockets:
                await self._redis.srem(f"{self._prefix}presence-channels", member)
            for socket_id, value in sockets.items():
                if str(value).partition(_SEP)[0] in dead:
                    user = await self.leave(app_id, channel, str(socket_id))
                    if user is not None and self._on_member_removed is not None:
                        self._on_member_removed(app_id, channel, user)
        await self._redis.zrem(nodes, *dead)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(RedisError):
            await self._redis.zrem(f"{self._prefix}nodes", self._node)
            await self._redis.delete(f"{self._prefix}subs:{self._node}")
        await self._redis.aclose()


def _members(flat: list[str]) -> dict[str, Any]:
    return {flat[i]: msgspec.json.decode(flat[i + 1]) for i in range(0, len(flat), 2)}
