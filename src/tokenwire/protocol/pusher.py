"""Pusher Channels protocol 7, sans I/O: frames, channel names, signatures, error codes.

Sources: the Pusher Channels Protocol reference
(pusher.com/docs/channels/library_auth_reference/pusher-websockets-protocol), the
"Authentication and authorization signatures" and "HTTP API reference" pages of the
same library auth reference, and what ``pusher-js`` 8 and the Python ``pusher`` 3
library send (``pusher/http.py``: ``body_md5`` also on GET).

Nothing here does I/O or keeps connection state (one connection's state is
:mod:`tokenwire.protocol.pusher_session`); :mod:`tokenwire.transports.pusher.hub`
is the WebSocket and HTTP shell around it.

Frames are JSON objects ``{"event", "channel"?, "data"}``. In frames the server
sends, ``data`` is a JSON-encoded *string* (the protocol's double encoding);
``pusher-js`` sends ``data`` of its own ``pusher:*`` events as an object, and
client events with whatever the application passed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import secrets
from collections.abc import Mapping
from enum import Enum
from typing import Any

import msgspec

from tokenwire.errors import ApiAuthError, PusherError

__all__ = [
    "JSON_ERRORS",
    "MAX_CHANNEL_LENGTH",
    "MAX_EVENT_NAME_LENGTH",
    "MIN_PROTOCOL_VERSION",
    "PROTOCOL_VERSION",
    "USER_CHANNEL_PREFIX",
    "ApiAuthError",
    "ChannelKind",
    "ClientFrame",
    "ErrorCode",
    "PusherError",
    "api_signature",
    "broadcast_conversation",
    "channel_auth",
    "channel_kind",
    "check_event_name",
    "check_socket_id",
    "conversation_channel",
    "conversation_of_channel",
    "encode_frame",
    "error_frame",
    "new_socket_id",
    "parse_frame",
    "shared_secret",
    "sign",
    "user_auth",
    "verify_api_request",
    "verify_auth",
]

PROTOCOL_VERSION = 7
"""The newest Pusher protocol version spoken (the one ``pusher-js`` 8 asks for)."""
MIN_PROTOCOL_VERSION = 4
"""The oldest ``?protocol=`` accepted. Pusher refuses 1-3 with 4007; 4-7 share the frames
tokenwire sends (``pysher`` asks for 6). Source: Pusher Channels protocol docs, "Connection"
and "Error codes" (https://pusher.com/docs/channels/library_auth_reference/pusher-websockets-protocol/)."""
MAX_CHANNEL_LENGTH = 200
"""Longest channel name (the Python ``pusher`` library's limit; Pusher documents 164)."""
MAX_EVENT_NAME_LENGTH = 200
USER_CHANNEL_PREFIX = "#server-to-user-"
"""Channel of the events the HTTP API sends to one signed-in user (``send_to_user``)."""

_CHANNEL_RE = re.compile(r"[A-Za-z0-9_\-=@,.;]+")
_SOCKET_ID_RE = re.compile(r"\d+\.\d+")
_CONVERSATION_RE = re.compile(
    r"(?P<prefix>private-|private-encrypted-|presence-)conversation\.(?P<id>[A-Za-z0-9_\-]+)"
)
"""The one grammar of a conversation's channel names: ``{prefix}conversation.{id}``."""
_BROADCAST_PREFIX = "private-"
"""The prefix of the channel tokenwire broadcasts a conversation's streams on."""


def conversation_channel(conversation_id: str) -> str:
    """The channel a conversation's streams are broadcast on:
    ``private-conversation.{conversation_id}``."""
    return f"{_BROADCAST_PREFIX}conversation.{conversation_id}"


def conversation_of_channel(channel: str) -> str | None:
    """The conversation id a ``private-``, ``private-encrypted-`` or ``presence-``
    ``conversation.{id}`` channel names (the channels only the conversation's owner
    may join), or None for any other channel."""
    match = _CONVERSATION_RE.fullmatch(channel)
    return None if match is None else match.group("id")


def broadcast_conversation(channel: str) -> str | None:
    """The conversation id of its broadcast channel (``private-conversation.{id}``,
    :func:`conversation_channel`), or None for any other channel."""
    match = _CONVERSATION_RE.fullmatch(channel)
    if match is None or match.group("prefix") != _BROADCAST_PREFIX:
        return None
    return match.group("id")


class ErrorCode:
    """``pusher:error`` codes and WebSocket close codes (protocol reference, "Error codes").

    The range tells a client what to do after a close: 4000-4099 do not reconnect
    unchanged; 4100-4199 reconnect after backing off (at least 1 s); 4200-4299
    reconnect at once; 4300-4399 other errors (``pusher-js`` does not reconnect).
    Codes sent in a ``pusher:error`` that does not close the connection only
    describe the error.
    """

    APP_NOT_FOUND = 4001
    """No app with the key in ``/app/{key}`` (closes)."""
    INVALID_VERSION = 4006
    UNSUPPORTED_PROTOCOL = 4007
    """``?protocol=`` outside :data:`MIN_PROTOCOL_VERSION`-:data:`PROTOCOL_VERSION` (closes)."""
    NO_PROTOCOL = 4008
    UNAUTHORIZED = 4009
    """Bad ``pusher:signin``; or the HTTP API terminated the user's connections (closes)."""
    OVER_CAPACITY = 4100
    """The app's ``max_connections`` is reached (closes; back off and retry)."""
    RECONNECT = 4200
    """The server is shutting down (closes; reconnect at once, to another node)."""
    PONG_TIMEOUT = 4201
    """No frame from the client for ``activity_timeout`` + 30 s after a ping (closes)."""
    INVALID_FRAME = 4300
    """A frame that is not a JSON object with a string ``event`` (connection stays)."""
    CLIENT_EVENT_RATE_LIMIT = 4301
    """More client events than the app allows per second (connection stays)."""
    CLIENT_EVENT_REJECTED = 4302
    """A client event on a channel where it is not allowed (connection stays)."""
    MESSAGE_TOO_LARGE = 4303
    """A frame or client event larger than the app's ``max_message_size`` (stays)."""
    TOO_MANY_CHANNELS = 4304
    """A subscription beyond the app's ``max_channels`` per connection: the ``status``
    of its ``pusher:subscription_error`` (type ``LimitReached``; the connection stays).
    Not in Pusher's list, which names no such limit; in its 4300-4399 range."""


class ChannelKind(Enum):
    """What a channel name's prefix makes it (protocol reference, "Channels")."""

    PUBLIC = "public"
    PRIVATE = "private"
    """``private-``: subscribing needs an auth signature."""
    ENCRYPTED = "encrypted"
    """``private-encrypted-``: as private; the server relays ciphertext; no client events."""
    PRESENCE = "presence"
    """``presence-``: as private, with ``channel_data`` naming the member."""
    USER = "user"
    """``#server-to-user-{id}``: only a connection signed in as that user."""

    @property
    def needs_auth(self) -> bool:
        return self in (ChannelKind.PRIVATE, ChannelKind.ENCRYPTED, ChannelKind.PRESENCE)

    @property
    def allows_client_events(self) -> bool:
        return self in (ChannelKind.PRIVATE, ChannelKind.PRESENCE)


def channel_kind(channel: object) -> ChannelKind:
    """The kind of a channel name.

    Raises:
        ValueError: not a string of 1-200 characters from ``A-Za-z0-9_-=@,.;``
            (a ``#server-to-user-`` name must have a valid user id after it).
    """
    if not isinstance(channel, str) or not 0 < len(channel) <= MAX_CHANNEL_LENGTH:
        raise ValueError(f"channel must be a name of 1 to {MAX_CHANNEL_LENGTH} characters")
    if channel.startswith(USER_CHANNEL_PREFIX):
        if not _CHANNEL_RE.fullmatch(channel[len(USER_CHANNEL_PREFIX) :]):
            raise ValueError(f"invalid user channel name {channel!r}")
        return ChannelKind.USER
    if not _CHANNEL_RE.fullmatch(channel):
        raise ValueError(f"invalid channel name {channel!r}: allowed are A-Z a-z 0-9 _ - = @ , . ;")
    if channel.startswith("private-encrypted-"):
        return ChannelKind.ENCRYPTED
    if channel.startswith("private-"):
        return ChannelKind.PRIVATE
    if channel.startswith("presence-"):
        return ChannelKind.PRESENCE
    return ChannelKind.PUBLIC


def check_event_name(name: object) -> str:
    """``name`` if it is a valid event name (a string of 1-200 characters).

    Raises:
        ValueError: it is not.
    """
    if not isinstance(name, str) or not 0 < len(name) <= MAX_EVENT_NAME_LENGTH:
        raise ValueError(f"event name must be a string of 1 to {MAX_EVENT_NAME_LENGTH} characters")
    return name


def new_socket_id() -> str:
    """A fresh, unguessable ``socket_id`` of the protocol's form ``\\d+.\\d+``."""
    return f"{secrets.randbelow(10**9)}.{secrets.randbelow(10**9)}"


# -- signatures -----------------------------------------------------------------


def sign(secret: str, message: str) -> str:
    """HMAC-SHA256 of ``message`` keyed with ``secret``, as lowercase hex."""
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def channel_auth(
    key: str, secret: str, socket_id: str, channel: str, channel_data: str | None = None
) -> str:
    """The ``auth`` value that lets ``socket_id`` subscribe to a private, encrypted or
    presence channel: ``"{key}:{hex HMAC of 'socket_id:channel[:channel_data]'}"``."""
    message = (
        f"{socket_id}:{channel}"
        if channel_data is None
        else f"{socket_id}:{channel}:{channel_data}"
    )
    return f"{key}:{sign(secret, message)}"


def user_auth(key: str, secret: str, socket_id: str, user_data: str) -> str:
    """The ``auth`` value of ``pusher:signin``: HMAC of ``'socket_id::user::user_data'``."""
    return f"{key}:{sign(secret, f'{socket_id}::user::{user_data}')}"


def verify_auth(auth: object, expected: str) -> bool:
    """Whether a client's ``auth`` equals ``expected``, compared in constant time."""
    return isinstance(auth, str) and hmac.compare_digest(auth.encode(), expected.encode())


def shared_secret(encryption_master_key: bytes, channel: str) -> str:
    """Base64 key of an end-to-end encrypted channel, as the auth endpoint returns it:
    SHA-256 of the channel name followed by the app's 32-byte master key."""
    return base64.b64encode(
        hashlib.sha256(channel.encode() + encryption_master_key).digest()
    ).decode()


# -- HTTP API signatures ----------------------------------------------------------


def api_signature(secret: str, method: str, path: str, params: Mapping[str, str]) -> str:
    """``auth_signature`` of an HTTP API request: HMAC of ``"METHOD\\npath\\nquery"``, the
    query being every parameter but ``auth_signature``, sorted by name, ``k=v`` joined
    with ``&``, not URL-encoded (HTTP API reference, "Authentication")."""
    query = "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "auth_signature")
    return sign(secret, f"{method.upper()}\n{path}\n{query}")


def verify_api_request(
    *,
    key: str,
    secret: str,
    method: str,
    path: str,
    params: Mapping[str, str],
    body: bytes,
    now: float,
    max_age: float = 600.0,
) -> None:
    """Check an HTTP API request's ``auth_key``, ``auth_timestamp``, ``body_md5`` and
    ``auth_signature``.

    ``body_md5`` is required when there is a body and checked whenever it is sent
    (the Python library sends the MD5 of the empty body on GET).

    Raises:
        ApiAuthError: a parameter is missing or wrong, the timestamp is more than
            ``max_age`` seconds from ``now``, or the signature does not match.
    """
    for name in ("auth_key", "auth_timestamp", "auth_version", "auth_signature"):
        if name not in params:
            raise ApiAuthError(f"missing query parameter {name}")
    if params["auth_key"] != key:
        raise ApiAuthError("unknown auth_key")
    if params["auth_version"] != "1.0":
        raise ApiAuthError("auth_version must be 1.0")
    try:
        timestamp = float(params["auth_timestamp"])
    except ValueError:
        raise ApiAuthError("auth_timestamp must be Unix seconds") from None
    if not math.isfinite(timestamp):  # nan would pass the comparison below
        raise ApiAuthError("auth_timestamp must be Unix seconds")
    if abs(now - timestamp) > max_age:
        raise ApiAuthError(
            f"auth_timestamp expired: {now - timestamp:.0f} s from the server's clock "
            f"(at most {max_age:.0f} s)"
        )
    if body and "body_md5" not in params:
        raise ApiAuthError("missing query parameter body_md5")
    if "body_md5" in params and params["body_md5"] != hashlib.md5(body).hexdigest():
        raise ApiAuthError("body_md5 does not match the body")
    expected = api_signature(secret, method, path, params)
    if not hmac.compare_digest(params["auth_signature"].encode(), expected.encode()):
        raise ApiAuthError("invalid auth_signature")


# -- frames -----------------------------------------------------------------------


class ClientFrame(msgspec.Struct, frozen=True):
    """One frame a client sent: ``event``, the optional ``channel`` and ``data`` as sent
    (an object, a string or anything JSON)."""

    event: str
    channel: str | None = None
    data: Any = None

    def data_object(self) -> dict[str, Any]:
        """``data`` as an object, decoding a JSON string as some clients send it.

        Raises:
            PusherError: ``data`` is not an object (nor a string holding one).
        """
        data = self.data
        if isinstance(data, str):
            try:
                data = msgspec.json.decode(data)
            except JSON_ERRORS:
                data = None
        if not isinstance(data, dict):
            raise PusherError(ErrorCode.INVALID_FRAME, f"{self.event}: data must be an object")
        return data


JSON_ERRORS = (msgspec.DecodeError, RecursionError)
"""What decoding client JSON raises: malformed, or nested deeper than Python's
recursion limit (about 1,000 levels) allows."""

_frame_decoder = msgspec.json.Decoder(ClientFrame)
_encode = msgspec.json.Encoder().encode


def parse_frame(text: str | bytes) -> ClientFrame:
    """Decode one client frame.

    Raises:
        PusherError: :attr:`ErrorCode.INVALID_FRAME`, naming what is wrong.
    """
    try:
        return _frame_decoder.decode(text)
    except msgspec.ValidationError as exc:
        raise PusherError(ErrorCode.INVALID_FRAME, f"invalid frame: {exc}") from None
    except msgspec.DecodeError:
        raise PusherError(ErrorCode.INVALID_FRAME, "invalid frame: not JSON") from None
    except RecursionError:
        raise PusherError(ErrorCode.INVALID_FRAME, "invalid frame: nested too deeply") from None


def encode_frame(
    event: str,
    data: str | Mapping[str, Any],
    channel: str | None = None,
    user_id: str | None = None,
) -> str:
    """A server frame. ``data`` that is not a string is JSON-encoded first (the
    protocol's double encoding); a string is sent as it is. ``user_id``: the sender
    of a client event on a presence channel."""
    if not isinstance(data, str):
        data = _encode(data).decode()
    frame: dict[str, str] = {"event": event}
    if channel is not None:
        frame["channel"] = channel
    frame["data"] = data
    if user_id is not None:
        frame["user_id"] = user_id
    return _encode(frame).decode()


def error_frame(code: int | None, message: str) -> str:
    """A ``pusher:error`` frame (its ``data`` is an object, as the protocol shows)."""
    return _encode({"event": "pusher:error", "data": {"code": code, "message": message}}).decode()


def check_socket_id(socket_id: object) -> str:
    """``socket_id`` if it has the protocol's form.

    Raises:
        ValueError: it does not.
    """
    if not isinstance(socket_id, str) or not _SOCKET_ID_RE.fullmatch(socket_id):
        raise ValueError("socket_id must look like 1234.5678")
    return socket_id
