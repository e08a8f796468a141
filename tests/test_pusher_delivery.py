"""Unit tests of our own delivery logic (``Connection.send``): frames are written at
once while the socket drains, queued in order behind a send that waits, and a
connection whose backlog overflows is closed with 4100. The ASGI ``send`` here is
a stand-in that can be made to wait, as uvicorn's does while the transport is
paused."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import anyio
import pusher
import pytest
import websockets

from tests.support.servers import uvicorn_thread
from tokenwire.server.app import create_app
from tokenwire.server.serving import FanoutWebSocketProtocol
from tokenwire.settings import PusherApp, Settings
from tokenwire.transports.pusher.connection import MAX_BACKLOG, Connection, ConnectionState

pytestmark = pytest.mark.anyio

APP = PusherApp(id="1", key="k", secret="s")


class Socket:
    """An ASGI send that records frames and blocks while ``writable`` is clear."""

    def __init__(self) -> None:
        self.writable = asyncio.Event()
        self.writable.set()
        self.sent: list[dict[str, Any]] = []

    async def send(self, message: dict[str, Any]) -> None:
        await self.writable.wait()
        self.sent.append(message)

    def texts(self) -> list[str]:
        return [m["text"] for m in self.sent if m["type"] == "websocket.send"]


async def test_frames_are_written_at_once_while_the_socket_drains() -> None:
    socket = Socket()
    conn = Connection(APP, "1.1", socket.send, 0.0)
    for i in range(5):
        conn.send(f"f{i}")
        assert socket.texts() == [f"f{j}" for j in range(i + 1)]  # no task, no await


async def test_a_waiting_send_keeps_the_order_and_the_rest_waits_behind_it() -> None:
    socket = Socket()
    conn = Connection(APP, "1.1", socket.send, 0.0)
    conn.send("a")
    socket.writable.clear()
    for text in ("b", "c", "d"):
        conn.send(text)
    assert socket.texts() == ["a"]
    socket.writable.set()
    await conn.flush()
    assert socket.texts() == ["a", "b", "c", "d"]
    conn.send("e")  # drained again: written at once
    assert socket.texts()[-1] == "e"


async def test_an_overflowing_backlog_closes_the_connection_with_4100() -> None:
    socket = Socket()
    conn = Connection(APP, "1.1", socket.send, 0.0)
    socket.writable.clear()
    for i in range(MAX_BACKLOG + 2):
        conn.send(f"f{i}")
    assert conn.state is ConnectionState.CLOSING  # its close frame waits for the socket
    socket.writable.set()
    await conn.flush()
    assert conn.state is ConnectionState.CLOSED
    closes = [m for m in socket.sent if m["type"] == "websocket.close"]
    assert closes and closes[0]["code"] == 4100
    conn.send("late")
    assert "late" not in socket.texts()


async def test_a_send_to_a_gone_client_marks_the_connection_closed() -> None:
    async def gone(message: dict[str, Any]) -> None:
        raise OSError("connection lost")

    conn = Connection(APP, "1.1", gone, 0.0)
    conn.send("x")
    assert conn.state is ConnectionState.CLOSED


async def test_the_state_only_moves_forward() -> None:
    conn = Connection(APP, "1.1", Socket().send, 0.0)
    assert conn.state is ConnectionState.OPEN
    conn.advance(ConnectionState.CLOSING)
    conn.advance(ConnectionState.OPEN)
    assert conn.state is ConnectionState.CLOSING
    await conn.close(4200, "bye")  # closing an already closing connection still closes it
    assert conn.state is ConnectionState.CLOSED
    conn.advance(ConnectionState.CLOSING)
    assert conn.state is ConnectionState.CLOSED


async def test_send_prepared_writes_the_frame_or_falls_back_to_send() -> None:
    socket = Socket()
    written: list[bytes] = []
    accept = True

    def write_frame(frame: bytes) -> bool:
        if accept:
            written.append(frame)
        return accept

    conn = Connection(APP, "1.1", socket.send, 0.0, write_frame)
    conn.send_prepared("a", b"frame-a")
    assert written == [b"frame-a"] and socket.texts() == []
    accept = False  # e.g. compression negotiated: the server sends it through ASGI
    conn.send_prepared("b", b"frame-b")
    assert written == [b"frame-a"] and socket.texts() == ["b"]
    accept = True
    socket.writable.clear()
    conn.send("c")  # waits: later frames must queue behind it, not jump ahead
    conn.send_prepared("d", b"frame-d")
    socket.writable.set()
    await conn.flush()
    assert written == [b"frame-a"] and socket.texts() == ["b", "c", "d"]


# -- the server tokenwire serve runs (tokenwire.server.serving) ---------------------------


@pytest.mark.parametrize("compression", [False, True])
async def test_fanout_protocol_delivers_one_encoded_frame_to_every_subscriber(
    tmp_path: Path, compression: bool
) -> None:
    settings = Settings(
        fake_provider=True,
        data_dir=tmp_path,
        default_model="fake:echo",
        pusher_apps=[APP],
        websocket_compression=compression,
    )
    app = create_app(settings)
    options = {"ws": FanoutWebSocketProtocol, "ws_per_message_deflate": compression}
    with uvicorn_thread(app, **options) as base:
        url = base.replace("http", "ws") + "/app/k?protocol=7"
        async with websockets.connect(url) as one, websockets.connect(url) as two:
            for ws in (one, two):
                json.loads(await ws.recv())  # connection_established
                await ws.send(
                    json.dumps({"event": "pusher:subscribe", "data": {"channel": "news"}})
                )
                assert (
                    json.loads(await ws.recv())["event"] == "pusher_internal:subscription_succeeded"
                )
            conns = list(app.state.pusher.connections.values())  # another thread's objects
            assert len(conns) == 2 and all(c.write_frame is not None for c in conns)
            results: list[bool] = []
            for conn in conns:  # record what the server's writes return
                conn.write_frame = _recording(conn.write_frame, results)
            assert {bool(ws.protocol.extensions) for ws in (one, two)} == {compression}
            library = pusher.Pusher(
                app_id=APP.id, key=APP.key, secret=APP.secret, host="127.0.0.1",
                port=int(base.rsplit(":", 1)[1]), ssl=False,
            )  # fmt: skip
            await anyio.to_thread.run_sync(library.trigger, "news", "headline", {"n": 1})
            for ws in (one, two):
                frame = json.loads(await ws.recv())
                assert (frame["event"], frame["channel"]) == ("headline", "news")
                assert json.loads(frame["data"]) == {"n": 1}
    # without compression both got the one encoded frame; with it, both went through ASGI
    assert results == [not compression] * 2


def _recording(write: Any, results: list[bool]) -> Any:
    def recorded(frame: bytes) -> bool:
        results.append(write(frame))
        return results[-1]

    return recorded
