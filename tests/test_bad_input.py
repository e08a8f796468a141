"""Bad input and races (issue 9, item 4; item 2's ``fake:`` gate): every answer is a
4xx with our own message, never a 5xx, and nothing is created by a refused request.

Real servers on 127.0.0.1 (uvicorn in a thread; ``tokenwire serve`` for the header
deadline), raw sockets for half-sent requests, ``websockets`` for the Pusher frame.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect

from tests.support.servers import tokenwire_process, uvicorn_thread
from tokenwire import Settings, StoreError, create_app
from tokenwire.protocol.pusher import ApiAuthError, api_signature, verify_api_request
from tokenwire.protocol.sse import MAX_SEQ, SSEDecoder, parse_last_event_id
from tokenwire.providers import GenerationRequest, Message
from tokenwire.providers.fake import FakeProvider
from tokenwire.settings import PusherApp
from tokenwire.store import Store

APP = PusherApp(id="77", key="bad-input-key", secret="bad-input-secret")
CAPS = {"max_messages": 3, "max_message_chars": 50, "max_body_bytes": 100_000}
USER = [{"role": "user", "content": "hello"}]
JSON = {"content-type": "application/json"}


def settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "fake_provider": True,
        "data_dir": data_dir,
        "default_model": "fake:echo",
        "models": ["fake:echo"],
        "pusher_apps": [APP],
        "coalesce_ms": 0,
        **CAPS,
    }
    return Settings(**(values | overrides))


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with uvicorn_thread(create_app(settings(tmp_path_factory.mktemp("bad")))) as url:
        yield url


@pytest.fixture
def client(base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, timeout=30) as c:
        yield c


def conversation_count(client: httpx.Client) -> int:
    return len(client.get("/v1/conversations", params={"limit": 200}).json()["data"])


def sse_events(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(e.data) for e in SSEDecoder().decode(body) if e.comment is None]


# -- fake: only when asked, bounded -------------------------------------------------


@pytest.mark.anyio
async def test_fake_is_an_unknown_provider_unless_enabled(tmp_path: Path) -> None:
    app = create_app(settings(tmp_path, fake_provider=False, default_model="local:smollm2"))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tw") as http:
            native = await http.post("/v1/chat", json={"model": "fake:echo", "messages": USER})
            assert native.status_code == 422
            assert native.json()["detail"][0]["loc"] == ["body", "model"]
            assert "TOKENWIRE_FAKE_PROVIDER=1" in native.json()["detail"][0]["msg"]
            openai = await http.post(
                "/v1/chat/completions", json={"model": "fake:echo", "messages": USER}
            )
            assert openai.status_code == 404
            assert openai.json()["error"]["code"] == "model_not_found"
            ui = {
                "id": "c1",
                "messages": [{"role": "user", "parts": [{"type": "text", "text": "x"}]}],
            }
            aisdk = await http.post("/api/chat", json={**ui, "model": "fake:echo"})
            assert aisdk.status_code == 422 and "fake" in aisdk.json()["detail"]
            listed = (await http.get("/v1/conversations")).json()["data"]
    assert listed == []  # nothing was created


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"tokens": 10_000_000}, "tokens"),
        ({"tokens": -1}, "tokens"),
        ({"tokens": "many"}, "tokens"),
        ({"delay_ms": 1e9}, "delay_ms"),
        ({"stall_after": 1e300}, "stall_after"),
        ({"text": "x" * 20_001}, "text"),
    ],
)
def test_fake_params_out_of_bounds_get_422(
    client: httpx.Client, params: dict[str, Any], field: str
) -> None:
    before = conversation_count(client)
    body = {"model": "fake:lorem", "messages": USER, "params": params}
    response = client.post("/v1/chat", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "params", field]
    assert conversation_count(client) == before


def test_fake_nan_param_gets_422(client: httpx.Client) -> None:
    body = '{"model": "fake:lorem", "messages": [{"role": "user", "content": "x"}], '
    body += '"params": {"tokens": NaN}}'
    response = client.post("/v1/chat", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "params", "tokens"]


@pytest.mark.anyio
async def test_fake_script_yields_to_the_loop_between_deltas() -> None:
    """10,000 deltas with no delay: another task runs between them (the loop is never
    held for the whole script, as 10,000,000 tokens once held it for 56 s)."""
    ticks = 0
    stop = False

    async def ticker() -> None:
        nonlocal ticks
        while not stop:
            ticks += 1
            await asyncio.sleep(0)

    request = GenerationRequest(
        model="lorem", messages=[Message("user", "x")], params={"tokens": 10_000}
    )
    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    ticks = 0
    deltas = 0
    async for event in FakeProvider().stream(request):
        deltas += event.__struct_config__.tag == "text-delta"
    stop = True
    await task
    assert deltas == 10_000
    assert ticks >= deltas // 2


# -- bodies, models, caps ----------------------------------------------------------------


def test_chunked_body_over_the_cap_gets_413(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(30):
            yield b"x" * 10_000
        yield b'"}]}'

    response = client.post(
        "/v1/chat", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert "100000 bytes" in response.json()["detail"]
    declared = client.post("/v1/chat", content=b"x" * 100_001)
    assert declared.status_code == 413


def test_chunked_body_under_the_cap_is_served(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"messages": [{"role": "user", '
        yield b'"content": "small"}]}'

    response = client.post(
        "/v1/chat", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 202, response.text


def test_empty_model_gets_422_everywhere(client: httpx.Client) -> None:
    before = conversation_count(client)
    native = client.post("/v1/chat", json={"model": "", "messages": USER})
    assert native.status_code == 422 and native.json()["detail"][0]["loc"] == ["body", "model"]
    ui = {"id": "empty-model", "model": ""}
    ui["messages"] = [{"role": "user", "parts": [{"type": "text", "text": "x"}]}]  # type: ignore[assignment]
    aisdk = client.post("/api/chat", json=ui)
    assert aisdk.status_code == 422 and "model" in aisdk.json()["detail"]
    openai = client.post("/v1/chat/completions", json={"model": "", "messages": USER})
    assert openai.status_code == 400 and openai.json()["error"]["param"] == "model"
    assert conversation_count(client) == before


def test_message_count_and_length_caps(client: httpx.Client) -> None:
    before = conversation_count(client)
    many = [{"role": "user", "content": "x"}] * 4
    response = client.post("/v1/chat", json={"messages": many})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "messages"]
    assert "at most 3" in response.json()["detail"][0]["msg"]
    long = [{"role": "user", "content": "x" * 51}]
    response = client.post("/v1/chat", json={"messages": long})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "messages[0]", "content"]
    response = client.post("/v1/chat", json={"messages": USER, "system": "s" * 51})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "system"]
    openai = client.post("/v1/chat/completions", json={"model": "fake:echo", "messages": many})
    assert openai.status_code == 400 and openai.json()["error"]["param"] == "messages"
    ui_messages = [{"role": "user", "parts": [{"type": "text", "text": "y" * 51}]}]
    aisdk = client.post("/api/chat", json={"id": "too-long", "messages": ui_messages})
    assert aisdk.status_code == 422 and "50 characters" in aisdk.json()["detail"]
    assert conversation_count(client) == before
    assert client.get("/v1/conversations/too-long").status_code == 404


# -- numbers and headers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/conversations", {"before": "1e20"}),
        ("/v1/conversations", {"before": "1e300"}),
        ("/v1/conversations", {"before": "-1e300"}),
        ("/v1/conversations", {"before": "nan"}),
        ("/v1/conversations", {"before": "inf"}),
        ("/v1/conversations", {"limit": "0"}),
        ("/v1/conversations", {"limit": str(10**30)}),
        ("/v1/conversations", {"limit": "1e3"}),
        ("/v1/streams/{id}/events", {"after": "-1"}),
        ("/v1/streams/{id}/events", {"after": str(10**30)}),
        ("/v1/streams/{id}", {"after": str(MAX_SEQ + 1)}),
        ("/v1/streams/{id}", {"wait": "nan"}),
        ("/v1/streams/{id}", {"wait": "inf"}),
        ("/v1/streams/{id}", {"wait": "31"}),
    ],
)
def test_numbers_out_of_range_get_422(
    client: httpx.Client, path: str, params: dict[str, str]
) -> None:
    started = client.post("/v1/chat", json={"messages": USER}).json()
    response = client.get(path.format(id=started["stream_id"]), params=params)
    assert response.status_code == 422, response.text
    assert "invalid literal" not in response.text


def test_before_in_range_pages(client: httpx.Client) -> None:
    assert client.get("/v1/conversations", params={"before": "0"}).json() == {"data": []}
    far = client.get("/v1/conversations", params={"before": "253402300799"})
    assert far.status_code == 200


@pytest.mark.parametrize("value", ["abc", "²", "-1", "1.5", "9" * 30, str(MAX_SEQ + 1)])
def test_malformed_last_event_id_gets_400(client: httpx.Client, value: str) -> None:
    started = client.post("/v1/chat", json={"messages": USER}).json()
    response = client.get(started["events_url"], headers={"last-event-id": value.encode()})  # type: ignore[dict-item]
    assert response.status_code == 400
    assert response.json() == {
        "detail": f"Last-Event-ID must be a sequence number from 0 to {MAX_SEQ}"
    }


def test_parse_last_event_id() -> None:
    assert parse_last_event_id(None) is None
    assert parse_last_event_id("  ") is None
    assert parse_last_event_id(" 12 ") == 12
    assert parse_last_event_id(str(MAX_SEQ)) == MAX_SEQ
    for bad in ("²", "x", "-3", str(MAX_SEQ + 1)):
        with pytest.raises(ValueError, match="Last-Event-ID"):
            parse_last_event_id(bad)


@pytest.mark.anyio
async def test_a_stray_value_error_is_422_with_our_message(tmp_path: Path) -> None:
    app = create_app(settings(tmp_path))

    async def boom() -> None:
        int("not a number")

    app.add_api_route("/boom", boom)
    app.router.routes.insert(0, app.router.routes.pop())  # before the chat page's mount

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://tw") as http:
        response = await http.get("/boom")
    assert response.status_code == 422
    assert response.json() == {"detail": "invalid value in the request"}


# -- resume past the end ------------------------------------------------------------------


def test_resume_past_the_end_replays_the_terminal_event(client: httpx.Client) -> None:
    started = client.post("/v1/chat", json={"messages": USER}).json()
    full = sse_events(client.get(started["events_url"]).content)
    last = full[-1]
    assert last["type"] == "finish"
    for resume in (
        {"params": {"after": last["seq"]}},
        {"params": {"after": last["seq"] + 1000}},
        {"headers": {"last-event-id": str(last["seq"])}},
        {"headers": {"last-event-id": str(MAX_SEQ)}},
    ):
        response = client.get(started["events_url"], **resume)  # type: ignore[arg-type]
        assert response.status_code == 200
        assert sse_events(response.content) == [last]


def test_resume_past_the_end_of_a_running_stream_ends_with_its_terminal(
    client: httpx.Client,
) -> None:
    body = {"model": "fake:lorem", "messages": USER, "params": {"stall_after": 2}}
    started = client.post("/v1/chat", json=body).json()
    with client.stream("GET", started["events_url"], params={"after": 999}) as response:
        assert response.status_code == 200
        client.post(started["cancel_url"])
        events = sse_events(response.read())
    assert events[-1]["type"] == "cancelled"
    assert len({e["seq"] for e in events}) == len(events)


# -- Pusher: auth_timestamp, nested JSON ------------------------------------------------------


@pytest.mark.parametrize("stamp", ["nan", "NaN", "inf", "-inf", "1e400"])
def test_non_finite_auth_timestamp_is_refused(client: httpx.Client, stamp: str) -> None:
    body = json.dumps({"name": "e", "channels": ["c"], "data": "{}"}).encode()
    path = f"/apps/{APP.id}/events"
    params = {
        "auth_key": APP.key,
        "auth_timestamp": stamp,
        "auth_version": "1.0",
        "body_md5": hashlib.md5(body).hexdigest(),
    }
    params["auth_signature"] = api_signature(APP.secret, "POST", path, params)
    response = client.post(
        path, params=params, content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 401
    assert "auth_timestamp" in response.text
    with pytest.raises(ApiAuthError):
        verify_api_request(
            key=APP.key,
            secret=APP.secret,
            method="POST",
            path=path,
            params=params,
            body=body,
            now=time.time(),
        )


@pytest.mark.anyio
async def test_deeply_nested_websocket_json_is_an_invalid_frame(
    base: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = base.replace("http://", "ws://") + f"/app/{APP.key}?protocol=7"
    caplog.set_level(logging.WARNING)
    nested = "[" * 20_000 + "]" * 20_000  # 40 KB: under max_message_size
    async with connect(url) as ws:
        established = json.loads(await ws.recv())
        assert established["event"] == "pusher:connection_established"
        for frame in (
            '{"event": "pusher:subscribe", "data": ' + nested + "}",
            '{"event": "pusher:subscribe", "data": "' + nested + '"}',
        ):
            await ws.send(frame)
            with anyio.fail_after(5):
                error = json.loads(await ws.recv())
            assert error["event"] == "pusher:error"
            assert error["data"]["code"] == 4300, error
        await ws.send('{"event": "pusher:ping", "data": {}}')  # the connection stays
        with anyio.fail_after(5):
            assert json.loads(await ws.recv())["event"] == "pusher:pong"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_deeply_nested_json_bodies_are_4xx(client: httpx.Client) -> None:
    nested = b'{"id": "deep", "messages": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"
    headers = {"content-type": "application/json"}
    assert client.post("/api/chat", content=nested, headers=headers).status_code == 400
    native = b'{"messages": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"
    assert client.post("/v1/chat", content=native, headers=headers).status_code in (400, 422)


# -- races ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_concurrent_writes_on_sqlite_never_report_a_lock(tmp_path: Path) -> None:
    """Read-then-write turns racing on one conversation, with a busy timeout of 50 ms:
    without serialised writes most of them fail with "database is locked"."""
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", connect_timeout=0.05)
    try:
        conversation = await store.create_conversation()

        async def turn() -> None:
            await store.begin_turn(
                conversation_id=conversation.id,
                owner=None,
                messages=[("user", [{"type": "text", "text": "q"}])],
                model="fake:echo",
            )

        with anyio.fail_after(60):
            results = await asyncio.gather(*(turn() for _ in range(100)), return_exceptions=True)
        assert [r for r in results if isinstance(r, StoreError)] == []
        assert len(await store.messages(conversation.id)) == 200
    finally:
        await store.close()


@pytest.mark.anyio
async def test_create_conversation_if_absent_races(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    try:
        created = await asyncio.gather(
            *(store.create_conversation_if_absent("same") for _ in range(8))
        )
        assert sorted(created) == [False] * 7 + [True]
    finally:
        await store.close()


@pytest.mark.anyio
async def test_concurrent_first_ai_sdk_requests_of_one_chat(base: str) -> None:
    chat_id = f"race-{time.monotonic_ns()}"
    message = {"role": "user", "parts": [{"type": "text", "text": "hi"}]}

    async with httpx.AsyncClient(base_url=base, timeout=30) as http:

        async def first() -> int:
            response = await http.post("/api/chat", json={"id": chat_id, "messages": [message]})
            await response.aread()
            return response.status_code

        statuses = await asyncio.gather(*(first() for _ in range(8)))
        assert statuses == [200] * 8
        stored = (await http.get(f"/v1/conversations/{chat_id}")).json()["messages"]
    assert [m["role"] for m in stored].count("user") == 8


# -- slow clients ----------------------------------------------------------------------------


def _raw(port: int, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(data)
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Read until the server closes; ``(closed in time, bytes received)``."""
    sock.settimeout(seconds)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return False, received
    return True, received


def test_half_sent_headers_are_dropped_by_tokenwire_serve(tmp_path: Path) -> None:
    env = {"TOKENWIRE_DATA_DIR": str(tmp_path), "TOKENWIRE_HEADER_TIMEOUT": "1"}
    with tokenwire_process(
        "serve", "--log-level", "warning", env=env, ready_path="/healthz"
    ) as url:
        port = int(url.rsplit(":", 1)[1])
        start = time.monotonic()
        sock = _raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        closed, _ = _closed_within(sock, 8)
        assert closed and time.monotonic() - start < 8
        sock.close()
        sock = _raw(port, b"")  # sends nothing at all
        closed, _ = _closed_within(sock, 8)
        assert closed
        sock.close()
        # a complete request is served; the next, half-sent one on the same connection is not
        sock = _raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\n")
        closed, received = _closed_within(sock, 8)
        assert closed and received.startswith(b"HTTP/1.1 200") and received.count(b"HTTP/1.1") == 1
        sock.close()
        assert httpx.get(url + "/healthz").status_code == 200


def test_pipelined_requests_are_answered_in_order_by_tokenwire_serve(tmp_path: Path) -> None:
    env = {"TOKENWIRE_DATA_DIR": str(tmp_path)}
    with tokenwire_process(
        "serve", "--log-level", "warning", env=env, ready_path="/healthz"
    ) as url:
        port = int(url.rsplit(":", 1)[1])
        paths = [b"/healthz", b"/nowhere", b"/healthz"]  # one write: the 2nd and 3rd wait
        requests = [b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" for path in paths]
        requests[-1] += b"Connection: close\r\n"
        sock = _raw(port, b"".join(request + b"\r\n" for request in requests))
        closed, received = _closed_within(sock, 8)
        sock.close()
    assert closed and re.findall(rb"HTTP/1\.1 (\d{3})", received) == [b"200", b"404", b"200"]


def test_slow_body_gets_408(tmp_path: Path) -> None:
    app = create_app(settings(tmp_path, body_timeout=0.5))
    with uvicorn_thread(app) as url:
        port = int(url.rsplit(":", 1)[1])
        head = b"POST /v1/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        sock = _raw(port, head + b"Content-Length: 100\r\n\r\n{")
        _, received = _closed_within(sock, 8)
        sock.close()
    assert received.startswith(b"HTTP/1.1 408"), received
