"""Unit tests of our own delivery logic (``Connection.send``): frames are written at
once while the socket drains, queued in order behind a send that waits, and a
connection whose backlog overflows is closed with 4100. The ASGI ``send`` here is
a stand-in that can be made to wait, as uvicorn's does while the transport is
paused."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tokenwire.server.pusher import MAX_BACKLOG, Connection
from tokenwire.settings import PusherApp

pytestmark = pytest.mark.anyio

APP = PusherApp(id="a", key="k", secret="s")


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
    assert conn.closed
    socket.writable.set()
    await conn.flush()
    closes = [m for m in socket.sent if m["type"] == "websocket.close"]
    assert closes and closes[0]["code"] == 4100
    conn.send("late")
    assert "late" not in socket.texts()


async def test_a_send_to_a_gone_client_marks_the_connection_closed() -> None:
    async def gone(message: dict[str, Any]) -> None:
        raise OSError("connection lost")

    conn = Connection(APP, "1.1", gone, 0.0)
    conn.send("x")
    assert conn.closed
