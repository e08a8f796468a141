"""The Pusher Channels protocol 7 server: WebSocket connections on ``/app/{key}``.

:class:`PusherHub` is a raw ASGI WebSocket app mounted in the same app as the
HTTP API (``create_app`` does it). It keeps this node's connections and
subscriptions, delivers publishes to them and shares the rest with the other
nodes through a :class:`~tokenwire.transports.pusher.bus.Bus`. The protocol rules
(frames, names, signatures, error codes) are in :mod:`tokenwire.protocol.pusher`;
each connection's protocol state is a sans-I/O
:class:`~tokenwire.protocol.pusher_session.PusherSession`: the hub feeds it the
client's frames and applies the actions it returns (the I/O shell).

Conversations: every stream of conversation ``X`` is broadcast on
``private-conversation.X``, with the Pusher event name equal to the event's
``type`` and ``data`` the event JSON with ``stream_id`` and ``seq``. A node reads
those events from the stream log (as an SSE response would) while it has
subscribers of that channel (:mod:`~tokenwire.transports.pusher.relay`); a client
that missed some fetches them over HTTP (``web/tokenwire-pusher.js``).

Delivery (:class:`~tokenwire.transports.pusher.connection.Connection`): one frame is
encoded per publish and written to each subscriber at once; a subscriber whose
socket is not draining gets a backlog of at most ``MAX_BACKLOG`` frames and the
app's ``max_backlog_bytes``, then is closed with 4100 (reconnect after backing
off) and no more of its frames are read.

Caps per app (``PusherApp``, docs/websockets.md "Limits"): ``max_connections`` per
node (4100 beyond), ``max_channels`` per connection (``pusher:subscription_error``
with status 4304 beyond), ``client_event_rate`` (4301), ``max_message_size`` (4303).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import msgspec
from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.types import Message, Receive, Scope, Send
from websockets.frames import Frame, Opcode

from tokenwire.engine.identity import Identity
from tokenwire.events import Start
from tokenwire.protocol.pusher import (
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    ChannelKind,
    ErrorCode,
    PusherError,
    broadcast_conversation,
    encode_frame,
    error_frame,
    new_socket_id,
)
from tokenwire.protocol.pusher_session import (
    Action,
    ClientEvent,
    SendFrame,
    Subscribe,
    Unsubscribe,
)
from tokenwire.settings import PusherApp
from tokenwire.transports.pusher.bus import Bus, BusMessage, MemoryBus, RedisBus
from tokenwire.transports.pusher.connection import (
    WRITE_FRAME,
    Connection,
    ConnectionState,
    app_rules,
)
from tokenwire.transports.pusher.relay import Relays

if TYPE_CHECKING:
    from tokenwire.log.base import StreamLog
    from tokenwire.settings import Settings

__all__ = [
    "PONG_TIMEOUT",
    "ChannelAuthorizer",
    "PusherHub",
]

logger = logging.getLogger("tokenwire.pusher")

PONG_TIMEOUT = 30.0
"""Seconds the server waits for any frame after its ``pusher:ping`` (then closes 4201)."""
ChannelAuthorizer = Callable[[Identity | None, "re.Match[str]"], Awaitable[bool]]
"""``async (identity, match) -> allowed``: decides a private or presence channel
whose name matches the pattern it was registered with (:meth:`PusherHub.channel`)."""
_PING = encode_frame("pusher:ping", {})


class PusherHub:
    """This node's Pusher server.

    Args:
        log: the stream log the conversations' streams are read from.
        settings: ``resolved_pusher_url`` and ``log_prefix`` (the default bus).
        apps: the apps served; the first carries the conversations' broadcasts.
        stream_started: the hook that announces each new stream's ``start`` event
            (``Tokenwire.stream_started``): the hub adds itself to it in :meth:`start`
            and leaves it in :meth:`close`.
        bus: shared state; ``None`` = :class:`RedisBus` on ``Settings.resolved_pusher_url``
            when there is one, else :class:`MemoryBus`.
    """

    def __init__(
        self,
        log: StreamLog,
        settings: Settings,
        apps: list[PusherApp],
        *,
        stream_started: list[Callable[[Start], Awaitable[None]]],
        bus: Bus | None = None,
    ) -> None:
        if not apps:
            raise ValueError("at least one Pusher app is needed")
        self.log = log
        self._stream_started = stream_started
        self.apps = apps
        self.apps_by_key = {app.key: app for app in apps}
        self.apps_by_id = {app.id: app for app in apps}
        self.node = uuid.uuid4().hex[:12]
        self.bus = bus or _default_bus(settings, self._member_gone)
        self.connections: dict[str, Connection] = {}
        self._app_connections: dict[str, int] = {a.id: 0 for a in apps}
        """app id -> this node's connections to it (``max_connections``)."""
        self._channels: dict[str, dict[str, dict[str, Connection]]] = {a.id: {} for a in apps}
        """app id -> channel -> socket_id -> connection (this node's)."""
        self.relays = Relays(
            log,
            watched=lambda channel: channel in self._channels[self.broadcast_app.id],
            deliver=lambda channel, frame: self.deliver(self.broadcast_app.id, channel, frame),
        )
        self.authorizers: list[tuple[re.Pattern[str], ChannelAuthorizer]] = []
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._rules = {a.id: app_rules(a, self._client_event_limit(a)) for a in apps}
        """App id -> what its connections share (one object per app, ws_bench)."""
        self._ticker: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._started = False
        self._closing = False

    @property
    def broadcast_app(self) -> PusherApp:
        """The app the conversations are broadcast on (the first)."""
        return self.apps[0]

    def statistics(self) -> dict[str, int]:
        """This node's ``connections``, occupied ``channels`` and stream ``relays``."""
        return {
            "connections": len(self.connections),
            "channels": sum(len(channels) for channels in self._channels.values()),
            "relays": len(self.relays),
        }

    def channel(self, pattern: str) -> Callable[[ChannelAuthorizer], ChannelAuthorizer]:
        r"""Register who may join the private and presence channels whose whole name
        matches the regular expression ``pattern`` (Laravel's ``Broadcast::channel``)::

            @hub.channel(r"presence-room\.(\w+)")
            async def room(identity, match):
                return identity is not None
        """

        def register(authorizer: ChannelAuthorizer) -> ChannelAuthorizer:
            self.authorizers.append((re.compile(pattern), authorizer))
            return authorizer

        return register

    async def start(self) -> None:
        """Join the other nodes and begin the activity checks; idempotent."""
        if self._started:
            return
        self._started = True
        await self.bus.start(self.node, self._dispatch)
        self._stream_started.append(self._announce)
        self._ticker = asyncio.create_task(self._check_activity(), name="tokenwire-pusher-ping")

    async def disconnect_all(self) -> None:
        """Close every connection with 4200: reconnect at once (another node, or this
        one restarted, will answer)."""
        self._closing = True  # and refuse new ones with 4200 from now on
        conns = list(self.connections.values())
        await asyncio.gather(
            *(c.close(ErrorCode.RECONNECT, "server shutting down, reconnect") for c in conns)
        )
        for conn in conns:
            await self._forget(conn)

    async def finish_relays(self, timeout: float) -> None:
        """Wait, at most ``timeout`` seconds, until the relays of the streams that have
        ended (their terminal event is in the log) have delivered it: at shutdown, so
        that subscribers get the terminal broadcast before :meth:`disconnect_all`."""
        await self.relays.finish(timeout)

    async def close(self) -> None:
        """:meth:`disconnect_all`, stop relays, leave the other nodes."""
        if self._ticker is not None:
            self._ticker.cancel()
        await self.disconnect_all()
        self.relays.cancel_all()
        if self._announce in self._stream_started:
            self._stream_started.remove(self._announce)
        await self.bus.close()

    # -- publishing -------------------------------------------------------------

    async def publish(
        self,
        app_id: str,
        channel: str,
        event: str,
        data: str,
        exclude: str | None = None,
        user_id: str | None = None,
    ) -> None:
        """Deliver an event on a channel on every node, except to connection ``exclude``.

        ``data`` is sent as it is (the protocol's JSON-encoded string); ``user_id``
        names the sender of a client event on a presence channel."""
        self.deliver(app_id, channel, encode_frame(event, data, channel, user_id), exclude)
        await self.bus.publish(
            BusMessage(
                kind="publish",
                app_id=app_id,
                channel=channel,
                event=event,
                data=data,
                exclude=exclude,
                user_id=user_id,
            )
        )

    def deliver(self, app_id: str, channel: str, frame: str, exclude: str | None = None) -> int:
        """Write a frame to this node's subscribers of a channel; return how many."""
        subscribers = self._channels.get(app_id, {}).get(channel)
        if not subscribers:
            return 0
        # One encoding for all: the same unmasked frame bytes suit every subscriber.
        prepared = Frame(Opcode.TEXT, frame.encode()).serialize(mask=False)
        for socket_id, conn in subscribers.items():
            if socket_id != exclude:
                conn.send_prepared(frame, prepared)
        return len(subscribers)

    async def terminate(self, app_id: str, user_id: str) -> None:
        """Close every connection signed in as ``user_id``, on every node (4009)."""
        self._terminate(app_id, user_id)
        await self.bus.publish(BusMessage(kind="terminate", app_id=app_id, data=user_id))

    def _terminate(self, app_id: str, user_id: str) -> None:
        for conn in list(self.connections.values()):
            if conn.app.id == app_id and conn.session.user_id == user_id:
                self._spawn(conn.close(ErrorCode.UNAUTHORIZED, "connection terminated"))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _dispatch(self, message: BusMessage) -> None:
        if message.kind == "publish":
            frame = encode_frame(message.event, message.data, message.channel, message.user_id)
            self.deliver(message.app_id, message.channel, frame, message.exclude)
        elif message.kind == "stream":
            self.relays.relay(message.channel, message.data, after=0)
        elif message.kind == "terminate":
            self._terminate(message.app_id, message.data)

    def _member_gone(self, app_id: str, channel: str, user_id: str) -> None:
        """A node died with the last connection of a presence member (bus sweep)."""
        self._spawn(self._member_removed(app_id, channel, user_id))

    async def _member_removed(self, app_id: str, channel: str, user_id: str) -> None:
        data = msgspec.json.encode({"user_id": user_id}).decode()
        await self.publish(app_id, channel, "pusher_internal:member_removed", data)

    # -- conversations ------------------------------------------------------------

    async def _announce(self, start: Start) -> None:
        """A stream started here: relay it where its conversation has subscribers."""
        self.relays.relay(start.conversation_id, start.stream_id, after=0)
        with contextlib.suppress(Exception):  # a bus outage must not fail the generation
            await self.bus.publish(
                BusMessage(
                    kind="stream",
                    app_id=self.broadcast_app.id,
                    channel=start.conversation_id,
                    data=start.stream_id,
                )
            )

    # -- the WebSocket shell ------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI app of ``GET /app/{key}`` (WebSocket)."""
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        key = scope.get("path_params", {}).get("key", "")
        app = self.apps_by_key.get(key)
        refusal = self._refusal(app, scope)
        if refusal is not None:
            code, reason = refusal
            await send({"type": "websocket.send", "text": error_frame(code, reason)})
            await send({"type": "websocket.close", "code": code, "reason": reason})
            return
        assert app is not None
        write_frame = scope.get("extensions", {}).get(WRITE_FRAME)
        socket_id = new_socket_id()
        conn = Connection(
            app,
            socket_id,
            send,
            time.monotonic(),
            write_frame,
            rules=self._rules[app.id],
        )
        self.connections[conn.socket_id] = conn
        self._app_connections[app.id] += 1
        try:
            conn.send(
                encode_frame(
                    "pusher:connection_established",
                    {"socket_id": conn.socket_id, "activity_timeout": app.activity_timeout},
                )
            )
            await self._serve(conn, receive)
        finally:
            await self._forget(conn)

    def _client_event_limit(self, app: PusherApp) -> Callable[[str], bool]:
        """``allow_client_event(socket_id)``: at most ``app.client_event_rate`` client
        events per second and connection (a moving window, ``limits``)."""
        rate = RateLimitItemPerSecond(app.client_event_rate)
        hit = self._limiter.hit
        return lambda socket_id: hit(rate, app.id, socket_id)

    def _refusal(self, app: PusherApp | None, scope: Scope) -> tuple[int, str] | None:
        if app is None:
            return ErrorCode.APP_NOT_FOUND, "no app with this key"
        if self._closing:
            return ErrorCode.RECONNECT, "server shutting down, reconnect"
        protocol = parse_qs(scope.get("query_string", b"").decode()).get("protocol", [""])[0]
        if not protocol:
            return ErrorCode.NO_PROTOCOL, "no protocol version given (?protocol=7)"
        if not protocol.isdigit():
            return ErrorCode.INVALID_VERSION, f"invalid protocol version {protocol!r}"
        if not MIN_PROTOCOL_VERSION <= int(protocol) <= PROTOCOL_VERSION:
            accepted = f"{MIN_PROTOCOL_VERSION}-{PROTOCOL_VERSION}"
            return ErrorCode.UNSUPPORTED_PROTOCOL, f"protocol {protocol} not supported ({accepted})"
        cap = app.max_connections
        if cap is not None and self._app_connections[app.id] >= cap:
            return ErrorCode.OVER_CAPACITY, "over connection quota, retry later"
        return None

    async def _serve(self, conn: Connection, receive: Receive) -> None:
        session = conn.session
        while True:
            message: Message = await receive()
            if message["type"] == "websocket.disconnect" or conn.state is not ConnectionState.OPEN:
                return
            conn.last_seen = time.monotonic()
            conn.pinged = False
            text = message.get("text")
            if text is None:
                text = (message.get("bytes") or b"").decode("utf-8", "replace")
            try:
                if not await self._apply(conn, session.receive_text(text)):
                    return
            except PusherError as exc:
                if exc.close and exc.code is not None:
                    await conn.close(exc.code, exc.message)
                    return
                conn.send(error_frame(exc.code, exc.message))
            except Exception:  # a bug or Redis down: this frame fails, the connection stays
                logger.exception("pusher frame failed on connection %s", conn.socket_id)
                conn.send(error_frame(None, "internal error; try again"))

    async def _apply(self, conn: Connection, actions: list[Action]) -> bool:
        """Do what the session asked for, in order; False once the connection is closed."""
        for action in actions:
            if isinstance(action, SendFrame):
                conn.send(action.text)
            elif isinstance(action, Subscribe):
                await self._subscribe(conn, action)
            elif isinstance(action, Unsubscribe):
                await self._unsubscribe(conn, action)
            elif isinstance(action, ClientEvent):
                await self.publish(
                    conn.app.id,
                    action.channel,
                    action.event,
                    action.data,
                    conn.socket_id,
                    action.user_id,
                )
            else:
                await conn.close(action.code, action.reason)
                return False
        return True

    async def _subscribe(self, conn: Connection, action: Subscribe) -> None:
        app, channel = conn.app, action.channel
        subscribers = self._channels[app.id].setdefault(channel, {})
        subscribers[conn.socket_id] = conn
        await _quietly(self.bus.count(app.id, channel, 1))
        if action.member is None:
            conn.send(encode_frame("pusher_internal:subscription_succeeded", "{}", channel))
        else:
            user_id, user_info = action.member
            added, members = await self.bus.join(
                app.id, channel, conn.socket_id, user_id, user_info
            )
            presence = {"presence": {"ids": list(members), "hash": members, "count": len(members)}}
            conn.send(encode_frame("pusher_internal:subscription_succeeded", presence, channel))
            if added:
                data_added = msgspec.json.encode({"user_id": user_id, "user_info": user_info})
                await self.publish(
                    app.id,
                    channel,
                    "pusher_internal:member_added",
                    data_added.decode(),
                    conn.socket_id,
                )
        conversation_id = broadcast_conversation(channel)
        if conversation_id and app is self.broadcast_app and len(subscribers) == 1:
            await self.relays.watch(conversation_id)

    async def _unsubscribe(self, conn: Connection, action: Unsubscribe) -> None:
        app_id, channel = conn.app.id, action.channel
        subscribers = self._channels[app_id].get(channel, {})
        subscribers.pop(conn.socket_id, None)
        if not subscribers:
            self._channels[app_id].pop(channel, None)
            conversation_id = broadcast_conversation(channel)
            if conversation_id and app_id == self.broadcast_app.id:
                self.relays.unwatch(conversation_id)
        await _quietly(self.bus.count(app_id, channel, -1))
        if action.kind is ChannelKind.PRESENCE:
            user_id = await _quietly(self.bus.leave(app_id, channel, conn.socket_id))
            if user_id is not None:
                await _quietly(self._member_removed(app_id, channel, user_id))

    # -- connection end and liveness ----------------------------------------------

    async def _forget(self, conn: Connection) -> None:
        if self.connections.pop(conn.socket_id, None) is None:
            return
        self._app_connections[conn.app.id] -= 1
        conn.advance(ConnectionState.CLOSED)
        await self._apply(conn, conn.session.unsubscribe_all())
        self._limiter.clear(
            RateLimitItemPerSecond(conn.app.client_event_rate), conn.app.id, conn.socket_id
        )

    async def _check_activity(self) -> None:
        """Ping connections silent for their app's ``activity_timeout``; close those
        still silent ``PONG_TIMEOUT`` seconds later (4201: reconnect at once)."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for conn in list(self.connections.values()):
                silent = now - conn.last_seen
                if silent >= conn.app.activity_timeout + PONG_TIMEOUT and conn.pinged:
                    self._spawn(conn.close(ErrorCode.PONG_TIMEOUT, "pong reply not received"))
                elif silent >= conn.app.activity_timeout and not conn.pinged:
                    conn.pinged = True
                    conn.send(_PING)


async def _quietly(awaitable: Coroutine[Any, Any, Any]) -> Any:
    """Await a bus call whose failure (Redis down) must not end the connection."""
    try:
        return await awaitable
    except Exception:
        logger.warning("pusher bus call failed", exc_info=True)
        return None


def _default_bus(settings: Settings, on_member_removed: Any) -> Bus:
    url = settings.resolved_pusher_url()
    if url is None:
        return MemoryBus()
    return RedisBus(
        url, prefix=f"{settings.log_prefix}pusher:", on_member_removed=on_member_removed
    )
