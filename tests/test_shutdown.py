"""Graceful shutdown of a real ``tokenwire serve`` process (issue 9, item 5).

One server, one reader of every surface connected at once to generations that stall
(``fake:lorem`` with ``stall_after``), plus a short generation; then SIGTERM. Each
reader must receive exactly one terminal event and a complete response body (no
cut connection), the long poll a JSON answer, the Pusher subscriber the terminal
broadcast before its 4200 close; the short generation finishes normally within the
grace period; the stored messages say ``cancelled`` with reason ``shutdown``. Every
wait is for a condition (first deltas seen, socket refused, process exited).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.support.servers import free_port, wait_for_http
from tests.test_pusher_server import pusher_socket, subscribe
from tokenwire import Settings, Tokenwire, create_app
from tokenwire.protocol.pusher import channel_auth
from tokenwire.protocol.sse import SSEDecoder
from tokenwire.settings import PusherApp
from tokenwire.store import Store

pytestmark = pytest.mark.slow

GRACE = 4.0
"""TOKENWIRE_SHUTDOWN_GRACE of the server, seconds."""
KEY, SECRET = "key1", "secret1"
STALL = {"tokens": 50, "stall_after": 2}
"""Params of a generation that sends two deltas and then waits until cancelled."""
SHORT = {"tokens": 8, "delay_ms": 100}
"""Params of a generation shorter than the grace (about 0.8 s)."""
TERMINAL = {"finish", "error", "cancelled"}
APP = PusherApp(id="1", key=KEY, secret=SECRET)


@contextlib.contextmanager
def serve(data_dir: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    env = {
        "TOKENWIRE_DATA_DIR": str(data_dir),
        "TOKENWIRE_FAKE_PROVIDER": "1",
        "TOKENWIRE_DEFAULT_MODEL": "fake:lorem",
        "TOKENWIRE_MODELS": json.dumps(["fake:lorem"]),
        "TOKENWIRE_SHUTDOWN_GRACE": str(GRACE),
        "TOKENWIRE_COALESCE_MS": "0",
        "TOKENWIRE_PUSHER_APPS": json.dumps(
            [PusherApp(id="1", key=KEY, secret=SECRET).model_dump()]
        ),
    }
    cmd = [sys.executable, "-m", "tokenwire", "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--log-level", "warning"], env={**os.environ, **env})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(base + "/healthz", proc=proc)
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


async def read_body(
    client: httpx.AsyncClient, started: anyio.Event, method: str, url: str, **kwargs: Any
) -> list[str]:
    """Every SSE ``data`` of the response until its body ends. A body cut without its
    end raises (httpx: "peer closed connection without sending complete message body").
    ``started`` is set once two ``data`` frames came."""
    frames: list[str] = []
    decoder = SSEDecoder()
    async with client.stream(method, url, **kwargs) as response:
        assert response.status_code == 200, await response.aread()
        async for chunk in response.aiter_raw():
            for sse in decoder.decode(chunk):
                if sse.comment is None:
                    frames.append(sse.data)
            if len(frames) >= 2:
                started.set()
    return frames


async def pusher_frames(base: str, channel: str, subscribed: anyio.Event) -> dict[str, Any]:
    """Subscribe to ``channel``; every frame on it until the server closes, and the code."""
    async with pusher_socket(base) as sock:
        auth = channel_auth(KEY, SECRET, sock.socket_id, channel)
        await subscribe(sock, channel, auth)
        subscribed.set()
        code, frames = await sock.closed(timeout=60)
    return {"code": code, "frames": frames}


async def until(check: Any, what: str, timeout: float = 20.0) -> None:
    with anyio.fail_after(timeout):
        while True:
            if await check():
                return
            await anyio.sleep(0.02)


async def scenario(data_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with serve(data_dir) as (proc, base):
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            messages = [{"role": "user", "content": "hi"}]

            async def start(params: dict[str, Any]) -> dict[str, Any]:
                body = {"model": "fake:lorem", "messages": messages, "params": params}
                response = await client.post("/v1/chat", json=body)
                assert response.status_code == 202, response.text
                return dict(response.json())

            async def last_seq(stream_id: str) -> int:
                return int((await client.get(f"/v1/streams/{stream_id}")).json()["last_seq"])

            polled, pushed = await start(STALL), await start(STALL)
            evented = await start(STALL)
            chat_id = uuid.uuid4().hex
            ready = {
                name: anyio.Event() for name in ("native", "events", "openai", "aisdk", "short")
            }
            ready["pusher"] = anyio.Event()
            results: dict[str, Any] = {}

            async def run(name: str, coro: Any) -> None:
                try:
                    results[name] = await coro
                except Exception as exc:  # recorded: the assertions say which reader failed
                    results[name] = exc

            await until(lambda: _at_least(last_seq, polled["stream_id"], 3), "two deltas")
            after = await last_seq(polled["stream_id"])
            url = f"/v1/streams/{polled['stream_id']}?after={after}&wait=25"
            async with anyio.create_task_group() as tg:
                tg.start_soon(run, "long_poll", client.get(url))
                tg.start_soon(
                    run,
                    "native",
                    read_body(
                        client,
                        ready["native"],
                        "POST",
                        "/v1/chat",
                        json={"model": "fake:lorem", "messages": messages, "params": STALL},
                        headers={"accept": "text/event-stream"},
                    ),
                )
                tg.start_soon(
                    run,
                    "events",
                    read_body(
                        client, ready["events"], "GET", f"/v1/streams/{evented['stream_id']}/events"
                    ),
                )
                tg.start_soon(
                    run,
                    "openai",
                    read_body(
                        client,
                        ready["openai"],
                        "POST",
                        "/v1/chat/completions",
                        json={"model": "fake:lorem", "messages": messages, "stream": True, **STALL},
                    ),
                )
                aisdk_body = {
                    "id": chat_id,
                    "model": "fake:lorem",
                    "params": STALL,
                    "messages": [
                        {"id": "u1", "role": "user", "parts": [{"type": "text", "text": "hi"}]}
                    ],
                }
                tg.start_soon(
                    run,
                    "aisdk",
                    read_body(client, ready["aisdk"], "POST", "/api/chat", json=aisdk_body),
                )
                channel = f"private-conversation.{pushed['conversation_id']}"
                tg.start_soon(run, "pusher", pusher_frames(base, channel, ready["pusher"]))
                with anyio.fail_after(20):
                    for name in ("native", "events", "openai", "aisdk", "pusher"):
                        await ready[name].wait()
                tg.start_soon(
                    run,
                    "short",
                    read_body(
                        client,
                        ready["short"],
                        "POST",
                        "/v1/chat",
                        json={"model": "fake:lorem", "messages": messages, "params": SHORT},
                        headers={"accept": "text/event-stream"},
                    ),
                )
                with anyio.fail_after(20):
                    await ready["short"].wait()
                proc.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                out["refused_while_streaming"] = await _refused(base, results)
            out["ended_after"] = time.monotonic() - signalled
            out["returncode"] = await anyio.to_thread.run_sync(lambda: proc.wait(timeout=30))
    out["results"] = results
    out["ids"] = {"polled": polled, "pushed": pushed, "evented": evented, "chat_id": chat_id}
    return out


async def _at_least(last_seq: Any, stream_id: str, n: int) -> bool:
    return bool(await last_seq(stream_id) >= n)


async def _refused(base: str, results: dict[str, Any]) -> bool:
    """Wait until a new connection is refused (or, accepted into the listen backlog
    just before the socket closed, dropped unanswered); whether the stalled readers
    were still open then (the listening socket closes first, the generations end later)."""
    with anyio.fail_after(10):
        while True:
            try:
                async with httpx.AsyncClient(timeout=2) as fresh:
                    await fresh.get(base + "/healthz")
            except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
                # refused, or taken from the backlog as the listener closed and dropped
                return not any(name in results for name in ("native", "events", "long_poll"))
            await anyio.sleep(0.02)


@pytest.fixture(scope="module")
def shutdown(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data_dir = tmp_path_factory.mktemp("shutdown")
    out = asyncio.run(scenario(data_dir))
    out["data_dir"] = data_dir
    return out


def _json_frames(frames: list[str]) -> list[dict[str, Any]]:
    return [json.loads(f) for f in frames if f != "[DONE]"]


def _native(shutdown: dict[str, Any], name: str) -> list[dict[str, Any]]:
    frames = shutdown["results"][name]
    assert isinstance(frames, list), frames
    return _json_frames(frames)


def _assert_cancelled_by_shutdown(events: list[dict[str, Any]]) -> None:
    terminals = [e for e in events if e["type"] in TERMINAL]
    assert len(terminals) == 1 and terminals[0] is events[-1], events
    assert events[-1] == {"type": "cancelled", "reason": "shutdown", "seq": events[-1]["seq"]}
    assert [e["seq"] for e in events] == list(range(events[0]["seq"], events[-1]["seq"] + 1))


def test_native_sse_reader_gets_cancelled_shutdown(shutdown: dict[str, Any]) -> None:
    events = _native(shutdown, "native")
    assert events[0]["type"] == "start"
    _assert_cancelled_by_shutdown(events)


def test_events_reader_gets_cancelled_shutdown(shutdown: dict[str, Any]) -> None:
    events = _native(shutdown, "events")
    assert events[0]["seq"] == 1
    _assert_cancelled_by_shutdown(events)


def test_openai_reader_gets_its_final_chunk_and_done(shutdown: dict[str, Any]) -> None:
    frames = shutdown["results"]["openai"]
    assert isinstance(frames, list), frames
    assert frames[-1] == "[DONE]" and frames.count("[DONE]") == 1
    chunks = _json_frames(frames)
    ends = [c for c in chunks if "x_tokenwire" in c]
    assert len(ends) == 1, chunks
    assert ends[0]["x_tokenwire"] == {"status": "cancelled", "reason": "shutdown"}
    assert ends[0]["choices"][0]["finish_reason"] == "stop"
    assert not any("error" in c for c in chunks)


def test_aisdk_reader_gets_abort_and_done(shutdown: dict[str, Any]) -> None:
    frames = shutdown["results"]["aisdk"]
    assert isinstance(frames, list), frames
    assert frames[-1] == "[DONE]" and frames.count("[DONE]") == 1
    kinds = [c["type"] for c in _json_frames(frames)]
    assert kinds[0] == "start"
    assert [k for k in kinds if k in ("finish", "abort", "error")] == ["abort"]
    assert _json_frames(frames)[kinds.index("abort")] == {"type": "abort", "reason": "shutdown"}


def test_long_poll_gets_json_with_the_terminal_event(shutdown: dict[str, Any]) -> None:
    response = shutdown["results"]["long_poll"]
    assert isinstance(response, httpx.Response), response
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "cancelled"
    assert [e["type"] for e in body["events"]] == ["cancelled"]
    assert body["events"][0]["reason"] == "shutdown"


def test_pusher_gets_the_terminal_broadcast_then_4200(shutdown: dict[str, Any]) -> None:
    result = shutdown["results"]["pusher"]
    assert isinstance(result, dict), result
    assert result["code"] == 4200
    names = [f["event"] for f in result["frames"]]
    assert names[-2:] == ["cancelled", "pusher:error"], names
    assert sum(n in TERMINAL for n in names) == 1
    data = json.loads(result["frames"][-2]["data"])
    stream_id = shutdown["ids"]["pushed"]["stream_id"]
    assert (data["reason"], data["stream_id"]) == ("shutdown", stream_id)
    assert result["frames"][-1]["data"]["code"] == 4200


def test_generation_shorter_than_the_grace_finishes(shutdown: dict[str, Any]) -> None:
    events = _native(shutdown, "short")
    assert [e["type"] for e in events if e["type"] in TERMINAL] == ["finish"]
    assert events[-1]["type"] == "finish"
    assert sum(e["type"] == "text-delta" for e in events) == SHORT["tokens"]


def test_new_connections_refused_while_generations_run(shutdown: dict[str, Any]) -> None:
    assert shutdown["refused_while_streaming"]


def test_stalled_generations_end_after_the_grace(shutdown: dict[str, Any]) -> None:
    assert GRACE <= shutdown["ended_after"] < GRACE + 10
    # uvicorn raises the signal it caught again once it has shut down
    assert shutdown["returncode"] in (0, -signal.SIGTERM)


def test_stored_messages_are_cancelled_by_shutdown(shutdown: dict[str, Any]) -> None:
    ids = shutdown["ids"]
    conversations = [ids[n]["conversation_id"] for n in ("polled", "pushed", "evented")]
    conversations.append(ids["chat_id"])
    native = _native(shutdown, "native")[0]["conversation_id"]
    short = _native(shutdown, "short")[0]["conversation_id"]

    async def stored() -> dict[str, Any]:
        store = await Store.open(f"sqlite+aiosqlite:///{shutdown['data_dir'] / 'tokenwire.db'}")
        try:
            return {cid: (await store.messages(cid))[-1] for cid in [*conversations, native, short]}
        finally:
            await store.close()

    messages = asyncio.run(stored())
    for cid in [*conversations, native]:
        message = messages[cid]
        assert message.role == "assistant" and message.status == "cancelled", message
        assert message.error is not None and message.error["reason"] == "shutdown"
        assert message.error["code"] == "cancelled"
        assert message.parts and message.parts[0]["text"]  # the two deltas are kept
    assert messages[short].status == "completed" and messages[short].error is None


@pytest.mark.anyio
async def test_no_generation_starts_once_draining(tmp_path: Path) -> None:
    """A request that reaches the app after SIGTERM (on a connection accepted before)
    starts nothing: 503 in each surface's error shape."""
    settings = Settings(
        fake_provider=True, data_dir=tmp_path, default_model="fake:lorem", models=["fake:lorem"]
    )
    tw = Tokenwire(settings)
    app = create_app(tokenwire=tw)
    await tw.open()
    try:
        await tw.drain()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tw") as client:
            body = {"model": "fake:lorem", "messages": [{"role": "user", "content": "hi"}]}
            native = await client.post("/v1/chat", json=body)
            openai = await client.post("/v1/chat/completions", json=body)
            ui = {"role": "user", "parts": [{"type": "text", "text": "hi"}], "id": "u"}
            aisdk = await client.post("/api/chat", json={"id": "c", "messages": [ui]})
        assert native.status_code == 503
        assert native.json() == {"detail": "the server is shutting down; try again"}
        assert openai.status_code == 503
        assert openai.json()["error"]["code"] == "shutting_down"
        assert aisdk.status_code == 503
    finally:
        await tw.aclose()
