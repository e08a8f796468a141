"""One Pusher connection's protocol state, sans I/O (in the style of python-websockets'
``protocol.py``): frames in, actions out.

:meth:`PusherSession.receive_text` takes one text frame from the client and returns
what the I/O shell (:mod:`tokenwire.transports.pusher.hub`) must do, in order:
:class:`SendFrame` (a frame to this client), :class:`Subscribe` / :class:`Unsubscribe`
(join or leave the hub's channel map, the bus counts and presence),
:class:`ClientEvent` (publish a client event) and :class:`Close` (close the
connection). The session keeps what the protocol makes it remember: the channels it is
subscribed to, the presence ``user_id`` of each presence channel and the signed-in
user. It does no I/O, reads no clock and runs no asyncio; the shell owns the socket,
the bus, liveness (``pusher:ping`` after silence) and the client-event rate limit,
which it gives in the app's :class:`AppRules` as ``allow_client_event(socket_id)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from tokenwire.protocol.pusher import (
    JSON_ERRORS,
    USER_CHANNEL_PREFIX,
    ChannelKind,
    ClientFrame,
    ErrorCode,
    PusherError,
    channel_auth,
    channel_kind,
    encode_frame,
    error_frame,
    parse_frame,
    user_auth,
    verify_auth,
)

__all__ = [
    "PONG",
    "Action",
    "AppRules",
    "ClientEvent",
    "Close",
    "PusherSession",
    "SendFrame",
    "Subscribe",
    "Unsubscribe",
    "subscription_error",
]

PONG = encode_frame("pusher:pong", {})


class SendFrame(msgspec.Struct, frozen=True):
    """Send ``text`` to this client."""

    text: str


class Close(msgspec.Struct, frozen=True):
    """Close the connection with ``code`` (a 4000-4299 Pusher code) and ``reason``."""

    code: int
    reason: str


class Subscribe(msgspec.Struct, frozen=True):
    """The session joined ``channel``: add it to the hub, count it on the bus and send
    ``pusher_internal:subscription_succeeded`` (with the members, for presence)."""

    channel: str
    kind: ChannelKind
    member: tuple[str, Any] | None = None
    """``(user_id, user_info)`` of a presence subscription."""


class Unsubscribe(msgspec.Struct, frozen=True):
    """The session left ``channel`` (of ``kind``): undo its :class:`Subscribe`."""

    channel: str
    kind: ChannelKind


class ClientEvent(msgspec.Struct, frozen=True):
    """Publish a ``client-`` event to the channel's other subscribers."""

    channel: str
    event: str
    data: str
    user_id: str | None
    """The sender's presence ``user_id`` on a presence channel."""


Action = SendFrame | Close | Subscribe | Unsubscribe | ClientEvent


def subscription_error(channel: str, type_: str, error: str, status: int) -> SendFrame:
    """``pusher:subscription_error`` on ``channel`` only (Echo's ``.error()`` gets it);
    the connection and its other subscriptions go on."""
    data = {"type": type_, "error": error, "status": status}
    return SendFrame(encode_frame("pusher:subscription_error", data, channel))


_NO_MEMBERS: dict[str, str] = {}
"""The ``members`` of every session that never joined a presence channel: shared, so
never written to (64 bytes a connection saved, ws_bench)."""


@dataclass(frozen=True, slots=True)
class AppRules:
    """What every connection of one app shares (one object per app, not per
    connection): ``key`` and ``secret``, which sign its subscriptions and sign-in,
    its limits, and the shell's client-event rate limiter."""

    key: str
    secret: str
    max_channels: int
    max_message_size: int
    """Bytes of one frame, and of one client event's ``data``."""
    client_event_rate: int
    """Client events per second ``allow_client_event`` allows."""
    allow_client_event: Callable[[str], bool]
    """``allow_client_event(socket_id)``: whether this connection may send one more."""


class PusherSession:
    """The protocol state of one connection of an app (``rules``)."""

    __slots__ = ("channels", "members", "rules", "socket_id", "user_id")

    def __init__(self, socket_id: str, rules: AppRules) -> None:
        self.socket_id = socket_id
        self.rules = rules
        self.channels: dict[str, ChannelKind] = {}
        self.user_id: str | None = None
        """Set by ``pusher:signin``."""
        self.members: dict[str, str] = _NO_MEMBERS
        """Presence channel -> the ``user_id`` this connection joined it as (a dict of
        its own from the first presence channel on)."""

    def receive_text(self, text: str) -> list[Action]:
        """The actions one client frame asks for; a protocol error becomes a
        ``pusher:error`` frame, or a :class:`Close` for the errors that end the
        connection."""
        try:
            if len(text.encode()) > self.rules.max_message_size:
                raise PusherError(
                    ErrorCode.MESSAGE_TOO_LARGE,
                    f"frame larger than {self.rules.max_message_size} bytes",
                )
            return self._handle(parse_frame(text))
        except PusherError as exc:
            if exc.close and exc.code is not None:
                return [Close(exc.code, exc.message)]
            return [SendFrame(error_frame(exc.code, exc.message))]

    def unsubscribe(self, channel: str) -> list[Action]:
        """Leave ``channel`` (nothing if not subscribed)."""
        kind = self.channels.pop(channel, None)
        if kind is None:
            return []
        if kind is ChannelKind.PRESENCE:
            self.members.pop(channel, None)
        return [Unsubscribe(channel, kind)]

    def unsubscribe_all(self) -> list[Action]:
        """Leave every channel (the connection ended)."""
        return [action for channel in list(self.channels) for action in self.unsubscribe(channel)]

    def _handle(self, frame: ClientFrame) -> list[Action]:
        event = frame.event
        if event == "pusher:ping":
            return [SendFrame(PONG)]
        if event == "pusher:pong":
            return []
        if event == "pusher:subscribe":
            return self._subscribe(frame.data_object())
        if event == "pusher:unsubscribe":
            channel = frame.data_object().get("channel")
            return self.unsubscribe(channel) if isinstance(channel, str) else []
        if event == "pusher:signin":
            return [self._signin(frame.data_object())]
        if event.startswith("client-"):
            return [self._client_event(frame)]
        raise PusherError(ErrorCode.INVALID_FRAME, f"unknown event {event[:50]!r}")

    def _subscribe(self, data: dict[str, Any]) -> list[Action]:
        channel = data.get("channel")
        try:
            kind = channel_kind(channel)
        except ValueError as exc:
            if isinstance(channel, str):
                return [subscription_error(channel, "InvalidChannel", str(exc), 400)]
            raise PusherError(ErrorCode.INVALID_FRAME, f"pusher:subscribe: {exc}") from None
        assert isinstance(channel, str)
        if channel not in self.channels and len(self.channels) >= self.rules.max_channels:
            return [
                subscription_error(
                    channel,
                    "LimitReached",
                    f"a connection may be subscribed to at most {self.rules.max_channels} channels",
                    ErrorCode.TOO_MANY_CHANNELS,
                )
            ]
        member: tuple[str, Any] | None = None
        if kind is ChannelKind.USER:
            if self.user_id is None or channel != f"{USER_CHANNEL_PREFIX}{self.user_id}":
                return [subscription_error(channel, "AuthError", "not signed in as this user", 403)]
        elif kind.needs_auth:
            channel_data = data.get("channel_data") if kind is ChannelKind.PRESENCE else None
            if kind is ChannelKind.PRESENCE:
                member = _presence_member(channel_data)
                if member is None:
                    return [
                        subscription_error(
                            channel, "AuthError", "channel_data must name a user_id", 400
                        )
                    ]
            expected = channel_auth(
                self.rules.key, self.rules.secret, self.socket_id, channel, channel_data
            )
            if not verify_auth(data.get("auth"), expected):
                return [subscription_error(channel, "AuthError", "invalid auth signature", 401)]
        actions = self.unsubscribe(channel)  # a re-subscription starts afresh
        self.channels[channel] = kind
        if member is not None:
            if self.members is _NO_MEMBERS:
                self.members = {}
            self.members[channel] = member[0]
        actions.append(Subscribe(channel, kind, member))
        return actions

    def _signin(self, data: dict[str, Any]) -> SendFrame:
        user_data = data.get("user_data")
        user_id = None
        if isinstance(user_data, str):
            with contextlib.suppress(*JSON_ERRORS):
                decoded = msgspec.json.decode(user_data)
                if isinstance(decoded, dict) and isinstance(decoded.get("id"), str | int):
                    user_id = str(decoded["id"])
        if not user_id:
            raise PusherError(
                ErrorCode.UNAUTHORIZED, "pusher:signin: user_data must name an id", close=True
            )
        assert isinstance(user_data, str)
        expected = user_auth(self.rules.key, self.rules.secret, self.socket_id, user_data)
        if not verify_auth(data.get("auth"), expected):
            raise PusherError(
                ErrorCode.UNAUTHORIZED, "pusher:signin: invalid auth signature", close=True
            )
        self.user_id = user_id
        return SendFrame(encode_frame("pusher:signin_success", {"user_data": user_data}))

    def _client_event(self, frame: ClientFrame) -> ClientEvent:
        channel = frame.channel
        kind = self.channels.get(channel) if channel is not None else None
        if kind is None:
            raise PusherError(
                ErrorCode.CLIENT_EVENT_REJECTED,
                f"client event on channel {channel!r}, which this connection is not subscribed to",
            )
        if not kind.allows_client_events:
            raise PusherError(
                ErrorCode.CLIENT_EVENT_REJECTED,
                "client events are only allowed on private- and presence- channels",
            )
        assert channel is not None
        if not self.rules.allow_client_event(self.socket_id):
            raise PusherError(
                ErrorCode.CLIENT_EVENT_RATE_LIMIT,
                f"client event rejected: more than {self.rules.client_event_rate} per second",
            )
        data = (
            frame.data if isinstance(frame.data, str) else msgspec.json.encode(frame.data).decode()
        )
        if len(data.encode()) > self.rules.max_message_size:
            raise PusherError(
                ErrorCode.MESSAGE_TOO_LARGE,
                f"client event data larger than {self.rules.max_message_size} bytes",
            )
        user_id = self.members[channel] if kind is ChannelKind.PRESENCE else None
        return ClientEvent(channel, frame.event, data, user_id)


def _presence_member(channel_data: object) -> tuple[str, Any] | None:
    """``(user_id, user_info)`` from a presence subscription's ``channel_data``."""
    if not isinstance(channel_data, str):
        return None
    try:
        decoded = msgspec.json.decode(channel_data)
    except JSON_ERRORS:
        return None
    if not isinstance(decoded, dict):
        return None
    user_id = decoded.get("user_id")
    if isinstance(user_id, bool) or not isinstance(user_id, str | int) or user_id == "":
        return None
    return str(user_id), decoded.get("user_info")
