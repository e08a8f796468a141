"""The sans-I/O Pusher protocol core (``tokenwire.protocol.pusher``), checked against
what the official Python ``pusher`` library computes: channel auth, user auth,
encrypted channels' shared secrets and HTTP API signatures. No network."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from typing import Any

import pusher
import pytest
from pusher.crypto import generate_shared_secret
from pusher.http import Request
from pusher.pusher_client import PusherClient

from tokenwire.protocol.pusher import (
    ApiAuthError,
    ChannelKind,
    ClientFrame,
    ErrorCode,
    PusherError,
    api_signature,
    broadcast_conversation,
    channel_auth,
    channel_kind,
    check_event_name,
    check_socket_id,
    conversation_channel,
    conversation_of_channel,
    encode_frame,
    error_frame,
    new_socket_id,
    parse_frame,
    shared_secret,
    user_auth,
    verify_api_request,
)

KEY, SECRET, APP_ID = "key1", "secret1", "1001"
MASTER = bytes(range(32))
MASTER_B64 = base64.b64encode(MASTER).decode()
SOCKET_ID = "123456.7890123"


@pytest.fixture
def library() -> pusher.Pusher:
    return pusher.Pusher(
        app_id=APP_ID, key=KEY, secret=SECRET, encryption_master_key_base64=MASTER_B64
    )


@pytest.fixture
def client() -> PusherClient:
    """The library's HTTP API client: ``client.trigger.make_request(...)`` builds and
    signs a request (a ``pusher.http.Request``) without sending it."""
    return PusherClient(APP_ID, KEY, SECRET, host="127.0.0.1", port=8000, ssl=False)


# -- channel names -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "needs_auth", "client_events"),
    [
        ("my-channel", ChannelKind.PUBLIC, False, False),
        ("a", ChannelKind.PUBLIC, False, False),
        ("A-Za-z0-9_-=@,.;", ChannelKind.PUBLIC, False, False),
        ("private", ChannelKind.PUBLIC, False, False),  # a prefix needs its dash
        ("private-chat.1", ChannelKind.PRIVATE, True, True),
        ("private-encrypted-chat", ChannelKind.ENCRYPTED, True, False),
        ("presence-room@x", ChannelKind.PRESENCE, True, True),
        ("#server-to-user-alice", ChannelKind.USER, False, False),
        ("#server-to-user-42", ChannelKind.USER, False, False),
        ("c" * 200, ChannelKind.PUBLIC, False, False),
    ],
)
def test_channel_kind(name: str, kind: ChannelKind, needs_auth: bool, client_events: bool) -> None:
    assert channel_kind(name) is kind
    assert kind.needs_auth is needs_auth
    assert kind.allows_client_events is client_events


@pytest.mark.parametrize(
    "name",
    [
        "",
        "c" * 201,
        "with space",
        "ünïcode",
        "slash/no",
        "#hash",
        "#server-to-user-",
        "#server-to-user-a b",
        "private-x\n",
        None,
        42,
        ["private-x"],
    ],
)
def test_channel_kind_refuses_invalid_names(name: object) -> None:
    with pytest.raises(ValueError, match="channel"):
        channel_kind(name)


def test_the_library_and_tokenwire_agree_on_valid_names() -> None:
    from pusher.util import validate_channel

    for name in ("private-a.b", "presence-x=y", "#server-to-user-bob", "p" * 200):
        assert validate_channel(name) == name
        channel_kind(name)
    for name in ("p" * 201, "with space", "#server-to-user-"):
        with pytest.raises(ValueError):
            validate_channel(name)
        with pytest.raises(ValueError):
            channel_kind(name)


@pytest.mark.parametrize("name", ["", "e" * 201, None, 3])
def test_check_event_name_refuses(name: object) -> None:
    with pytest.raises(ValueError, match="event name"):
        check_event_name(name)
    assert check_event_name("e" * 200) == "e" * 200


def test_socket_ids() -> None:
    ids = {new_socket_id() for _ in range(100)}
    assert len(ids) == 100
    for socket_id in ids:
        assert re.fullmatch(r"\d+\.\d+", socket_id)
        assert check_socket_id(socket_id) == socket_id
    for bad in ("", "1234", "1.2.3", "a.b", " 1.2", 1.2, None):
        with pytest.raises(ValueError, match="socket_id"):
            check_socket_id(bad)


# -- signatures, cross-checked with the pusher library --------------------------------


@pytest.mark.parametrize("channel", ["private-chat", "private-encrypted-x", "presence-room"])
def test_channel_auth_equals_the_librarys(library: pusher.Pusher, channel: str) -> None:
    expected = library.authenticate(channel, SOCKET_ID)
    assert channel_auth(KEY, SECRET, SOCKET_ID, channel) == expected["auth"]
    assert channel_auth(KEY, "other", SOCKET_ID, channel) != expected["auth"]
    assert channel_auth(KEY, SECRET, "1.1", channel) != expected["auth"]


def test_presence_channel_auth_signs_channel_data(library: pusher.Pusher) -> None:
    member = {"user_id": "alice", "user_info": {"name": "Alice", "é": [1, 2]}}
    expected = library.authenticate("presence-room", SOCKET_ID, member)
    channel_data = expected["channel_data"]
    assert json.loads(channel_data) == member
    assert channel_auth(KEY, SECRET, SOCKET_ID, "presence-room", channel_data) == expected["auth"]
    # without the channel data (or with other data) the signature differs
    assert channel_auth(KEY, SECRET, SOCKET_ID, "presence-room") != expected["auth"]
    assert channel_auth(KEY, SECRET, SOCKET_ID, "presence-room", "{}") != expected["auth"]


@pytest.mark.parametrize(
    "user_data",
    [{"id": "alice"}, {"id": "bob", "user_info": {"name": "Bob"}, "watchlist": ["alice"]}],
)
def test_user_auth_equals_the_librarys(library: pusher.Pusher, user_data: dict[str, Any]) -> None:
    expected = library.authenticate_user(SOCKET_ID, user_data)
    assert user_auth(KEY, SECRET, SOCKET_ID, expected["user_data"]) == expected["auth"]
    assert user_auth(KEY, SECRET, "9.9", expected["user_data"]) != expected["auth"]


@pytest.mark.parametrize("channel", ["private-encrypted-a", "private-encrypted-conversation.x1"])
def test_shared_secret_equals_the_librarys(library: pusher.Pusher, channel: str) -> None:
    ours = shared_secret(MASTER, channel)
    assert ours.encode() == library.authenticate(channel, SOCKET_ID)["shared_secret"]
    assert base64.b64decode(ours) == generate_shared_secret(channel.encode(), MASTER)
    assert shared_secret(MASTER, channel + "2") != ours
    assert shared_secret(bytes(32), channel) != ours


def _signed(request: Request) -> dict[str, str]:
    return {k: str(v) for k, v in request.query_params.items()}


def test_api_signature_equals_the_librarys_on_post(client: PusherClient) -> None:
    request = client.trigger.make_request(["ch-1", "ch-2"], "my-event", {"a": "ü"}, "1.2")
    params = _signed(request)
    assert request.method == "POST" and request.path == "/apps/1001/events"
    assert api_signature(SECRET, "POST", request.path, params) == params["auth_signature"]
    assert api_signature(SECRET, "post", request.path, params) == params["auth_signature"]
    assert api_signature("other", "POST", request.path, params) != params["auth_signature"]
    assert api_signature(SECRET, "GET", request.path, params) != params["auth_signature"]


def test_api_signature_equals_the_librarys_on_get(client: PusherClient) -> None:
    request = client.channels_info.make_request("presence-", ["user_count"])
    params = _signed(request)
    assert params["filter_by_prefix"] == "presence-" and params["info"] == "user_count"
    assert api_signature(SECRET, "GET", request.path, params) == params["auth_signature"]
    tampered = {**params, "filter_by_prefix": "private-"}
    assert api_signature(SECRET, "GET", request.path, tampered) != params["auth_signature"]


# -- verify_api_request ------------------------------------------------------------------


def _verify(request: Request, **changes: Any) -> None:
    arguments: dict[str, Any] = {
        "key": KEY,
        "secret": SECRET,
        "method": request.method,
        "path": request.path,
        "params": _signed(request),
        "body": request.body,
        "now": time.time(),
    }
    arguments.update(changes)
    verify_api_request(**arguments)


def test_verify_accepts_the_librarys_signed_get(client: PusherClient) -> None:
    request = client.channel_info.make_request("presence-x", ["user_count"])
    assert request.body == b""
    assert request.query_params["body_md5"] == hashlib.md5(b"").hexdigest()
    _verify(request)


def test_verify_accepts_the_librarys_signed_post(client: PusherClient) -> None:
    request = client.trigger_batch.make_request(
        [
            {"channel": "a", "name": "e", "data": {"x": 1}},
            {"channel": "b", "name": "e", "data": "s"},
        ]
    )
    assert request.body
    _verify(request)


def test_verify_accepts_a_timestamp_within_600_s(client: PusherClient) -> None:
    request = client.trigger.make_request("ch", "ev", "data")
    stamp = float(request.query_params["auth_timestamp"])
    _verify(request, now=stamp + 599)
    _verify(request, now=stamp - 599)


def _refused(request: Request, **changes: Any) -> str:
    with pytest.raises(ApiAuthError) as caught:
        _verify(request, **changes)
    assert caught.value.status == 401
    assert str(caught.value) == caught.value.message
    return caught.value.message


def test_verify_refuses_the_wrong_secret(client: PusherClient) -> None:
    request = client.trigger.make_request("ch", "ev", "data")
    assert "auth_signature" in _refused(request, secret="not-the-secret")


def test_verify_refuses_a_tampered_parameter(client: PusherClient) -> None:
    request = client.channels_info.make_request("presence-", ["user_count"])
    params = {**_signed(request), "filter_by_prefix": "private-"}
    assert "auth_signature" in _refused(request, params=params)
    assert "auth_signature" in _refused(request, path="/apps/1002/channels")
    assert "auth_signature" in _refused(request, method="POST")


def test_verify_refuses_a_stale_or_future_timestamp(client: PusherClient) -> None:
    request = client.trigger.make_request("ch", "ev", "data")
    stamp = float(request.query_params["auth_timestamp"])
    assert "auth_timestamp" in _refused(request, now=stamp + 601)
    assert "auth_timestamp" in _refused(request, now=stamp - 601)
    assert "auth_timestamp" in _refused(
        request, params={**_signed(request), "auth_timestamp": "yesterday"}
    )


def test_verify_refuses_a_body_that_does_not_match_body_md5(client: PusherClient) -> None:
    request = client.trigger.make_request("ch", "ev", "data")
    assert "body_md5" in _refused(request, body=request.body.replace(b"data", b"DATA"))
    get = client.channels_info.make_request()
    assert "body_md5" in _refused(get, body=b"{}")


def test_verify_refuses_a_body_without_body_md5(client: PusherClient) -> None:
    request = client.trigger.make_request("ch", "ev", "data")
    params = _signed(request)
    del params["body_md5"]
    params["auth_signature"] = api_signature(SECRET, "POST", request.path, params)
    assert "body_md5" in _refused(request, params=params)
    # without a body, body_md5 is optional (a correctly signed GET without it passes)
    get = client.channels_info.make_request()
    params = _signed(get)
    del params["body_md5"]
    params["auth_signature"] = api_signature(SECRET, "GET", get.path, params)
    _verify(get, params=params)


@pytest.mark.parametrize(
    "missing", ["auth_key", "auth_timestamp", "auth_version", "auth_signature"]
)
def test_verify_names_a_missing_parameter(client: PusherClient, missing: str) -> None:
    request = client.trigger.make_request("ch", "ev", "data")
    params = _signed(request)
    del params[missing]
    message = _refused(request, params=params)
    assert missing in message and "missing" in message


def test_verify_refuses_another_key_and_version(client: PusherClient) -> None:
    request = client.trigger.make_request("ch", "ev", "data")
    assert "auth_key" in _refused(request, key="other-key")
    params = {**_signed(request), "auth_version": "2.0"}
    assert "auth_version" in _refused(request, params=params)


# -- frames ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("not json", "not JSON"),
        (b'{"event": ', "not JSON"),
        ("", "not JSON"),
        ('{"data": {}}', "event"),
        ('{"event": 5, "data": {}}', "event"),
        ('{"event": null}', "event"),
        ('["pusher:ping"]', "invalid frame"),
        ('"pusher:ping"', "invalid frame"),
        ('{"event": "client-x", "channel": 7}', "channel"),
    ],
)
def test_parse_frame_errors(text: str | bytes, problem: str) -> None:
    with pytest.raises(PusherError) as caught:
        parse_frame(text)
    assert caught.value.code == ErrorCode.INVALID_FRAME == 4300
    assert caught.value.close is False
    assert problem in caught.value.message


def test_parse_frame_keeps_data_as_sent() -> None:
    frame = parse_frame(b'{"event":"pusher:subscribe","data":{"channel":"a"}}')
    assert frame == ClientFrame(event="pusher:subscribe", data={"channel": "a"})
    assert frame.data_object() == {"channel": "a"}
    as_string = parse_frame('{"event":"pusher:subscribe","data":"{\\"channel\\":\\"b\\"}"}')
    assert as_string.data == '{"channel":"b"}'
    assert as_string.data_object() == {"channel": "b"}
    client = parse_frame('{"event":"client-typing","channel":"private-a","data":[1,2]}')
    assert (client.event, client.channel, client.data) == ("client-typing", "private-a", [1, 2])
    assert parse_frame('{"event":"pusher:ping"}').data is None


@pytest.mark.parametrize("data", [None, [1], "text", '"a string"', 3])
def test_data_object_refuses_what_is_not_an_object(data: Any) -> None:
    with pytest.raises(PusherError) as caught:
        ClientFrame(event="pusher:subscribe", data=data).data_object()
    assert caught.value.code == 4300 and "pusher:subscribe" in caught.value.message


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("ev", {"a": 1}, "ch"), '{"event":"ev","channel":"ch","data":"{\\"a\\":1}"}'),
        (("ev", {"a": 1}), '{"event":"ev","data":"{\\"a\\":1}"}'),
        (("ev", {}), '{"event":"ev","data":"{}"}'),
        (("ev", '{"b":2}', "ch"), '{"event":"ev","channel":"ch","data":"{\\"b\\":2}"}'),
        (("ev", "plain"), '{"event":"ev","data":"plain"}'),
        (("ev", {"t": "é☕"}), '{"event":"ev","data":"{\\"t\\":\\"é☕\\"}"}'),
    ],
)
def test_encode_frame_double_encodes(args: tuple[Any, ...], expected: str) -> None:
    assert encode_frame(*args) == expected


def test_encode_frame_round_trips_and_does_not_mutate() -> None:
    data = {"nested": {"list": [1, "two", None]}, "n": 1.5}
    copy = json.loads(json.dumps(data))
    frame = json.loads(encode_frame("update", data, "private-x"))
    assert isinstance(frame["data"], str)
    assert json.loads(frame["data"]) == data
    assert data == copy


def test_error_frame_data_is_an_object() -> None:
    assert json.loads(error_frame(4301, "slow down")) == {
        "event": "pusher:error",
        "data": {"code": 4301, "message": "slow down"},
    }
    assert json.loads(error_frame(None, "x"))["data"] == {"code": None, "message": "x"}


def test_error_code_ranges() -> None:
    closing = [ErrorCode.APP_NOT_FOUND, ErrorCode.UNSUPPORTED_PROTOCOL, ErrorCode.NO_PROTOCOL]
    assert all(4000 <= code < 4100 for code in [*closing, ErrorCode.UNAUTHORIZED])
    assert 4100 <= ErrorCode.OVER_CAPACITY < 4200
    assert 4200 <= ErrorCode.RECONNECT < ErrorCode.PONG_TIMEOUT < 4300
    staying = [
        ErrorCode.INVALID_FRAME,
        ErrorCode.CLIENT_EVENT_RATE_LIMIT,
        ErrorCode.CLIENT_EVENT_REJECTED,
        ErrorCode.MESSAGE_TOO_LARGE,
    ]
    assert staying == [4300, 4301, 4302, 4303]


# -- the one conversation-channel grammar ----------------------------------------------


def test_conversation_channel_grammar() -> None:
    assert conversation_channel("c-1_x") == "private-conversation.c-1_x"
    assert broadcast_conversation("private-conversation.c-1_x") == "c-1_x"
    for prefix in ("private-", "private-encrypted-", "presence-"):
        assert conversation_of_channel(f"{prefix}conversation.c1") == "c1"
    # only the private- one is the broadcast channel
    assert broadcast_conversation("presence-conversation.c1") is None
    assert broadcast_conversation("private-encrypted-conversation.c1") is None
    for other in (
        "conversation.c1",
        "public-conversation.c1",
        "private-conversation.",
        "private-conversation.a.b",
        "private-conversation.c1;x",
        "private-chat.c1",
    ):
        assert conversation_of_channel(other) is None, other
        assert broadcast_conversation(other) is None, other
