"""The Pusher protocol 7 server against one real server on 127.0.0.1 (uvicorn in a
thread), with real clients: raw protocol frames over the ``websockets`` library,
``httpx`` for the auth endpoints and hand-signed HTTP API calls, and the official
Python ``pusher`` library for the HTTP publishing API.

Every wait is for the frame expected, with a timeout; "nothing else arrived" is
shown with a barrier: a ``pusher:ping`` answered by the very next frame, or a later
publish arriving first on the channel.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import nacl.secret
import pusher
import pytest
from pusher.http import Request as LibraryRequest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.servers import tokenwire_process, uvicorn_thread
from tokenwire import Settings, create_app
from tokenwire.protocol.pusher import api_signature
from tokenwire.settings import PusherApp

pytestmark = pytest.mark.anyio

APP_ID, KEY, SECRET = "1001", "key1", "secret1"
MASTER_B64 = base64.b64encode(hashlib.sha256(b"tokenwire test master key").digest()).decode()
MAX_MESSAGE_SIZE = 2000
CLIENT_EVENT_RATE = 3
WAIT = 5.0
"""Seconds any one expected frame or answer may take."""
TOKENS = {"token-alice": "alice", "token-bob": "bob"}
ALICE, BOB = "token-alice", "token-bob"


def apps() -> list[PusherApp]:
    return [
        PusherApp(
            id=APP_ID,
            key=KEY,
            secret=SECRET,
            max_message_size=MAX_MESSAGE_SIZE,
            client_event_rate=CLIENT_EVENT_RATE,
            encryption_master_key_base64=MASTER_B64,
        ),
        PusherApp(id="1002", key="capped", secret="secret2", max_connections=1),
        PusherApp(id="1003", key="chatty", secret="secret3", activity_timeout=1),
    ]


def settings_for(data_dir: Path) -> Settings:
    return Settings(
        fake_provider=True,
        data_dir=data_dir,
        default_model="fake:echo",
        models=["fake:echo", "fake:lorem"],
        pusher_apps=apps(),
        auth_tokens=TOKENS,
        allow_anonymous=True,  # some tests need conversations nobody owns
        coalesce_ms=0,
    )


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with uvicorn_thread(create_app(settings_for(tmp_path_factory.mktemp("pusher")))) as url:
        yield url


@pytest.fixture
async def http(base: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base, timeout=WAIT) as client:
        yield client


@pytest.fixture(scope="module")
def library(base: str) -> Iterator[pusher.Pusher]:
    """The official Python library, pointed at the test server."""
    client = library_for(base)
    yield client
    client._pusher_client.http.session.close()


def library_for(base: str, **options: Any) -> pusher.Pusher:
    port = int(base.rsplit(":", 1)[1])
    return pusher.Pusher(
        app_id=APP_ID,
        key=KEY,
        secret=SECRET,
        host="127.0.0.1",
        port=port,
        ssl=False,
        encryption_master_key_base64=MASTER_B64,
        **options,
    )


async def call(function: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking ``pusher`` library call in a thread."""
    return await anyio.to_thread.run_sync(lambda: function(*args))


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def bearer(token: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token else {}


# -- a raw protocol client ---------------------------------------------------------------


def payload(frame: dict[str, Any]) -> Any:
    """A frame's ``data`` decoded (server frames double-encode it as a JSON string)."""
    data = frame.get("data")
    if isinstance(data, str):
        with contextlib.suppress(ValueError):
            return json.loads(data)
    return data


class Socket:
    """One Pusher protocol connection over the ``websockets`` library."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.socket_id = ""
        self.activity_timeout = 0

    async def send(self, event: str, data: Any = None, channel: str | None = None) -> None:
        frame: dict[str, Any] = {"event": event, "data": {} if data is None else data}
        if channel is not None:
            frame["channel"] = channel
        await self.ws.send(json.dumps(frame))

    async def recv(self, timeout: float = WAIT) -> dict[str, Any]:
        """The next frame; ``AssertionError`` when none comes within ``timeout`` s."""
        try:
            raw = await asyncio.wait_for(self.ws.recv(), timeout)
        except TimeoutError:
            raise AssertionError(f"no frame within {timeout} s") from None
        frame = json.loads(raw)
        assert isinstance(frame, dict), raw
        return frame

    async def expect(
        self, event: str, channel: str | None = None, timeout: float = WAIT
    ) -> dict[str, Any]:
        """Read until a frame of ``event`` (on ``channel``, when given) comes."""
        deadline = time.monotonic() + timeout
        skipped: list[dict[str, Any]] = []
        while True:
            remaining = deadline - time.monotonic()
            try:
                frame = await self.recv(max(remaining, 0.001))
            except AssertionError:
                raise AssertionError(
                    f"no {event!r} on {channel!r} within {timeout} s; got {skipped}"
                ) from None
            if frame["event"] == event and (channel is None or frame.get("channel") == channel):
                return frame
            skipped.append(frame)

    async def next_on(self, channel: str, timeout: float = WAIT) -> dict[str, Any]:
        """The next frame on ``channel`` (frames on other channels are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.recv(max(deadline - time.monotonic(), 0.001))
            if frame.get("channel") == channel:
                return frame

    async def error(self, timeout: float = WAIT) -> dict[str, Any]:
        """The ``data`` of the next ``pusher:error``."""
        frame = await self.expect("pusher:error", timeout=timeout)
        assert isinstance(frame["data"], dict), frame  # an object, not a string
        return dict(frame["data"])

    async def ping(self) -> None:
        """Barrier: the very next frame must be the ``pusher:pong``."""
        await self.send("pusher:ping")
        frame = await self.recv()
        assert frame["event"] == "pusher:pong", f"expected pusher:pong, got {frame}"

    async def closed(self, timeout: float = WAIT) -> tuple[int | None, list[dict[str, Any]]]:
        """Read until the server closes; the close code and the frames read."""
        frames: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                raw = await asyncio.wait_for(self.ws.recv(), max(deadline - time.monotonic(), 0))
            except ConnectionClosed:
                return self.ws.close_code, frames
            except TimeoutError:
                raise AssertionError(f"not closed within {timeout} s; got {frames}") from None
            frames.append(json.loads(raw))


def ws_url(base: str, key: str = KEY, query: str = "?protocol=7") -> str:
    return base.replace("http://", "ws://") + f"/app/{key}{query}"


@contextlib.asynccontextmanager
async def pusher_socket(base: str, key: str = KEY) -> AsyncIterator[Socket]:
    """A connection that has received ``pusher:connection_established``."""
    async with connect(ws_url(base, key), open_timeout=WAIT, close_timeout=1) as ws:
        sock = Socket(ws)
        frame = await sock.recv()
        assert frame["event"] == "pusher:connection_established", frame
        data = payload(frame)
        sock.socket_id, sock.activity_timeout = data["socket_id"], data["activity_timeout"]
        yield sock


async def subscribe(
    sock: Socket, channel: str, auth: str | None = None, channel_data: str | None = None
) -> Any:
    """Subscribe; return the ``subscription_succeeded`` data (fails on anything else)."""
    data: dict[str, Any] = {"channel": channel}
    if auth is not None:
        data["auth"] = auth
    if channel_data is not None:
        data["channel_data"] = channel_data
    await sock.send("pusher:subscribe", data)
    frame = await sock.next_on(channel)
    assert frame["event"] == "pusher_internal:subscription_succeeded", frame
    return payload(frame)


async def authorize(
    http: httpx.AsyncClient, sock: Socket, channel: str, token: str | None
) -> dict[str, Any]:
    response = await http.post(
        "/broadcasting/auth",
        data={"socket_id": sock.socket_id, "channel_name": channel},
        headers=bearer(token),
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


async def join(http: httpx.AsyncClient, sock: Socket, channel: str, token: str | None) -> Any:
    """Authorize through ``/broadcasting/auth`` as ``token``'s user, then subscribe."""
    auth = await authorize(http, sock, channel, token)
    return await subscribe(sock, channel, auth["auth"], auth.get("channel_data"))


async def signin(http: httpx.AsyncClient, sock: Socket, token: str) -> dict[str, Any]:
    response = await http.post(
        "/broadcasting/user-auth", data={"socket_id": sock.socket_id}, headers=bearer(token)
    )
    assert response.status_code == 200, response.text
    body = response.json()
    await sock.send("pusher:signin", {"auth": body["auth"], "user_data": body["user_data"]})
    frame = await sock.expect("pusher:signin_success")
    assert payload(frame)["user_data"] == body["user_data"]
    return dict(json.loads(body["user_data"]))


# -- conversations -----------------------------------------------------------------------


TERMINAL = {"finish", "error", "cancelled"}


async def chat(http: httpx.AsyncClient, token: str | None, **body: Any) -> dict[str, Any]:
    body.setdefault("messages", [{"role": "user", "content": "hello"}])
    response = await http.post("/v1/chat", json=body, headers=bearer(token))
    assert response.status_code == 202, response.text
    return dict(response.json())


async def log_events(
    http: httpx.AsyncClient, stream_id: str, token: str | None, after: int = 0
) -> list[dict[str, Any]]:
    """The stream's events with ``seq > after`` from ``GET /v1/streams/{id}``, to the end."""
    events: list[dict[str, Any]] = []
    with anyio.fail_after(3 * WAIT):
        while not events or events[-1]["type"] not in TERMINAL:
            last = events[-1]["seq"] if events else after
            response = await http.get(
                f"/v1/streams/{stream_id}",
                params={"after": last, "wait": 2},
                headers=bearer(token),
            )
            assert response.status_code == 200, response.text
            events += response.json()["events"]
    return events


async def conversation(http: httpx.AsyncClient, token: str | None) -> str:
    """A new conversation (owned by ``token``'s user, none when ``None``), its first
    answer already finished."""
    started = await chat(http, token)
    await log_events(http, started["stream_id"], token)
    return str(started["conversation_id"])


async def stored_answer(http: httpx.AsyncClient, conversation_id: str, token: str | None) -> str:
    """The text of the conversation's last message once stored as completed."""
    with anyio.fail_after(WAIT):
        while True:
            response = await http.get(f"/v1/conversations/{conversation_id}", headers=bearer(token))
            message = response.json()["messages"][-1]
            if message["status"] == "completed":
                return "".join(p["text"] for p in message["parts"] if p["type"] == "text")
            await anyio.sleep(0.02)


def as_logged(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Broadcast events as the log serves them: without the ``stream_id`` the broadcast
    adds (``start`` has its own)."""
    return [
        e if e["type"] == "start" else {k: v for k, v in e.items() if k != "stream_id"}
        for e in events
    ]


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "text-delta")


async def collect_stream(sock: Socket, channel: str) -> list[dict[str, Any]]:
    """The stream events broadcast on ``channel`` up to the terminal one; checks that
    each frame's event name is its data's ``type``."""
    events: list[dict[str, Any]] = []
    while not events or events[-1]["type"] not in TERMINAL:
        frame = await sock.next_on(channel)
        data = payload(frame)
        assert isinstance(frame["data"], str), frame
        assert frame["event"] == data["type"], frame
        events.append(data)
    return events


# -- connecting ------------------------------------------------------------------------


async def test_connection_established(base: str) -> None:
    async with connect(ws_url(base)) as ws:
        frame = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
    assert frame["event"] == "pusher:connection_established"
    assert isinstance(frame["data"], str)  # double-encoded
    data = json.loads(frame["data"])
    assert set(data) == {"socket_id", "activity_timeout"}
    assert re.fullmatch(r"\d+\.\d+", data["socket_id"])
    assert data["activity_timeout"] == 120


async def test_socket_ids_differ(base: str) -> None:
    async with pusher_socket(base) as a, pusher_socket(base) as b:
        assert a.socket_id != b.socket_id


async def test_ping_pong(base: str) -> None:
    async with pusher_socket(base) as sock:
        await sock.ping()
        await sock.send("pusher:ping", "{}")  # data as a string, as some clients send it
        assert (await sock.recv())["event"] == "pusher:pong"


@pytest.mark.parametrize(
    ("key", "query", "code"),
    [
        ("no-such-key", "?protocol=7", 4001),
        (KEY, "", 4008),
        (KEY, "?protocol=", 4008),
        (KEY, "?protocol=0", 4007),
        (KEY, "?protocol=1", 4007),
        (KEY, "?protocol=3", 4007),
        (KEY, "?protocol=8", 4007),
        (KEY, "?protocol=seven", 4006),
    ],
)
async def test_refused_connections_get_error_then_close(
    base: str, key: str, query: str, code: int
) -> None:
    async with connect(ws_url(base, key, query)) as ws:
        sock = Socket(ws)
        close_code, frames = await sock.closed()
    assert [f["event"] for f in frames] == ["pusher:error"]
    assert frames[0]["data"]["code"] == code and frames[0]["data"]["message"]
    assert close_code == code


@pytest.mark.parametrize("version", [4, 5, 6, 7])
async def test_protocols_4_to_7_are_accepted(base: str, version: int) -> None:
    """Pusher refuses only protocols 1-3 (4007); ``pysher`` asks for 6, ``pusher-js`` for 7."""
    async with connect(ws_url(base, KEY, f"?protocol={version}")) as ws:
        frame = await Socket(ws).recv()
    assert frame["event"] == "pusher:connection_established"
    assert re.fullmatch(r"\d+\.\d+", json.loads(frame["data"])["socket_id"])


async def test_max_connections_closes_4100(base: str) -> None:
    async with pusher_socket(base, "capped") as first:
        async with connect(ws_url(base, "capped")) as ws:
            close_code, frames = await Socket(ws).closed()
        assert close_code == 4100
        assert frames[0]["data"]["code"] == 4100
        await first.ping()
    async with pusher_socket(base, "capped") as again:  # the quota is free again
        await again.ping()


async def test_silent_client_gets_pinged(base: str) -> None:
    async with pusher_socket(base, "chatty") as sock:
        assert sock.activity_timeout == 1
        frame = await sock.recv(timeout=4)
        assert frame["event"] == "pusher:ping"
        await sock.send("pusher:pong")
        await sock.ping()


async def test_server_shutdown_closes_4200(tmp_path: Path) -> None:
    """SIGTERM to ``tokenwire serve`` closes every connection with 4200 (reconnect at
    once), not with uvicorn's 1012."""
    env = {
        "TOKENWIRE_DATA_DIR": str(tmp_path),
        "TOKENWIRE_DEFAULT_MODEL": "fake:echo",
        "TOKENWIRE_FAKE_PROVIDER": "1",
        "TOKENWIRE_MODELS": json.dumps(["fake:echo"]),
        "TOKENWIRE_PUSHER_APPS": json.dumps([app.model_dump() for app in apps()]),
        "TOKENWIRE_AUTH_TOKENS": json.dumps(TOKENS),
    }
    server = tokenwire_process("serve", "--log-level", "warning", env=env, ready_path="/healthz")
    own_base = server.__enter__()
    stopping = None
    try:
        async with pusher_socket(own_base) as sock:
            await subscribe(sock, "news")
            stopping = asyncio.ensure_future(
                anyio.to_thread.run_sync(server.__exit__, None, None, None)
            )
            close_code, frames = await sock.closed(timeout=15)
    finally:
        if stopping is None:
            server.__exit__(None, None, None)
        else:
            await stopping
    assert close_code == 4200, (close_code, frames)
    assert [f["event"] for f in frames] == ["pusher:error"]
    assert frames[0]["data"]["code"] == 4200


# -- subscriptions -----------------------------------------------------------------------


async def test_subscribe_public_channel(base: str, library: pusher.Pusher) -> None:
    channel = unique("news-")
    async with pusher_socket(base) as sock:
        assert await subscribe(sock, channel) == {}
        await call(library.trigger, channel, "headline", {"title": "ü"})
        frame = await sock.next_on(channel)
        assert frame == {"event": "headline", "channel": channel, "data": '{"title": "ü"}'}


async def test_unsubscribe_stops_delivery(base: str, library: pusher.Pusher) -> None:
    channel, other = unique("a-"), unique("b-")
    async with pusher_socket(base) as sock:
        await subscribe(sock, channel)
        await subscribe(sock, other)
        await sock.send("pusher:unsubscribe", {"channel": channel})
        await sock.ping()  # the unsubscribe is handled
        await call(library.trigger, [channel, other], "ev", "x")
        frame = await sock.recv()
        assert (frame["event"], frame["channel"]) == ("ev", other)


async def test_invalid_channel_name_is_a_subscription_error(base: str) -> None:
    async with pusher_socket(base) as sock:
        await sock.send("pusher:subscribe", {"channel": "bad name"})
        frame = await sock.next_on("bad name")
        assert frame["event"] == "pusher:subscription_error"
        assert payload(frame)["type"] == "InvalidChannel"
        assert payload(frame)["status"] == 400
        await sock.ping()


async def test_private_channel_with_auth_from_the_endpoint(
    base: str, http: httpx.AsyncClient, library: pusher.Pusher
) -> None:
    cid = await conversation(http, ALICE)
    channel = f"private-conversation.{cid}"
    async with pusher_socket(base) as sock:
        auth = await authorize(http, sock, channel, ALICE)
        assert auth == {"auth": library.authenticate(channel, sock.socket_id)["auth"]}
        assert await subscribe(sock, channel, auth["auth"]) == {}
        await call(library.trigger, channel, "note", {"n": 1})
        assert payload(await sock.next_on(channel)) == {"n": 1}


async def test_wrong_signature_fails_only_that_channel(
    base: str, http: httpx.AsyncClient, library: pusher.Pusher
) -> None:
    cid = await conversation(http, ALICE)
    channel, public = f"private-conversation.{cid}", unique("public-")
    async with pusher_socket(base) as sock:
        good = await authorize(http, sock, channel, ALICE)
        forged = good["auth"][:-4] + ("0000" if not good["auth"].endswith("0000") else "1111")
        await sock.send("pusher:subscribe", {"channel": channel, "auth": forged})
        frame = await sock.next_on(channel)
        assert frame["event"] == "pusher:subscription_error"
        error = payload(frame)
        assert error["status"] == 401 and error["type"] == "AuthError" and error["error"]
        # the connection keeps working: another subscription and publishes arrive
        await sock.ping()
        await subscribe(sock, public)
        await call(library.trigger, [channel, public], "after", "1")
        frame = await sock.recv()
        assert (frame["event"], frame["channel"]) == ("after", public)
        # an auth for another socket is refused too
        async with pusher_socket(base) as other:
            await sock.send("pusher:subscribe", {"channel": channel, "auth": good["auth"]})
            assert (await sock.next_on(channel))[
                "event"
            ] == "pusher_internal:subscription_succeeded"
            await other.send("pusher:subscribe", {"channel": channel, "auth": good["auth"]})
            assert (await other.next_on(channel))["event"] == "pusher:subscription_error"


async def test_private_subscribe_without_auth_is_refused(base: str) -> None:
    async with pusher_socket(base) as sock:
        await sock.send("pusher:subscribe", {"channel": "private-x"})
        frame = await sock.next_on("private-x")
        assert frame["event"] == "pusher:subscription_error"
        assert payload(frame)["status"] == 401
        await sock.ping()


async def test_broadcasting_auth_refusals(base: str, http: httpx.AsyncClient) -> None:
    cid = await conversation(http, ALICE)
    anonymous_cid = await conversation(http, None)
    async with pusher_socket(base) as sock:

        async def status(channel: str, token: str | None) -> tuple[int, str]:
            response = await http.post(
                "/broadcasting/auth",
                data={"socket_id": sock.socket_id, "channel_name": channel},
                headers=bearer(token),
            )
            return response.status_code, response.json().get("error", "")

        # another owner's conversation is refused exactly like one that does not exist
        unknown = await status(f"private-conversation.{uuid.uuid4().hex}", ALICE)
        assert unknown == (404, "no such conversation")
        assert await status(f"private-conversation.{cid}", BOB) == unknown
        assert await status(f"private-conversation.{cid}", None) == unknown
        assert (await status(f"private-conversation.{cid}", "token-unknown"))[0] == 401
        assert await status(f"presence-conversation.{cid}", BOB) == unknown
        assert await status(f"private-encrypted-conversation.{cid}", BOB) == unknown
        assert (await status(f"private-conversation.{cid}", ALICE))[0] == 200
        # a conversation nobody owns: anyone, but presence needs an identity
        assert (await status(f"private-conversation.{anonymous_cid}", None))[0] == 200
        assert (await status(f"presence-conversation.{anonymous_cid}", None))[0] == 401
        assert (await status(f"presence-conversation.{anonymous_cid}", BOB))[0] == 200
        # no authorizer registered for other private channels
        assert (await status("private-elsewhere", ALICE))[0] == 403
        assert (await status("public-channel", ALICE))[0] == 400
        assert (await status("bad name", ALICE))[0] == 400
    response = await http.post(
        "/broadcasting/auth",
        data={"socket_id": "nope", "channel_name": f"private-conversation.{cid}"},
        headers=bearer(ALICE),
    )
    assert response.status_code == 400 and "socket_id" in response.json()["error"]


# -- frames the server refuses ------------------------------------------------------------


async def test_malformed_frames_leave_the_connection_open(
    base: str, library: pusher.Pusher
) -> None:
    channel = unique("calm-")
    async with pusher_socket(base) as bad, pusher_socket(base) as bystander:
        await subscribe(bystander, channel)
        await subscribe(bad, channel)
        for text in ("{not json", "[]", '{"data": {}}', '{"event": 3}'):
            await bad.ws.send(text)
            error = await bad.error()
            assert error["code"] == 4300 and error["message"], text
        await bad.send("pusher:whatever")
        assert (await bad.error())["code"] == 4300
        await bad.send("pusher:subscribe", "not an object")
        assert (await bad.error())["code"] == 4300
        await bad.ping()
        await bystander.ping()
        await call(library.trigger, channel, "still", "here")
        for sock in (bad, bystander):
            assert (await sock.next_on(channel))["event"] == "still"


async def test_oversized_frame_4303(base: str) -> None:
    async with pusher_socket(base) as sock:
        await sock.send("pusher:ping", {"pad": "x" * MAX_MESSAGE_SIZE})
        error = await sock.error()
        assert error["code"] == 4303 and str(MAX_MESSAGE_SIZE) in error["message"]
        await sock.ping()


async def test_oversized_frame_counts_bytes_not_characters(base: str) -> None:
    """``max_message_size`` is in bytes: 1100 two-byte characters are 2200 bytes."""
    async with pusher_socket(base) as sock:
        await sock.ws.send(
            json.dumps({"event": "pusher:ping", "data": {"p": "é" * 1100}}, ensure_ascii=False)
        )
        assert (await sock.error())["code"] == 4303
        await sock.ping()


# -- client events -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def two_on_private(
    base: str, http: httpx.AsyncClient
) -> AsyncIterator[tuple[Socket, Socket, str]]:
    """Two connections of alice subscribed to one of her conversation channels."""
    channel = f"private-conversation.{await conversation(http, ALICE)}"
    async with pusher_socket(base) as a, pusher_socket(base) as b:
        await join(http, a, channel, ALICE)
        await join(http, b, channel, ALICE)
        yield a, b, channel


async def test_client_event_reaches_others_not_the_sender(
    base: str, http: httpx.AsyncClient
) -> None:
    async with two_on_private(base, http) as (a, b, channel):
        await a.send("client-typing", {"who": "a"}, channel)
        frame = await b.next_on(channel)
        assert frame["event"] == "client-typing"
        assert payload(frame) == {"who": "a"}
        assert "user_id" not in frame  # only presence channels name the sender
        await a.ping()  # nothing was echoed to the sender
        await b.send("client-typing", "plain text", channel)
        assert (await a.next_on(channel))["data"] == "plain text"
        await b.ping()


async def test_client_event_when_not_subscribed_4302(base: str, http: httpx.AsyncClient) -> None:
    async with two_on_private(base, http) as (a, _, channel), pusher_socket(base) as outsider:
        await outsider.send("client-typing", {"x": 1}, channel)
        error = await outsider.error()
        assert error["code"] == 4302 and error["message"]
        await outsider.send("client-typing", {"x": 1})  # no channel at all
        assert (await outsider.error())["code"] == 4302
        await a.ping()  # nothing reached the subscribers


async def test_client_event_on_public_channel_4302(base: str) -> None:
    channel = unique("public-")
    async with pusher_socket(base) as a, pusher_socket(base) as b:
        await subscribe(a, channel)
        await subscribe(b, channel)
        await a.send("client-hi", {}, channel)
        assert (await a.error())["code"] == 4302
        await b.ping()


async def test_client_event_rate_limit_4301(
    base: str, http: httpx.AsyncClient, library: pusher.Pusher
) -> None:
    async with two_on_private(base, http) as (a, b, channel):
        for n in range(CLIENT_EVENT_RATE + 1):  # back to back, well within one second
            await a.send("client-n", {"n": n}, channel)
        error = await a.error()
        assert error["code"] == 4301 and str(CLIENT_EVENT_RATE) in error["message"]
        await a.ping()
        await call(library.trigger, channel, "barrier", "{}")
        received = []
        while (frame := await b.next_on(channel))["event"] != "barrier":
            received.append(payload(frame)["n"])
        assert received == list(range(CLIENT_EVENT_RATE))


async def test_oversized_client_event_4303(base: str, http: httpx.AsyncClient) -> None:
    async with two_on_private(base, http) as (a, b, channel):
        await a.send("client-big", {"blob": "x" * MAX_MESSAGE_SIZE}, channel)
        error = await a.error()
        assert error["code"] == 4303 and str(MAX_MESSAGE_SIZE) in error["message"]
        await a.ping()
        await b.ping()  # not delivered


# -- presence ----------------------------------------------------------------------------


async def test_presence_members_once_per_user(
    base: str, http: httpx.AsyncClient, library: pusher.Pusher
) -> None:
    channel = f"presence-conversation.{await conversation(http, None)}"
    async with (
        pusher_socket(base) as alice1,
        pusher_socket(base) as alice2,
        pusher_socket(base) as bob,
    ):
        first = await join(http, alice1, channel, ALICE)
        assert first == {
            "presence": {"ids": ["alice"], "hash": {"alice": {"name": "alice"}}, "count": 1}
        }
        second = await join(http, bob, channel, BOB)
        assert sorted(second["presence"]["ids"]) == ["alice", "bob"]
        assert second["presence"]["count"] == 2
        assert second["presence"]["hash"] == {"alice": {"name": "alice"}, "bob": {"name": "bob"}}
        added = await alice1.next_on(channel)
        assert added["event"] == "pusher_internal:member_added"
        assert payload(added) == {"user_id": "bob", "user_info": {"name": "bob"}}

        third = await join(http, alice2, channel, ALICE)  # alice's second connection
        assert third["presence"]["count"] == 2
        await call(library.trigger, channel, "barrier", "1")
        for sock in (alice1, bob):  # no member_added for a user already present
            assert (await sock.next_on(channel))["event"] == "barrier"
        assert (await alice2.next_on(channel))["event"] == "barrier"

        # client events on presence channels carry the sender's user_id
        await bob.send("client-wave", {"hi": 1}, channel)
        wave = await alice1.next_on(channel)
        assert (wave["event"], wave["user_id"], payload(wave)) == ("client-wave", "bob", {"hi": 1})
        assert (await alice2.next_on(channel))["user_id"] == "bob"

        await alice1.ws.close()
        await wait_for_subscriptions(library, channel, 2)
        await call(library.trigger, channel, "barrier-2", "1")
        assert (await bob.next_on(channel))["event"] == "barrier-2"  # alice is still here
        users = await call(library.users_info, channel)
        assert sorted(u["id"] for u in users["users"]) == ["alice", "bob"]

        await alice2.ws.close()
        removed = await bob.next_on(channel)
        assert removed["event"] == "pusher_internal:member_removed"
        assert payload(removed) == {"user_id": "alice"}
        assert await call(library.users_info, channel) == {"users": [{"id": "bob"}]}


async def wait_for_subscriptions(library: pusher.Pusher, channel: str, count: int) -> None:
    """Poll ``GET /channels/{name}`` until the server counts ``count`` subscriptions."""
    with anyio.fail_after(WAIT):
        while True:
            info = await call(library.channel_info, channel, ["subscription_count"])
            if info.get("subscription_count", 0) == count:
                return
            await anyio.sleep(0.02)


async def test_presence_needs_channel_data(base: str, http: httpx.AsyncClient) -> None:
    channel = f"presence-conversation.{await conversation(http, None)}"
    async with pusher_socket(base) as sock:
        auth = await authorize(http, sock, channel, ALICE)
        await sock.send("pusher:subscribe", {"channel": channel, "auth": auth["auth"]})
        frame = await sock.next_on(channel)
        assert frame["event"] == "pusher:subscription_error"
        # channel_data that is not the one signed
        forged = json.dumps({"user_id": "bob", "user_info": {}})
        await sock.send(
            "pusher:subscribe", {"channel": channel, "auth": auth["auth"], "channel_data": forged}
        )
        frame = await sock.next_on(channel)
        assert frame["event"] == "pusher:subscription_error"
        assert payload(frame)["status"] == 401
        await sock.ping()


# -- users: sign-in, #server-to-user-, terminate ------------------------------------------


async def test_signin_and_the_users_own_channel(
    base: str, http: httpx.AsyncClient, library: pusher.Pusher
) -> None:
    async with pusher_socket(base) as sock:
        user = await signin(http, sock, ALICE)
        assert user["id"] == "alice"
        assert await subscribe(sock, "#server-to-user-alice") == {}
        await sock.send("pusher:subscribe", {"channel": "#server-to-user-bob"})
        frame = await sock.next_on("#server-to-user-bob")
        assert frame["event"] == "pusher:subscription_error"
        assert payload(frame)["status"] == 403
        await call(library.send_to_user, "alice", "notice", {"text": "for alice"})
        frame = await sock.next_on("#server-to-user-alice")
        assert (frame["event"], payload(frame)) == ("notice", {"text": "for alice"})


async def test_user_channel_needs_signin(base: str) -> None:
    async with pusher_socket(base) as sock:
        await sock.send("pusher:subscribe", {"channel": "#server-to-user-alice"})
        frame = await sock.next_on("#server-to-user-alice")
        assert frame["event"] == "pusher:subscription_error"
        await sock.ping()


async def test_user_auth_needs_an_identity(base: str, http: httpx.AsyncClient) -> None:
    async with pusher_socket(base) as sock:
        response = await http.post("/broadcasting/user-auth", data={"socket_id": sock.socket_id})
        assert response.status_code == 401


async def test_bad_signin_closes_4009(base: str, http: httpx.AsyncClient) -> None:
    async with pusher_socket(base) as sock:
        response = await http.post(
            "/broadcasting/user-auth", data={"socket_id": sock.socket_id}, headers=bearer(ALICE)
        )
        body = response.json()
        forged_user = body["user_data"].replace("alice", "bob")
        await sock.send("pusher:signin", {"auth": body["auth"], "user_data": forged_user})
        close_code, frames = await sock.closed()
    assert close_code == 4009
    assert frames[-1]["event"] == "pusher:error" and frames[-1]["data"]["code"] == 4009


async def terminate(http: httpx.AsyncClient, user_id: str) -> httpx.Response:
    """``POST /apps/{id}/users/{user}/terminate_connections`` (HTTP API reference),
    signed by the library's own request code."""
    client = library_for(str(http.base_url).rstrip("/"))._pusher_client
    request = LibraryRequest(
        client, "POST", f"/apps/{APP_ID}/users/{user_id}/terminate_connections", {}
    )
    return await http.post(request.signed_path, content=request.body, headers=request.headers)


async def test_terminate_closes_only_that_users_connections(
    base: str, http: httpx.AsyncClient
) -> None:
    async with (
        pusher_socket(base) as alice1,
        pusher_socket(base) as alice2,
        pusher_socket(base) as bob,
        pusher_socket(base) as anonymous,
    ):
        for sock, token in ((alice1, ALICE), (alice2, ALICE), (bob, BOB)):
            await signin(http, sock, token)
        response = await terminate(http, "alice")
        assert response.status_code == 200, response.text
        for sock in (alice1, alice2):
            close_code, frames = await sock.closed()
            assert close_code == 4009
            assert [f["event"] for f in frames] == ["pusher:error"]
            assert frames[0]["data"]["code"] == 4009
        await bob.ping()
        await anonymous.ping()


async def test_library_terminate_user_connections(
    base: str, http: httpx.AsyncClient, library: pusher.Pusher
) -> None:
    async with pusher_socket(base) as alice:
        await signin(http, alice, ALICE)
        await call(library.terminate_user_connections, "alice")
        close_code, _ = await alice.closed()
        assert close_code == 4009


# -- encrypted channels ------------------------------------------------------------------


async def test_encrypted_channel_carries_ciphertext(
    base: str, http: httpx.AsyncClient, library: pusher.Pusher
) -> None:
    channel = f"private-encrypted-conversation.{await conversation(http, ALICE)}"
    async with pusher_socket(base) as sock:
        auth = await authorize(http, sock, channel, ALICE)
        expected = library.authenticate(channel, sock.socket_id)
        assert auth["shared_secret"] == expected["shared_secret"].decode()
        assert auth["auth"] == expected["auth"]
        await subscribe(sock, channel, auth["auth"])
        secret_message = {"text": "top secret ☕"}
        await call(library.trigger, channel, "sealed", secret_message)
        frame = await sock.next_on(channel)
        assert frame["event"] == "sealed"
        sealed = payload(frame)
        assert set(sealed) == {"nonce", "ciphertext"}
        assert "top secret" not in frame["data"]
        box = nacl.secret.SecretBox(base64.b64decode(auth["shared_secret"]))
        plain = box.decrypt(
            base64.b64decode(sealed["ciphertext"]), base64.b64decode(sealed["nonce"])
        )
        assert json.loads(plain) == secret_message
        # no client events on encrypted channels
        await sock.send("client-x", {"a": 1}, channel)
        assert (await sock.error())["code"] == 4302


# -- the HTTP publishing API with the official library -------------------------------------


async def test_trigger_to_several_channels_and_exclusion(base: str, library: pusher.Pusher) -> None:
    one, two, three = unique("one-"), unique("two-"), unique("three-")
    async with pusher_socket(base) as a, pusher_socket(base) as b:
        for channel in (one, two):
            await subscribe(a, channel)
        for channel in (one, three):
            await subscribe(b, channel)
        assert await call(library.trigger, [one, two, three], "multi", {"k": 1}) == {}
        got_a = {(await a.recv())["channel"] for _ in range(2)}
        got_b = {(await b.recv())["channel"] for _ in range(2)}
        assert (got_a, got_b) == ({one, two}, {one, three})
        await a.ping()
        await b.ping()

        await call(library.trigger, one, "not-for-a", "x", a.socket_id)
        assert (await b.next_on(one))["event"] == "not-for-a"
        await call(library.trigger, one, "for-all", "y")
        assert (await a.next_on(one))["event"] == "for-all"  # not-for-a skipped a
        assert (await b.next_on(one))["event"] == "for-all"


async def test_trigger_batch(base: str, library: pusher.Pusher) -> None:
    one, two = unique("batch-a-"), unique("batch-b-")
    async with pusher_socket(base) as sock:
        await subscribe(sock, one)
        await subscribe(sock, two)
        batch = [
            {"channel": one, "name": "first", "data": {"n": 1}},
            {"channel": two, "name": "second", "data": "raw string"},
            {"channel": one, "name": "third", "data": {"n": 3}, "socket_id": sock.socket_id},
            {"channel": one, "name": "fourth", "data": {"n": 4}},
        ]
        assert await call(library.trigger_batch, batch) == {}
        frames = [await sock.recv() for _ in range(3)]
        assert [(f["event"], f["channel"]) for f in frames] == [
            ("first", one),
            ("second", two),
            ("fourth", one),
        ]
        assert payload(frames[0]) == {"n": 1} and frames[1]["data"] == "raw string"


async def test_channel_info_endpoints(
    base: str, http: httpx.AsyncClient, library: pusher.Pusher
) -> None:
    tag = uuid.uuid4().hex[:8]
    public = f"info-{tag}"
    presence = f"presence-conversation.{await conversation(http, None)}"
    async with (
        pusher_socket(base) as a,
        pusher_socket(base) as b,
        pusher_socket(base) as c,
    ):
        await subscribe(a, public)
        await subscribe(b, public)
        await join(http, a, presence, ALICE)
        await join(http, b, presence, ALICE)
        await join(http, c, presence, BOB)

        listed = await call(library.channels_info, f"info-{tag}")
        assert listed == {"channels": {public: {}}}
        with_users = await call(library.channels_info, presence, ["user_count"])
        assert with_users == {"channels": {presence: {"user_count": 2}}}
        everything = await call(library.channels_info)
        assert {public, presence} <= set(everything["channels"])

        info = await call(library.channel_info, public, ["subscription_count"])
        assert info == {"occupied": True, "subscription_count": 2}
        info = await call(library.channel_info, presence, ["user_count", "subscription_count"])
        assert info == {"occupied": True, "user_count": 2, "subscription_count": 3}
        assert await call(library.channel_info, f"empty-{tag}") == {"occupied": False}
        users = await call(library.users_info, presence)
        assert sorted(u["id"] for u in users["users"]) == ["alice", "bob"]

        with pytest.raises(pusher.errors.PusherBadRequest):  # user_count of a public channel
            await call(library.channel_info, public, ["user_count"])
        with pytest.raises(pusher.errors.PusherBadRequest):
            await call(library.users_info, public)

    await wait_for_subscriptions(library, public, 0)
    assert await call(library.channels_info, f"info-{tag}") == {"channels": {}}


# -- refusals of the HTTP API, hand-signed -------------------------------------------------


def signed_params(
    method: str,
    path: str,
    body: bytes,
    *,
    secret: str = SECRET,
    timestamp: float | None = None,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    params = {
        "auth_key": KEY,
        "auth_timestamp": str(int(time.time() if timestamp is None else timestamp)),
        "auth_version": "1.0",
        "body_md5": hashlib.md5(body).hexdigest(),
        **(extra or {}),
    }
    params["auth_signature"] = api_signature(secret, method, path, params)
    return params


async def post_event(
    http: httpx.AsyncClient,
    body: bytes,
    *,
    app_id: str = APP_ID,
    secret: str = SECRET,
    timestamp: float | None = None,
) -> httpx.Response:
    path = f"/apps/{app_id}/events"
    params = signed_params("POST", path, body, secret=secret, timestamp=timestamp)
    return await http.post(
        path, params=params, content=body, headers={"content-type": "application/json"}
    )


def event_body(channel: str, name: str, data: str) -> bytes:
    return json.dumps({"name": name, "channels": [channel], "data": data}).encode()


REFUSALS: dict[str, tuple[Callable[[str], dict[str, Any]], int, str]] = {
    "wrong signature": (lambda ch: {"secret": "not-the-secret"}, 401, "signature"),
    "stale auth_timestamp": (lambda ch: {"timestamp": time.time() - 601}, 401, "auth_timestamp"),
    "future auth_timestamp": (lambda ch: {"timestamp": time.time() + 601}, 401, "auth_timestamp"),
    "unknown app": (lambda ch: {"app_id": "9999"}, 404, "9999"),
    "data over max_message_size": (
        lambda ch: {"body": event_body(ch, "refused", "x" * (MAX_MESSAGE_SIZE + 1))},
        413,
        str(MAX_MESSAGE_SIZE),
    ),
    "body not JSON": (lambda ch: {"body": b"name=refused"}, 400, "JSON"),
    "data not a string": (
        lambda ch: {"body": json.dumps({"name": "refused", "channel": ch, "data": {}}).encode()},
        400,
        "data",
    ),
    "no channels": (
        lambda ch: {"body": json.dumps({"name": "refused", "data": "x"}).encode()},
        400,
        "channel",
    ),
    "invalid channel": (
        lambda ch: {"body": event_body("bad name", "refused", "x")},
        400,
        "channel",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_http_api_refusals_and_the_server_goes_on(
    base: str, http: httpx.AsyncClient, case: str
) -> None:
    channel = unique("refusals-")
    make, status, named = REFUSALS[case]
    options = make(channel)
    body = options.pop("body", event_body(channel, "refused", "x"))
    async with pusher_socket(base) as sock:
        await subscribe(sock, channel)
        response = await post_event(http, body, **options)
        assert response.status_code == status, response.text
        assert named in response.json()["error"]
        good = await post_event(http, event_body(channel, "good", "y"))
        assert good.status_code == 200, good.text
        frame = await sock.next_on(channel)
        assert (frame["event"], frame["data"]) == ("good", "y")


async def test_http_api_refuses_a_tampered_query(base: str, http: httpx.AsyncClient) -> None:
    path = f"/apps/{APP_ID}/channels"
    params = signed_params("GET", path, b"", extra={"filter_by_prefix": "presence-"})
    response = await http.get(path, params={**params, "filter_by_prefix": "private-"})
    assert response.status_code == 401 and "signature" in response.json()["error"]
    response = await http.get(path, params=params)
    assert response.status_code == 200, response.text
    assert all(name.startswith("presence-") for name in response.json()["channels"])


async def test_http_api_accepts_data_up_to_the_limit(base: str, http: httpx.AsyncClient) -> None:
    channel = unique("limit-")
    data = "é" * (MAX_MESSAGE_SIZE // 2)  # exactly max_message_size bytes
    async with pusher_socket(base) as sock:
        await subscribe(sock, channel)
        response = await post_event(http, event_body(channel, "full", data))
        assert response.status_code == 200, response.text
        assert (await sock.next_on(channel))["data"] == data
        response = await post_event(http, event_body(channel, "over", data + "x"))
        assert response.status_code == 413


# -- conversation broadcasts ---------------------------------------------------------------


async def test_conversation_stream_is_broadcast_whole(base: str, http: httpx.AsyncClient) -> None:
    cid = await conversation(http, ALICE)
    channel = f"private-conversation.{cid}"
    async with pusher_socket(base) as sock:
        await join(http, sock, channel, ALICE)
        started = await chat(
            http,
            ALICE,
            conversation_id=cid,
            model="fake:lorem",
            params={"tokens": 50, "delay_ms": 20},
        )
        events = await collect_stream(sock, channel)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert all(e["stream_id"] == started["stream_id"] for e in events)
    assert events[0]["type"] == "start" and events[-1]["type"] == "finish"
    assert events[0]["conversation_id"] == cid
    assert as_logged(events) == await log_events(http, started["stream_id"], ALICE)
    text = text_of(events)
    assert len(text.split()) == 50
    assert text == await stored_answer(http, cid, ALICE)


async def test_conversation_subscriber_joining_mid_stream(
    base: str, http: httpx.AsyncClient
) -> None:
    started = await chat(http, ALICE, model="fake:lorem", params={"tokens": 100, "delay_ms": 20})
    cid, stream_id = started["conversation_id"], started["stream_id"]
    channel = f"private-conversation.{cid}"
    response = await http.get(
        f"/v1/streams/{stream_id}", params={"after": 5, "wait": WAIT}, headers=bearer(ALICE)
    )
    assert response.json()["events"], "the stream did not reach seq 6"
    async with pusher_socket(base) as sock:
        await join(http, sock, channel, ALICE)
        live = await collect_stream(sock, channel)
    first = live[0]["seq"]
    assert first > 6 and live[0]["type"] != "start"  # no replay of what came before
    assert [e["seq"] for e in live] == list(range(first, first + len(live)))
    assert live[-1]["type"] == "finish"
    everything = await log_events(http, stream_id, ALICE)
    earlier = await log_events_before(http, stream_id, first)
    assert earlier + as_logged(live) == everything
    assert text_of(earlier + live) == await stored_answer(http, cid, ALICE)


async def log_events_before(
    http: httpx.AsyncClient, stream_id: str, seq: int
) -> list[dict[str, Any]]:
    """What a late subscriber fetches: ``GET /v1/streams/{id}?after=0`` (no wait)."""
    response = await http.get(
        f"/v1/streams/{stream_id}", params={"after": 0}, headers=bearer(ALICE)
    )
    assert response.status_code == 200
    return [e for e in response.json()["events"] if e["seq"] < seq]


async def test_conversation_events_fetchable_over_sse_after_a_gap(
    base: str, http: httpx.AsyncClient
) -> None:
    """The recovery path: missed events from ``/v1/streams/{id}/events?after=N`` (SSE)
    need the owner's token."""
    cid = await conversation(http, ALICE)
    channel = f"private-conversation.{cid}"
    async with pusher_socket(base) as sock:
        await join(http, sock, channel, ALICE)
        started = await chat(
            http, ALICE, conversation_id=cid, model="fake:lorem", params={"tokens": 10}
        )
        live = await collect_stream(sock, channel)
    url = f"/v1/streams/{started['stream_id']}/events"
    refused = await http.get(url, params={"after": 3}, headers=bearer(BOB))
    assert refused.status_code == 404
    async with http.stream("GET", url, params={"after": 3}, headers=bearer(ALICE)) as response:
        assert response.status_code == 200
        body = (await response.aread()).decode()
    blocks = [b for b in body.split("\n\n") if b.startswith("id:")]
    fetched = []
    for block in blocks:
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        data = json.loads(fields["data"])
        assert fields["id"] == str(data["seq"]) and fields["event"] == data["type"]
        fetched.append(data)
    assert fetched == as_logged(live[3:])


# -- operations ---------------------------------------------------------------------------


def metric(text: str, name: str) -> float:
    return next(float(line.split()[1]) for line in text.splitlines() if line.startswith(name + " "))


async def test_metrics_count_connections_and_channels(tmp_path: Path) -> None:
    with uvicorn_thread(create_app(settings_for(tmp_path))) as own:  # no other test's sockets
        async with httpx.AsyncClient(base_url=own) as http:
            before = (await http.get("/metrics")).text
            async with pusher_socket(own) as sock:
                await subscribe(sock, unique("gauged-"))
                during = (await http.get("/metrics")).text
    for name in ("tokenwire_pusher_connections", "tokenwire_pusher_channels"):
        assert metric(before, name) == 0, name
        assert metric(during, name) == 1, name


def test_browser_pages_of_allowed_origins_may_call_the_auth_endpoint(tmp_path: Path) -> None:
    settings = settings_for(tmp_path).model_copy(update={"cors_origins": ["https://app.example"]})
    with uvicorn_thread(create_app(settings)) as own:
        preflight = {
            "origin": "https://app.example",
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization",
        }
        allowed = httpx.options(own + "/broadcasting/auth", headers=preflight)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        other = httpx.options(
            own + "/broadcasting/auth", headers={**preflight, "origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in other.headers
        module = httpx.get(own + "/tokenwire-pusher.js", headers={"origin": "https://app.example"})
        assert module.headers["access-control-allow-origin"] == "https://app.example"
