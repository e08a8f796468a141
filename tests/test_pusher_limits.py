"""WebSocket caps (docs/websockets.md "Limits"): channels per connection, connections
per app, and the memory a client that never reads may cost, against the server
``tokenwire serve`` runs (uvicorn with :class:`FanoutWebSocketProtocol`), plus unit
tests of the byte-bounded backlog of :class:`Connection`."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.sync.client import ClientConnection, connect
from websockets.uri import parse_uri

from tests.support.servers import uvicorn_thread
from tokenwire.protocol.pusher import channel_auth
from tokenwire.server.app import create_app
from tokenwire.server.serving import FanoutWebSocketProtocol
from tokenwire.settings import PusherApp, Settings
from tokenwire.transports.pusher import connection as websocket
from tokenwire.transports.pusher.connection import Connection, ConnectionState

KEY, SECRET = "k", "s"
WAIT = 20.0
"""Seconds any expected server-side change may take."""


# -- unit: the backlog is bounded in bytes ---------------------------------------------


class Socket:
    """An ASGI send that blocks while ``writable`` is clear (uvicorn's, paused)."""

    def __init__(self) -> None:
        self.writable = asyncio.Event()
        self.sent: list[dict[str, Any]] = []

    async def send(self, message: dict[str, Any]) -> None:
        await self.writable.wait()
        self.sent.append(message)


@pytest.mark.anyio
async def test_a_backlog_over_max_backlog_bytes_closes_with_4100() -> None:
    app = PusherApp(id="1", key=KEY, secret=SECRET, max_backlog_bytes=1000)
    sock = Socket()
    conn = Connection(app, "1.1", sock.send, 0.0)
    frame = "x" * 300
    conn.send(frame)  # waits: the socket is not draining
    for _ in range(3):  # 900 bytes wait behind it
        conn.send(frame)
        assert conn.statistics()["backlog_bytes"] <= 1000 and conn.state is ConnectionState.OPEN
    conn.send(frame)  # 1,200 > 1,000: dropped and closed
    assert conn.state is not ConnectionState.OPEN and conn.statistics() == {
        "backlog_frames": 0,
        "backlog_bytes": 0,
    }
    sock.writable.set()
    await conn.flush()
    closes = [m for m in sock.sent if m["type"] == "websocket.close"]
    assert [m["code"] for m in closes] == [4100]


@pytest.mark.anyio
async def test_the_close_of_a_socket_that_never_drains_gives_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(websocket, "CLOSE_TIMEOUT", 0.05)
    sock = Socket()  # never writable
    conn = Connection(PusherApp(id="1", key=KEY, secret=SECRET), "1.1", sock.send, 0.0)
    for _ in range(websocket.MAX_BACKLOG + 2):
        conn.send("f")
    assert conn.state is not ConnectionState.OPEN
    with anyio.fail_after(5):
        await conn.flush()  # the writer task ends: nothing stays waiting on the socket


# -- through a real server ---------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    apps = [
        PusherApp(
            id="1",
            key=KEY,
            secret=SECRET,
            max_channels=3,
            client_event_rate=10_000,
            max_backlog_bytes=200_000,
        )
    ]
    settings = Settings(
        fake_provider=True, data_dir=tmp_path, default_model="fake:echo", pusher_apps=apps
    )
    app = create_app(settings)
    with uvicorn_thread(app, ws=FanoutWebSocketProtocol) as base:
        yield base.replace("http", "ws") + f"/app/{KEY}?protocol=7", app.state.pusher


def frame(ws: ClientConnection) -> dict[str, Any]:
    got = json.loads(ws.recv(timeout=WAIT))
    if isinstance(got.get("data"), str):
        got["data"] = json.loads(got["data"])
    return got  # type: ignore[no-any-return]


def subscribe(ws: ClientConnection, channel: str, socket_id: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"channel": channel}
    if socket_id is not None:
        data["auth"] = channel_auth(KEY, SECRET, socket_id, channel)
    ws.send(json.dumps({"event": "pusher:subscribe", "data": data}))
    return frame(ws)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT} s: {what}")
        time.sleep(0.02)


def test_default_caps() -> None:
    app = PusherApp(id="1", key=KEY, secret=SECRET)
    assert (app.max_connections, app.max_channels, app.max_backlog_bytes) == (
        10_000,
        100,
        1_000_000,
    )


def test_channels_per_connection_are_capped(served: tuple[str, Any]) -> None:
    url, _ = served
    with connect(url) as ws:
        frame(ws)  # connection_established
        for n in range(3):
            assert subscribe(ws, f"c{n}")["event"] == "pusher_internal:subscription_succeeded"
        refused = subscribe(ws, "c3")
        assert refused["event"] == "pusher:subscription_error" and refused["channel"] == "c3"
        assert refused["data"]["type"] == "LimitReached" and refused["data"]["status"] == 4304
        # a channel it has already is no new one; the connection goes on
        assert subscribe(ws, "c1")["event"] == "pusher_internal:subscription_succeeded"
        ws.send(json.dumps({"event": "pusher:unsubscribe", "data": {"channel": "c0"}}))
        assert subscribe(ws, "c3")["event"] == "pusher_internal:subscription_succeeded"


class IdleClient:
    """A WebSocket client over a blocking socket that reads only when told to (websockets'
    sans-I/O protocol): after the handshake and its subscription, it never reads."""

    def __init__(self, url: str) -> None:
        self.protocol = ClientProtocol(parse_uri(url))
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window
        self.sock.settimeout(WAIT)
        host, port = url.split("/")[2].split(":")
        self.sock.connect((host, int(port)))
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        self._frames: list[dict[str, Any]] = []

    def _flush(self) -> None:
        self.sock.sendall(b"".join(self.protocol.data_to_send()))

    def send(self, message: dict[str, Any]) -> None:
        self.protocol.send_text(json.dumps(message).encode())
        self._flush()

    def recv(self) -> dict[str, Any]:
        while not self._frames:
            self.protocol.receive_data(self.sock.recv(65536))
            for event in self.protocol.events_received():
                if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                    got = json.loads(event.data)
                    if isinstance(got.get("data"), str):
                        got["data"] = json.loads(got["data"])
                    self._frames.append(got)
        return self._frames.pop(0)

    def close(self) -> None:
        self.sock.close()


def test_a_client_that_never_reads_is_closed_at_its_backlog_cap(served: tuple[str, Any]) -> None:
    url, hub = served
    channel = "private-flood"
    idle = IdleClient(url)
    try:
        idle_id = idle.recv()["data"]["socket_id"]
        auth = channel_auth(KEY, SECRET, idle_id, channel)
        idle.send({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth}})
        assert idle.recv()["event"] == "pusher_internal:subscription_succeeded"
        conn = hub.connections[idle_id]
        with connect(url) as sender:
            sender_id = frame(sender)["data"]["socket_id"]
            assert subscribe(sender, channel, sender_id)["event"].endswith("subscription_succeeded")
            event = json.dumps(
                {"event": "client-big", "channel": channel, "data": {"blob": "x" * 90_000}}
            )
            peak = 0
            for _ in range(200):  # 18 MB: far more than the socket buffers hold
                sender.send(event)
                peak = max(peak, conn.statistics()["backlog_bytes"])
                if conn.state is not ConnectionState.OPEN:
                    break
            wait_until(
                lambda: conn.state is not ConnectionState.OPEN,
                "the idle client's connection is closed",
            )
            assert peak <= 200_000
            # its next frame is not served: the hub stops reading it and forgets it
            idle.send({"event": "pusher:ping", "data": {}})
            wait_until(lambda: idle_id not in hub.connections, "the idle connection is forgotten")
            # the sender is still served
            sender.send(json.dumps({"event": "pusher:ping", "data": {}}))
            assert frame(sender)["event"] == "pusher:pong"
    finally:
        idle.close()
