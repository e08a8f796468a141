"""The sans-I/O Pusher session: frames in, actions out (no socket, no event loop)."""

from __future__ import annotations

import msgspec

from tokenwire.protocol.pusher import (
    ChannelKind,
    ErrorCode,
    channel_auth,
    encode_frame,
    user_auth,
)
from tokenwire.protocol.pusher_session import (
    PONG,
    AppRules,
    ClientEvent,
    Close,
    PusherSession,
    SendFrame,
    Subscribe,
    Unsubscribe,
)

KEY, SECRET, SOCKET_ID = "key1", "secret1", "123.456"


def session(max_channels: int = 100, allow: bool = True) -> PusherSession:
    return PusherSession(
        SOCKET_ID,
        AppRules(
            KEY,
            SECRET,
            max_channels=max_channels,
            max_message_size=1000,
            client_event_rate=10,
            allow_client_event=lambda socket_id: allow and socket_id == SOCKET_ID,
        ),
    )


def frame(event: str, data: object, channel: str | None = None) -> str:
    body: dict[str, object] = {"event": event, "data": data}
    if channel is not None:
        body["channel"] = channel
    return msgspec.json.encode(body).decode()


def error_of(actions: list[object]) -> dict[str, object]:
    [action] = actions
    assert isinstance(action, SendFrame)
    decoded = msgspec.json.decode(action.text)
    assert isinstance(decoded, dict)
    data = decoded["data"]
    if isinstance(data, str):  # pusher:subscription_error's data is double-encoded
        data = msgspec.json.decode(data)
    assert isinstance(data, dict)
    return {"event": decoded["event"], **data}


def subscribe(s: PusherSession, channel: str, channel_data: str | None = None) -> list[object]:
    data: dict[str, object] = {"channel": channel}
    if channel.startswith(("private-", "presence-")):
        sig = channel_auth(KEY, SECRET, SOCKET_ID, channel, channel_data)
        data["auth"] = sig
    if channel_data is not None:
        data["channel_data"] = channel_data
    return list(s.receive_text(frame("pusher:subscribe", data)))


def test_ping_pong_and_unknown_events() -> None:
    s = session()
    assert s.receive_text(frame("pusher:ping", {})) == [SendFrame(PONG)]
    assert s.receive_text(frame("pusher:pong", {})) == []
    error = error_of(list(s.receive_text(frame("pusher:nonsense", {}))))
    assert error["event"] == "pusher:error" and error["code"] == ErrorCode.INVALID_FRAME
    too_big = error_of(list(s.receive_text(frame("pusher:ping", "x" * 1000))))
    assert too_big["code"] == ErrorCode.MESSAGE_TOO_LARGE


def test_subscriptions_are_checked_and_remembered() -> None:
    s = session(max_channels=2)
    assert subscribe(s, "public") == [Subscribe("public", ChannelKind.PUBLIC)]
    # a re-subscription leaves the channel first
    assert subscribe(s, "public") == [
        Unsubscribe("public", ChannelKind.PUBLIC),
        Subscribe("public", ChannelKind.PUBLIC),
    ]
    forged = s.receive_text(frame("pusher:subscribe", {"channel": "private-a", "auth": "x:y"}))
    assert error_of(list(forged))["status"] == 401
    assert subscribe(s, "private-a") == [Subscribe("private-a", ChannelKind.PRIVATE)]
    assert error_of(subscribe(s, "third"))["status"] == ErrorCode.TOO_MANY_CHANNELS
    assert set(s.channels) == {"public", "private-a"}
    assert s.receive_text(frame("pusher:unsubscribe", {"channel": "public"})) == [
        Unsubscribe("public", ChannelKind.PUBLIC)
    ]
    assert s.receive_text(frame("pusher:unsubscribe", {"channel": "public"})) == []


def test_presence_and_client_events() -> None:
    s = session()
    member = msgspec.json.encode({"user_id": 7, "user_info": {"n": 1}}).decode()
    [joined] = subscribe(s, "presence-room", member)
    assert joined == Subscribe("presence-room", ChannelKind.PRESENCE, ("7", {"n": 1}))
    assert s.members == {"presence-room": "7"}
    assert session().members == {}  # another session's memberships are its own
    sent = s.receive_text(frame("client-typing", {"a": 1}, "presence-room"))
    assert sent == [ClientEvent("presence-room", "client-typing", '{"a":1}', "7")]
    outside = error_of(list(s.receive_text(frame("client-x", "d", "private-other"))))
    assert outside["code"] == ErrorCode.CLIENT_EVENT_REJECTED
    assert s.unsubscribe_all() == [Unsubscribe("presence-room", ChannelKind.PRESENCE)]
    assert s.members == {} and s.channels == {}


def test_client_event_rate_limit_and_public_channels() -> None:
    s = session(allow=False)
    subscribe(s, "public")
    subscribe(s, "private-a")
    public = error_of(list(s.receive_text(frame("client-x", "d", "public"))))
    assert public["code"] == ErrorCode.CLIENT_EVENT_REJECTED
    limited = error_of(list(s.receive_text(frame("client-x", "d", "private-a"))))
    assert limited["code"] == ErrorCode.CLIENT_EVENT_RATE_LIMIT


def test_signin_and_the_user_channel() -> None:
    s = session()
    assert error_of(subscribe(s, "#server-to-user-5"))["status"] == 403
    bad = s.receive_text(frame("pusher:signin", {"user_data": '{"id":"5"}', "auth": "k:x"}))
    assert bad == [Close(ErrorCode.UNAUTHORIZED, "pusher:signin: invalid auth signature")]
    user_data = '{"id":"5"}'
    auth = user_auth(KEY, SECRET, SOCKET_ID, user_data)
    ok = s.receive_text(frame("pusher:signin", {"user_data": user_data, "auth": auth}))
    assert ok == [SendFrame(encode_frame("pusher:signin_success", {"user_data": user_data}))]
    assert s.user_id == "5"
    assert subscribe(s, "#server-to-user-5") == [Subscribe("#server-to-user-5", ChannelKind.USER)]
